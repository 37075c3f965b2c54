"""What each part of the recipe is worth: the round-1 single model trained once per variant, one part changed at a
time, scored on labelled soundscapes (the demo's by default).

    python bench/ablate.py                                   # the demo, the default variants, 2 seeds (make bench-ablate)
    python bench/ablate.py --variants base,baseline,demo    # reuses finished runs: only demo trains
    python bench/ablate.py --variants base --try "shift-1s=--time-shift 1.0" --try "no-aug=--aug-mixup 0 --aug-flip 0"
    python bench/ablate.py --data /data/my-site --labels /data/my-site-labels.csv --epochs 30 --base-args "--pretrained timm"
    python bench/ablate.py --quick                           # smoke test: 2 variants, 1 seed, 1 tiny epoch

Each variant is train.py's arguments (the same train.py the cycle runs, a preset or flags): `base` is train.py's
defaults (the write-up's recipe) with --base-args (batch, lr and soup at the demo's size); every other variant changes
one part of it; `baseline` and `demo` are whole presets, trained for 16 epochs as they were run. Each run is
prep's cache -> train.py -> soup.py -> its export scored by infer.py's code (fastest backend, f32) on
--audio against --labels (bench/score_demo.py). Runs live in <work>/<variant>-seed<S>: a rerun reuses the
finished ones. Prints, per variant, medians over the seeds of test macro AUC without and with neighbour
smoothing, validation AUC (the held-out fold; none for fold all) and training minutes, and writes
<work>/ablation.csv (every run) and <work>/ablation.md (the table).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import infer  # noqa: E402
import train  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from errors import UserError, run_main  # noqa: E402
from score_demo import score_round  # noqa: E402
from soup import bundle  # noqa: E402

# defaults: the demo
data = "data/demo"
labels = "data/demo-test-labels.csv"
work = "work/ablate"
models = "bench/models-ablate.csv"
model = 1                    # the row whose single model is ablated (64 mels at hop 1024, 64x128, fold 4 of 5)
epochs = 12                  # make demo trains 16; 12 keeps the ablation under 30 minutes on 2 cores, and the
                             # more-epochs variant shows what the 4 epochs are worth
preset_epochs = 16           # the whole recipes (baseline, demo) train as they were run: 16 epochs
# the write-up's recipe at the demo's size (soup of the last 5), from random init as the demo trains
base_args = "--batch-size 32 --lr 2e-3 --soup-start -5 --pretrained none"
seeds = "1,2"



def variants_of(epochs):
    """name -> (what it is, train.py arguments): one part changed at a time from the base, then whole presets.
    Parts whose default was chosen by measuring (normalization, time shift) flip to the other value."""
    other_normalize = "standard" if train.normalize == "minmax" else "minmax"
    other_shift = 0.5 if train.time_shift_seconds == 0 else 0.0
    off = ["0"]
    return {
        "base": ("train.py's defaults: the write-up's recipe", []),
        "no-flip": ("no horizontal flip", ["--aug-flip"] + off),
        "no-coarse-dropout": ("no coarse dropout", ["--aug-coarse-dropout"] + off),
        "no-mixup": ("no mixup", ["--aug-mixup"] + off),
        "no-stretch": ("no time/frequency stretch", ["--aug-local-stretch", "0", "--aug-global-stretch", "0"]),
        "no-augmentation": ("none of the five augmentations", ["--aug-flip", "0", "--aug-coarse-dropout", "0",
                            "--aug-mixup", "0", "--aug-local-stretch", "0", "--aug-global-stretch", "0"]),
        "normalization": (f"each mel image {other_normalize} (not {train.normalize})",
                          ["--normalize", other_normalize]),
        "mel-50-14000": ("mel range 50-14000 Hz (not 20-16000)", ["--f-min", "50", "--f-max", "14000"]),
        "hop-1250": ("hop 1250 (not the table's)", ["--hop-length", "1250"]),
        "time-shift": (f"time shift up to +-{other_shift:g} s (not +-{train.time_shift_seconds:g} s)" if other_shift
                       else f"no time shift (not +-{train.time_shift_seconds:g} s)",
                       ["--time-shift", f"{other_shift:g}"]),
        "bce": ("BCE only (not BCE + focal)", ["--loss", "bce"]),
        "plain-head": ("timm's average pooling + linear (not GeM + 5 dropout heads)", ["--head", "plain"]),
        "1-channel": ("1 input channel (not 3)", ["--channels", "1"]),
        "sgd-onecycle": ("SGD one-cycle lr 0.1, wd 5e-4 (not AdamW cosine)", ["--optimizer", "sgd", "--schedule",
                         "onecycle", "--lr", "0.1", "--weight-decay", "5e-4"]),
        "more-epochs": (f"{round(epochs * 4 / 3)} epochs (not {epochs})", ["--epochs", str(round(epochs * 4 / 3))]),
        "fold-all": ("every file trains, no fold held out", ["--fold", "all"]),
        # whole recipes, not changes of the base
        "baseline": (f"the one-file baseline's recipe (train.py --preset baseline), {preset_epochs} epochs",
                      ["--preset", "baseline", "--epochs", str(preset_epochs)]),
        "demo": (f"the demo's recipe (train.py --preset demo), {preset_epochs} epochs",
                 ["--preset", "demo", "--epochs", str(preset_epochs)]),
    }


PRESET_VARIANTS = ("baseline", "demo")
EXTRA_VARIANTS = ("no-augmentation", "demo")   # run only when asked (--variants), to stay under 30 minutes
QUICK = ["--max-train-files", "16", "--image-height", "32", "--image-width", "32", "--n-mels", "32",
         "--batch-size", "8", "--soup-start", "1"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--data", default=data)
    add_flag(p, "--labels", default=labels)
    add_flag(p, "--audio")
    add_flag(p, "--work", default=work)
    add_flag(p, "--cache")
    add_flag(p, "--models", default=models)
    add_flag(p, "--model", default=model)
    add_flag(p, "--epochs", default=epochs)
    p.add_argument("--base-args", default=base_args, help="train.py arguments of the base (and every change)")
    p.add_argument("--variants", default=",".join(v for v in variants_of(epochs) if v not in EXTRA_VARIANTS),
                   help="comma-separated, from: " + ", ".join(variants_of(epochs)))
    p.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME=ARGS",
                   help="an extra variant: train.py arguments added to the base's, e.g. "
                   "--try \"shift-1s=--time-shift 1.0\" (repeatable; named in --variants by default)")
    add_flag(p, "--seeds", default=seeds)
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    add_flag(p, "--jobs")
    add_flag(p, "--pp-weight", default=infer.pp_weight)
    add_flag(p, "--quick")
    return p.parse_args(argv)


def tried_variants(args):
    """--try NAME=ARGS -> {name: (description, arguments)}."""
    out = {}
    for text in args.tries:
        name, _, arguments = text.partition("=")
        if not name.strip() or not arguments.strip():
            raise UserError(f"--try takes NAME=ARGS (train.py arguments), not {text!r}")
        out[name.strip()] = (f"train.py {arguments.strip()}", shlex.split(arguments))
    return out


def run_arguments(variant, args):
    """train.py arguments of a variant (a later flag wins over an earlier one)."""
    changes = {**variants_of(args.epochs), **tried_variants(args)}[variant][1]
    base = [] if variant in PRESET_VARIANTS else shlex.split(args.base_args)
    quick = QUICK + ["--epochs", str(args.epochs)] if args.quick else []  # last: tiny even for the presets
    return ["--epochs", str(args.epochs)] + base + changes + quick


def run_one(variant, seed, args, threads, paths, labels_table):
    """Train, soup and score one variant with one seed; returns a row of the table."""
    out = os.path.join(args.work, f"{variant}-seed{seed}")
    py = sys.executable
    began = time.time()
    log_path = out + ".log"
    with open(log_path, "a") as log:
        def call(command):
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode:
                raise UserError(f"{variant} seed {seed}: {' '.join(command[1:3])} failed (see {log_path})")
        call([py, "train.py", "--model", str(args.model), "--models", args.models, "--cache", args.cache,
              "--out-dir", out, "--threads", str(threads), "--seed", str(seed)] + run_arguments(variant, args))
        # a process of its own: torch's ONNX export, which the soup ends with, is not thread-safe
        call([py, "soup.py", "--model-dir", out, "--cache", args.cache, "--threads", str(threads)])
    bundle(os.path.join(out, "ensemble"), [out])
    import torch
    torch.set_num_threads(threads)
    # the fastest installed backend, in f32: the same AUC as TorchScript, ~1 s sooner per run (3.3 vs 4.2 s here)
    scores = score_round(os.path.join(out, "ensemble"), paths, labels_table, args.pp_weight, backend="auto",
                         precision="f32")
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    with open(os.path.join(out, "soup.json")) as f:
        soup = json.load(f)
    row = dict(variant=variant, seed=seed, test_auc=scores[(f"model{args.model}", False)],
               test_auc_pp=scores[(f"model{args.model}", True)],
               valid_auc=soup["soup"]["auc"] if soup.get("validated") else float("nan"),
               train_minutes=metrics["seconds"].sum() / 60, wall_minutes=(time.time() - began) / 60)
    print(f"{variant} seed {seed}: test AUC {row['test_auc']:.4f} (+pp {row['test_auc_pp']:.4f}), valid "
          f"{row['valid_auc']:.4f}, {row['train_minutes']:.1f} min", flush=True)
    return row


def table_of(runs, args):
    """Medians over seeds per variant, in the order asked, as a markdown table."""
    medians = runs.groupby("variant", sort=False)[["test_auc", "test_auc_pp", "valid_auc", "train_minutes"]].median()
    base = medians.loc["base"] if "base" in medians.index else None
    lines = ["| variant | what changes | test AUC | +pp | vs base (+pp) | valid AUC | minutes |",
             "|---|---|---|---|---|---|---|"]
    for variant, m in medians.iterrows():
        what = {**variants_of(args.epochs), **tried_variants(args)}[variant][0]
        delta = "" if base is None or variant == "base" else f"{m.test_auc_pp - base.test_auc_pp:+.4f}"
        valid = "-" if np.isnan(m.valid_auc) else f"{m.valid_auc:.4f}"
        lines.append(f"| {variant} | {what} | {m.test_auc:.4f} | {m.test_auc_pp:.4f} | {delta} | {valid} | "
                     f"{m.train_minutes:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.variants, args.seeds, args.epochs = "base,baseline", "1", 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = {**variants_of(args.epochs), **tried_variants(args)}
    variants += [v for v in tried_variants(args) if v not in variants]
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise UserError(f"unknown variant(s): {', '.join(unknown)} (known: {', '.join(known)})")
    seeds_list = [int(s) for s in str(args.seeds).split(",")]
    for path in (args.labels, args.models):
        if not os.path.isfile(path):
            raise UserError(f"file not found: {path}")
    args.work, args.models = os.path.abspath(args.work), os.path.abspath(args.models)
    args.cache = os.path.abspath(args.cache or os.path.join(args.work, "cache"))
    os.makedirs(args.work, exist_ok=True)
    if not os.path.isfile(os.path.join(args.cache, "train_rows.csv")):
        subprocess.run([sys.executable, "prep.py", "--data", os.path.abspath(args.data), "--out", args.cache,
                        "--threads", str(args.threads)], cwd=ROOT, check=True)
    paths = infer.list_audio(args.audio or os.path.join(args.data, "test_soundscapes"))
    if not paths:
        raise UserError(f"no audio in {args.audio or os.path.join(args.data, 'test_soundscapes')}")
    labels_table = pd.read_csv(args.labels)
    jobs = args.jobs or max(1, min(2, args.threads))
    threads = max(1, args.threads // jobs)
    todo = [(v, s) for v in variants for s in seeds_list]
    print(f"{len(todo)} runs ({len(variants)} variants x {len(seeds_list)} seeds), {jobs} at a time with "
          f"{threads} thread(s) each; logs in {args.work}/<variant>-seed<S>.log", flush=True)
    began = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        rows = list(pool.map(lambda vs: run_one(vs[0], vs[1], args, threads, paths, labels_table), todo))
    runs = pd.DataFrame(rows)
    runs.to_csv(os.path.join(args.work, "ablation.csv"), index=False)
    table = table_of(runs, args)
    with open(os.path.join(args.work, "ablation.md"), "w") as f:
        f.write(table + "\n")
    print(f"\nround-1 single model ({args.models} row {args.model}, {args.epochs} epochs, base: "
          f"{args.base_args!r}); medians of seeds {args.seeds}; test: {len(labels_table)} windows of "
          f"{len(paths)} soundscapes; pp = neighbour smoothing (weight {args.pp_weight}); "
          f"{(time.time() - began) / 60:.1f} minutes in all")
    print(table)


if __name__ == "__main__":
    run_main(main)
