"""Score each round of a finished cycle on labelled soundscapes (the demo's test labels): macro ROC-AUC of
every single model and of the ensemble, without and with neighbour post-processing.

    python bench/score_demo.py --work work/demo --audio data/demo/test_soundscapes --labels data/demo-test-labels.csv
    python bench/score_demo.py --rounds 3 --birdnet data/demo     # BirdNET alone beside the last round

Prints a table and writes it to <work>/scores.csv. With --birdnet DATA (the dataset folder, for the classes'
scientific names), BirdNET V2.4 (teacher.py) also scores the soundscapes alone: macro AUC over the classes it
covers, ours over the same classes, and both engines' seconds per soundscape in the same run (infer.py: the
last round's ensemble, fastest backend, --threads).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import infer  # noqa: E402
import site_score  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from metrics import macro_roc_auc  # noqa: E402


def score_round(ensemble_dir, paths, labels, pp_weight, backend="torch", precision="f32"):
    """{(member or "ensemble", smoothed): macro AUC} of a round's ensemble on the labelled soundscapes."""
    frames, classes = site_score.predict_windows(ensemble_dir, paths, pp_weight, backend, precision)
    truth = labels.set_index("row_id")[classes]
    return {key: macro_roc_auc(truth.loc[frame.index].values, frame.values) for key, frame in frames.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--work", default="work/demo")
    add_flag(p, "--audio", default="data/demo/test_soundscapes")
    add_flag(p, "--labels", default="data/demo-test-labels.csv")
    p.add_argument("--rounds", default="1,2,3", help="rounds to score")
    add_flag(p, "--pp-weight", default=0.5)
    add_flag(p, "--backend", default="torch")
    add_flag(p, "--precision", default="f32")
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    p.add_argument("--birdnet", metavar="DATA", help="also score BirdNET alone (teacher.py), with the scientific "
                   "names of this dataset folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    labels = pd.read_csv(args.labels)
    paths = infer.list_audio(args.audio)
    rows = []
    for r in args.rounds.split(","):
        scores = score_round(os.path.join(args.work, f"round{r}", "ensemble"), paths, labels, args.pp_weight,
                             args.backend, args.precision)
        for (name, pp), auc in scores.items():
            rows.append(dict(round=int(r), model=name, post_processing=pp, macro_auc=auc))
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.work, "scores.csv"), index=False)
    wide = table.pivot_table(index=["round"], columns=["model", "post_processing"], values="macro_auc")
    print(f"\nmacro ROC-AUC on {len(labels)} test windows ({len(paths)} soundscapes), {args.backend} "
          f"{args.precision}; "
          f"pp = neighbour post-processing (weight {args.pp_weight})")
    sites = {r: site_score.round_report(args.work, r) for r in wide.index}
    with_site = any(sites.values())
    header = "| round | " + " | ".join(f"{m}{' +pp' if pp else ''}" for m, pp in wide.columns) + " |" + \
        (" held-out site +pp |" if with_site else "")
    print(header)
    print("|" + "---|" * (len(wide.columns) + 1 + with_site))
    for r, values in wide.iterrows():
        print(f"| {r} | " + " | ".join(f"{v:.4f}" for v in values) + " |" + (
            f" {sites[r]['auc_pp']:.4f} |" if sites[r] else " - |" if with_site else ""))
    if with_site:
        some = next(v for v in sites.values() if v)
        print(f"held-out site: the labelled soundscapes prep held out ({some['files']} files, {some['windows']} "
              f"windows; noise +-{some['noise']:.4f}), the score that ROUNDS=auto decides on")
    if args.birdnet:
        score_birdnet(args, paths, labels, os.path.join(args.work, f"round{args.rounds.split(',')[-1]}", "ensemble"))


def score_birdnet(args, paths, labels, ensemble_dir):
    """BirdNET alone against the last round's ensemble: macro AUC on the classes BirdNET covers, and seconds per
    soundscape of each, measured one after the other in this run."""
    import teacher
    began = time.time()
    networks, front_end, classes, backend = infer.load_ensemble(ensemble_dir, "auto", args.threads, "auto")
    ours = infer.predict_files(paths, networks, front_end, log=False)
    ours_s = (time.time() - began) / len(paths)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.time()
        mapping = teacher.teach(args.birdnet, os.path.join(tmp, "birdnet.npz"), soundscapes=args.audio,
                                n_threads=args.threads)
        birdnet_s = (time.time() - began) / len(paths)
        birdnet = np.load(os.path.join(tmp, "birdnet.npz"))
        rows = [f"{os.path.splitext(os.path.basename(p))[0]}_{e}" for p, e in zip(birdnet["paths"],
                                                                                   birdnet["end_seconds"])]
        birdnet_frame = pd.DataFrame(birdnet["probs"], index=rows, columns=[str(c) for c in birdnet["classes"]])
    covered = [c for c, i in zip(mapping["class"], mapping["teacher_index"]) if i >= 0 and c in classes]
    print(f"\nseconds per soundscape, this run: infer.py {ours_s:.3f} ({backend}, {len(networks)} models, "
          f"{args.threads} threads), BirdNET {birdnet_s:.3f} (teacher.py, {args.threads} threads)")
    truth = labels.set_index("row_id")
    covered = [c for c in covered if c in truth and truth[c].sum() > 0]
    if not covered:
        print(f"BirdNET covers none of the labelled classes of {args.audio}: no AUC to compare")
        return
    frame = infer.submission_frame(paths, ours.probs, ours.n_windows, classes).set_index("row_id")
    common_rows = [r for r in frame.index if r in birdnet_frame.index and r in truth.index]
    y = truth.loc[common_rows, covered].values
    print(f"macro ROC-AUC over the {len(covered)} classes BirdNET covers ({len(common_rows)} windows): "
          f"BirdNET {macro_roc_auc(y, birdnet_frame.loc[common_rows, covered].values):.4f}, "
          f"ours {macro_roc_auc(y, frame.loc[common_rows, covered].values):.4f}")


if __name__ == "__main__":
    main()
