"""The target site's labelled soundscapes: each round's score on the held-out ones, and the stop rule.

    python site_score.py score --ensemble work/round1/ensemble --cache work/cache --out work/round1/site.json
    python site_score.py rounds --work work          # prints "train R" (the round to train next) or "final R"

score: infer.py's own prediction (every member, their mean, neighbour smoothing) over the labelled soundscape
files prep.py held out (site_labels.csv, split "valid"); macro ROC-AUC over the classes with a positive there, without
and with the smoothing (+pp), of the ensemble and of each member. Prints one line; writes <out> (the scores, the
number of files, windows and classes, the noise) and <out>.npz (the ensemble's per-window probabilities, for the
paired comparison of rounds). A cache without held-out labels gets {"windows": 0} and no line.

rounds (make ROUNDS=auto): round 1 first; then round r + 1 only while round r beat round r - 1 on the held-out
score (+pp) by more than that difference's noise; the final ensemble is the round with the best held-out score.
The noise is two standard deviations of the paired difference over bootstrap resamples of the held-out files (files,
not windows: a file's windows share its site, hour and weather). Writes <work>/rounds.json.
"""
import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from errors import UserError, run_main
from files import atomic_write, save_json
from flags import HelpFormatter, add_flag, infer_setting
from metrics import macro_roc_auc
from tables import CachePaths, load_classes, read_site_labels, split_labels

# defaults
max_rounds = 3
pp_weight = infer_setting("pp_weight")
bootstrap_samples = 200
noise_sds = 2.0           # a gain counts when above this many standard deviations of its bootstrap


def held_out_truth(cache, classes):
    """(files, truth): the held-out labelled soundscapes and a frame of their labelled windows (row_id as infer.py
    names windows, one 0/1 column per class); only listed windows count."""
    site = read_site_labels(CachePaths(cache).site_labels)
    site = site[site["split"] == "valid"]
    row_ids = [f"{os.path.splitext(os.path.basename(p))[0]}_{int(e)}" for p, e in zip(site["path"], site["end_second"])]
    index = {c: i for i, c in enumerate(classes)}
    truth = np.zeros((len(site), len(classes)), dtype=np.int8)
    for r, labels in enumerate(site["labels"]):
        truth[r, [index[label] for label in split_labels(labels) if label in index]] = 1
    return sorted(set(site["path"])), pd.DataFrame(truth, index=row_ids, columns=classes)


def predict_windows(ensemble_dir, paths, pp, backend="torch", precision="f32", threads=None):
    """{(member or "ensemble", smoothed): frame of probabilities indexed by row_id} over `paths`: each member alone
    and their mean, as infer.py predicts (pp = its neighbour smoothing weight; 0 and pp both)."""
    import torch
    import infer
    networks, front_end, classes, _ = infer.load_ensemble(ensemble_dir, backend, threads or torch.get_num_threads(),
                                                          precision)
    raw = {}
    for net in sorted(networks, key=lambda n: n.name):
        raw[net.name], n_windows_of, _, _ = infer.predict_files(paths, [net], front_end, pp=0.0, log=False)
    frames = {}
    members = list(raw)
    for name in members + ["ensemble"]:
        for weight in (0.0, pp):
            results = {path: infer.smooth_neighbours(np.mean([raw[m][path] for m in (members if name == "ensemble"
                                                                                   else [name])], axis=0), weight)
                       for path in paths}
            frames[(name, weight > 0)] = infer.submission_frame(paths, results, n_windows_of, classes) \
                .set_index("row_id")[classes]
    return frames, classes


def describe_noise(noise):
    return f"noise +-{noise:.4f}" if np.isfinite(noise) else "noise unknown: one held-out file"


def file_of(row_ids):
    """row_id "<file stem>_<end second>" -> the file stem."""
    return np.array([r.rsplit("_", 1)[0] for r in row_ids])


def bootstrap_sd(truth, probs, groups, other=None, samples=bootstrap_samples, seed=0):
    """Standard deviation of macro AUC (or of its difference from `other`'s on the same windows) over bootstrap
    resamples of the groups (files); nan with fewer than two groups."""
    names = np.unique(groups)
    if len(names) < 2:
        return float("nan")
    rows_of = [np.flatnonzero(groups == g) for g in names]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        rows = np.concatenate([rows_of[i] for i in rng.integers(len(names), size=len(names))])
        value = macro_roc_auc(truth[rows], probs[rows])
        if other is not None:
            value -= macro_roc_auc(truth[rows], other[rows])
        values.append(value)
    return float(np.nanstd(values))


def score(ensemble_dir, cache, out, pp=pp_weight, backend="torch", precision="f32", threads=None):
    """Score an ensemble on the held-out labelled soundscapes; write out (json) and out.npz; return the report."""
    if not (read_site_labels(CachePaths(cache).site_labels)["split"] == "valid").any():
        save_json(dict(windows=0), out)
        return dict(windows=0)
    files, truth = held_out_truth(cache, load_classes(CachePaths(cache).classes))
    frames, classes = predict_windows(ensemble_dir, files, pp, backend, precision, threads)
    truth = truth[classes]
    y = truth.values
    scores = {f"{name}{' +pp' if smoothed else ''}": macro_roc_auc(y, frame.loc[truth.index].values)
              for (name, smoothed), frame in frames.items()}
    probs = frames[("ensemble", True)].loc[truth.index].values.astype(np.float32)
    noise = noise_sds * bootstrap_sd(y, probs, file_of(truth.index))
    positives = int((y.sum(0) > 0).sum())
    report = dict(windows=len(truth), files=len(files), classes_with_positive=positives, auc=scores["ensemble"],
                  auc_pp=scores["ensemble +pp"], noise=noise, members=scores, pp_weight=pp)
    def write_arrays(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, row_ids=np.asarray(truth.index, dtype=str), truth=y.astype(np.int8), probs=probs)
    atomic_write(out + ".npz", write_arrays)
    save_json(report, out)  # last: the report marks a complete score
    print(f"{os.path.dirname(os.path.abspath(ensemble_dir.rstrip('/')))}: the site's labelled soundscapes held out "
          f"({len(files)} files, {len(truth)} windows, {positives} classes with a positive): macro AUC "
          f"{report['auc']:.4f}, +pp {report['auc_pp']:.4f} ({describe_noise(noise)}); members +pp: "
          + ", ".join(f"{k[:-4]} {v:.4f}" for k, v in scores.items() if k.endswith(" +pp") and k != "ensemble +pp"),
          flush=True)
    return report


def round_report(work, r):
    """Round r's held-out report (score's json), or None when it is not scored or the site has no held-out labels."""
    path = os.path.join(work, f"round{r}", "site.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        report = json.load(f)
    return report if report.get("windows") else None


def read_round(work, r):
    """Round r's held-out report with its per-window arrays, or None when it is not scored yet."""
    path = os.path.join(work, f"round{r}", "site.json")
    if not os.path.isfile(path):
        return None
    report = round_report(work, r)
    if report is None:
        raise UserError(f"ROUNDS=auto decides on the site's held-out labelled soundscapes, and {path} scored none "
                        f"(the dataset has no train_soundscapes_labels.csv, or PREP_ARGS turned it off): give "
                        f"ROUNDS=N, 1 to 9")
    report["arrays"] = np.load(path + ".npz", allow_pickle=False)
    return report


def decide_rounds(work, last=max_rounds):
    """("train", r) for the round to train next, or ("final", r) with the reasons as lines."""
    reports, lines = {}, []
    for r in range(1, last + 1):
        reports[r] = read_round(work, r)
        if reports[r] is None:
            return ("train", r), lines
        if r == 1:
            continue
        now, before = reports[r], reports[r - 1]
        y, groups = now["arrays"]["truth"], file_of(now["arrays"]["row_ids"])
        noise = noise_sds * bootstrap_sd(y, now["arrays"]["probs"], groups, other=before["arrays"]["probs"])
        gain = now["auc_pp"] - before["auc_pp"]
        lines.append(f"round {r} vs round {r - 1} on the site ({now['windows']} windows of {now['files']} held-out "
                     f"files): +pp {now['auc_pp']:.4f} vs {before['auc_pp']:.4f}, gain {gain:+.4f}, "
                     f"{describe_noise(noise)}: " + ("beyond noise" if gain > noise else "not beyond noise, no more "
                                                      "rounds"))
        if not gain > noise:
            break
    scored = {r: reports[r]["auc_pp"] for r in reports if reports[r] is not None}
    final = max(scored, key=lambda r: (scored[r], -r))  # ties go to the earlier round
    lines.append(f"final ensemble: round {final} (held-out +pp " + ", ".join(f"round {r} {v:.4f}"
                                                                           for r, v in scored.items()) + ")")
    save_json(dict(scores=scored, final=final, reasons=lines), os.path.join(work, "rounds.json"))
    return ("final", final), lines


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "rounds":
        p = argparse.ArgumentParser(prog="site_score.py rounds", description="The stop rule of make ROUNDS=auto: prints "
                                    "'train R' (the round to train next) or 'final R'; the reasons go to stderr.")
        add_flag(p, "--work", default="work")
        p.add_argument("--max-rounds", type=int, default=max_rounds, help="rounds the cycle has")
        args = p.parse_args(sys.argv[2:])
        (what, r), lines = decide_rounds(args.work, args.max_rounds)
        for line in lines:
            print(line, file=sys.stderr)
        print(what, r)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "score":
        del sys.argv[1]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--ensemble", required=True)
    add_flag(p, "--cache", default="work/cache")
    add_flag(p, "--out", required=True)
    add_flag(p, "--pp-weight", default=pp_weight)
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    args = p.parse_args()
    import torch  # after parsing: --help does not load it
    torch.set_num_threads(args.threads)
    score(args.ensemble, args.cache, args.out, args.pp_weight, threads=args.threads)


if __name__ == "__main__":
    run_main(main)
