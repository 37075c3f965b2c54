"""Pseudo-label every 5-s window of the unlabeled soundscapes with one round's ensemble.

    python pseudo.py --models work/round1/ensemble --cache work/cache --out work/pseudo1.npz
    python pseudo.py --models work/round2/ensemble --out work/pseudo2.npz --pl-norm none --threads 4

The ensemble (a folder from `soup.py bundle`) runs through infer.py's engine: each distinct mel setting is
computed once per file and shared by the models using it; the label of a window is the mean of the models'
sigmoid probabilities, then normalised per class over all windows (the seed added a normalisation in stage 2
because the pseudo labels' floor values had grown too large): --pl-norm floor (default) maps each class's
median to 0 and keeps 1 at 1; minmax rescales each class to [0, 1]; none keeps raw probabilities. On the demo,
floor gave the best rounds 2 and 3 and minmax the worst (an unsure model's top guesses of ~0.3 become 1.0).

Output (.npz, written atomically): paths (soundscape of each row), end_seconds (5, 10, ...), probs
(rows x classes, float32), classes.
"""
import argparse
import os

import numpy as np
import pandas as pd
import torch

import infer
from common import HelpFormatter, CachePaths, UserError, WINDOW_SECONDS, atomic_write, load_classes, run_main

# defaults
threads = os.cpu_count() or 2
pl_norm = "floor"          # removes the floor that grows from round to round (README: measured on the demo)


def normalise(probs, how):
    """Per-class normalisation over all windows.

    none: as is. minmax: each class rescaled to [0, 1] (a constant class becomes 0). floor: each class's
    median (its floor: most windows hold no call of a given species) becomes 0 and 1 stays 1, so the
    floor that grows from round to round is removed without turning weak guesses into confident ones.
    """
    if how == "none":
        return probs
    if how == "floor":
        floor = np.median(probs, axis=0, keepdims=True)
        return np.clip((probs - floor) / np.maximum(1 - floor, 1e-6), 0, 1).astype(np.float32)
    low, high = probs.min(0, keepdims=True), probs.max(0, keepdims=True)
    return np.where(high > low, (probs - low) / np.maximum(high - low, 1e-12), 0.0).astype(np.float32)


def pseudo_label(models_dir, cache, out, how=pl_norm, n_threads=threads, backend="torch"):
    paths_of = CachePaths(cache)
    if not os.path.isfile(paths_of.unlabeled):
        raise UserError(f"cache file missing: {paths_of.unlabeled} (run prep.py first)")
    unlabeled = pd.read_csv(paths_of.unlabeled)
    if len(unlabeled) == 0:
        raise UserError(f"{paths_of.unlabeled} lists no unlabeled soundscape to pseudo-label")
    torch.set_num_threads(max(1, n_threads))
    networks, mels, classes, _ = infer.load_ensemble(models_dir, backend, n_threads)
    if classes != load_classes(paths_of.classes):
        raise UserError(f"{models_dir}: the ensemble's classes differ from the cache's")
    files = list(unlabeled["path"])
    results, _, _, _ = infer.predict_files(files, networks, mels, budget_s=None, pp=0.0)
    names, ends, blocks = [], [], []
    for path in files:
        probs = results[path]
        if probs is None:  # unreadable now: infer.py warned; its windows get no pseudo label
            continue
        names += [path] * len(probs)
        ends += [(w + 1) * WINDOW_SECONDS for w in range(len(probs))]
        blocks.append(probs.astype(np.float32))
    if not blocks:
        raise UserError("no unlabeled soundscape could be decoded")
    probs = normalise(np.concatenate(blocks), how)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, paths=np.array(names), end_seconds=np.array(ends, dtype=np.int64), probs=probs,
                     classes=np.array(classes))
    atomic_write(out, write)
    print(f"{out}: {len(probs)} windows of {len(blocks)} soundscapes, mean label {probs.mean():.4f} ({how})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", required=True, help="ensemble folder (soup.py bundle)")
    p.add_argument("--cache", default="work/cache", help="prep.py's cache (lists the unlabeled soundscapes)")
    p.add_argument("--out", required=True, help="pseudo-label file to write (.npz)")
    p.add_argument("--pl-norm", default=pl_norm, choices=["none", "floor", "minmax"],
                   help="per class over all windows: floor maps the median to 0 and keeps 1 at 1; minmax rescales "
                   "to [0, 1]; none keeps raw probabilities")
    p.add_argument("--threads", type=int, default=threads, help="CPU threads")
    p.add_argument("--backend", default="torch", choices=["auto", "openvino", "onnx", "torch"],
                   help="inference backend (infer.py's)")
    args = p.parse_args()
    pseudo_label(args.models, args.cache, args.out, args.pl_norm, args.threads, args.backend)


if __name__ == "__main__":
    run_main(main)
