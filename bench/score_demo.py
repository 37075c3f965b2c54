"""Score each round of a finished cycle on labelled soundscapes (the demo's test labels): macro ROC-AUC of
every single model and of the ensemble, without and with neighbour post-processing.

    python bench/score_demo.py --work work/demo --audio data/demo/test_soundscapes --labels data/demo-test-labels.csv

Prints a table and writes it to <work>/scores.csv.
"""
import argparse
import os
import sys

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import infer  # noqa: E402
from common import HelpFormatter, macro_roc_auc  # noqa: E402


def score_round(ensemble_dir, paths, labels, pp_weight, backend="torch", precision="f32"):
    networks, front_end, classes, _ = infer.load_ensemble(ensemble_dir, backend, torch.get_num_threads(), precision)
    truth = labels.set_index("row_id")[classes]
    raw = {}
    for net in sorted(networks, key=lambda n: n.name):
        raw[net.name], n_windows_of, _, _ = infer.predict_files(paths, [net], front_end, pp=0.0, log=False)
    scores = {}
    members = list(raw)
    for name in members + ["ensemble"]:
        for weight in (0.0, pp_weight):
            results = {}
            for path in paths:
                parts = [raw[m][path] for m in (members if name == "ensemble" else [name])]
                results[path] = infer.smooth_neighbours(np.mean(parts, axis=0), weight)
            frame = infer.submission_frame(paths, results, n_windows_of, classes).set_index("row_id")
            scores[(name, weight > 0)] = macro_roc_auc(truth.loc[frame.index].values, frame[classes].values)
    return scores


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--work", default="work/demo", help="WORK of the finished cycle")
    p.add_argument("--audio", default="data/demo/test_soundscapes", help="labelled soundscapes")
    p.add_argument("--labels", default="data/demo-test-labels.csv", help="labels, sample_submission format")
    p.add_argument("--rounds", default="1,2,3", help="rounds to score")
    p.add_argument("--pp-weight", type=float, default=0.5, help="neighbour smoothing weight")
    p.add_argument("--backend", default="torch", choices=["auto", "openvino", "onnx", "torch"], help="infer.py's")
    p.add_argument("--precision", default="f32", choices=["auto", "f32", "bf16"], help="infer.py's (OpenVINO)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads")
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
    header = "| round | " + " | ".join(f"{m}{' +pp' if pp else ''}" for m, pp in wide.columns) + " |"
    print(header)
    print("|" + "---|" * (len(wide.columns) + 1))
    for r, values in wide.iterrows():
        print(f"| {r} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


if __name__ == "__main__":
    main()
