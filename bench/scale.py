"""The project at BirdCLEF 2024 size on this machine: time, memory and disk of each step, and the projected time
of the write-up's whole 3-round cycle. Accuracy means nothing here: the data are links to a few recordings.

    python bench/scale.py --threads 2            # 24,459 training rows, 182 classes, 8,444 4-min soundscapes
    python bench/scale.py --quick                # a small version (fastest backend, one step per size), for tests
    python bench/scale.py --models models-demo.csv   # another models table's cycle
    make bench-scale

Builds, under --root (default a temporary folder, removed after), a BirdCLEF 2024 layout whose training rows
are symbolic links to 8 short recordings and whose unlabeled soundscapes link to 3 four-minute files written
once; then measures, each as its own process where memory matters:
- prep.py (wall time, peak RSS, cache size) at the full size and at a quarter of it (peak RSS must not grow
  with the number of soundscapes);
- a training step (mel, augmentations, forward, backward) in samples/s for a 64x128 and a 256x256 model
  (bench/train_speed.py's), and the loader on the real cache;
- pseudo-labelling seconds per 1,000 cached windows with the write-up's six models (random weights; --models:
  another table's) for each installed backend, and pseudo.py's peak RSS on the caches of both sizes (with one
  small model).
Prints the projected time of every step of the cycle with the write-up's settings (50 epochs, batch 64).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import infer  # noqa: E402
import pseudo  # noqa: E402
from common import MelModel, MelSettings, TrainingSet, target_matrix  # noqa: E402
from tables import CachePaths, load_classes, read_models_table, read_rows  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from export import export_artifact  # noqa: E402
from files import save_json  # noqa: E402
from demo_data import write_ogg  # noqa: E402
from train_speed import train_speed  # noqa: E402

FULL = dict(rows=24459, classes=182, soundscapes=8444)
QUICK = dict(rows=80, classes=10, soundscapes=8)
SOUNDSCAPE_S = 240


def build_dataset(root, rows, classes, soundscapes, seed=0):
    """A BirdCLEF 2024 layout of links: `rows` training rows over `classes` classes, `soundscapes` 4-min files."""
    rng = np.random.default_rng(seed)
    sources = os.path.join(os.path.dirname(root.rstrip("/")), "sources")
    if not os.path.isdir(sources):
        os.makedirs(sources)
        for k in range(8):  # 8 s each: a tone in noise, at the rates real uploads have
            rate = (32000, 44100, 48000)[k % 3]
            tt = np.arange(int(rate * 8)) / rate
            write_ogg(os.path.join(sources, f"train{k}.ogg"),
                      (0.2 * np.sin(2 * np.pi * (800 + 400 * k) * tt) + 0.05 * rng.standard_normal(len(tt))
                       ).astype(np.float32), rate)
        for k in range(3):
            write_ogg(os.path.join(sources, f"soundscape{k}.ogg"),
                      (0.05 * rng.standard_normal(SOUNDSCAPE_S * 32000)).astype(np.float32))
    names = [f"sp{c:03d}" for c in range(classes)]
    labels = [names[i % classes] for i in range(rows)]
    meta = pd.DataFrame(dict(primary_label=labels, secondary_labels="[]", filename=[
        f"{label}/XC{i:06d}.ogg" for i, label in enumerate(labels)]))
    for name in names:
        os.makedirs(os.path.join(root, "train_audio", name), exist_ok=True)
    for i, filename in enumerate(meta["filename"]):
        os.symlink(os.path.join(sources, f"train{i % 8}.ogg"), os.path.join(root, "train_audio", filename))
    meta.to_csv(os.path.join(root, "train_metadata.csv"), index=False)
    os.makedirs(os.path.join(root, "unlabeled_soundscapes"))
    for k in range(soundscapes):
        os.symlink(os.path.join(sources, f"soundscape{k % 3}.ogg"),
                   os.path.join(root, "unlabeled_soundscapes", f"U{k:05d}.ogg"))
    pd.DataFrame(columns=["row_id"] + names).to_csv(os.path.join(root, "sample_submission.csv"), index=False)


def run_measured(command):
    """Run a command; (wall seconds, peak RSS in GB). The peak is the kernel's high-water mark (VmHWM) of the
    process, read every 0.1 s (getrusage's ru_maxrss would include this parent's memory at fork)."""
    began, peak = time.perf_counter(), 0
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status") as f:
                    peak = max([peak] + [int(line.split()[1]) for line in f if line.startswith("VmHWM:")])
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"failed: {' '.join(command)}\n{errors.read()[-2000:]}")
    return time.perf_counter() - began, peak / 1e6  # KB -> GB


def folder_gb(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files) / 1e9


def writeup_ensemble(folder, classes, models="models.csv"):
    """The models of a models table (the write-up's six), random weights, exported for infer.py's engine."""
    table = read_models_table(os.path.join(ROOT, models))
    for model_id, row in table.iterrows():
        torch.manual_seed(int(model_id))
        export_artifact(MelModel(len(classes), int(row["image_height"]), int(row["image_width"])),
                        MelSettings(n_mels=int(row["n_mels"]), hop_length=int(row["hop_length"])), classes, folder,
                        f"model{model_id}", value=0.7)
    save_json(infer.ensemble_manifest([f"model{i}" for i in table.index]), os.path.join(folder, "manifest.json"))
    return table


def models_count(table):
    return f"{len(table)} model{'s' if len(table) > 1 else ''}"


def measure_prep(root, size, threads, figures):
    """prep.py on the dataset at full and quarter size: {label: cache folder}; seconds, RSS and GB into figures."""
    caches = {}
    for label, fraction in (("full", 1), ("quarter", 4)):
        data = os.path.join(root, f"data-{label}")
        build_dataset(data, size["rows"] // fraction, size["classes"], size["soundscapes"] // fraction)
        cache = os.path.join(root, f"cache-{label}")
        seconds, rss = run_measured([sys.executable, os.path.join(ROOT, "prep.py"), "--data", data, "--out", cache,
                                     "--threads", str(threads)])
        caches[label] = cache
        figures[f"prep_{label}"] = (seconds, rss, folder_gb(cache))
        print(f"prep {label}: {size['rows'] // fraction:,} rows, {size['soundscapes'] // fraction:,} "
              f"soundscapes: {seconds:.0f} s, peak RSS {rss:.2f} GB, cache {folder_gb(cache):.1f} GB", flush=True)
    return caches


def measure_training(cache, classes, quick=False):
    """(64x128 samples/s, 256x256 samples/s, the loader's samples/s on the real cache); quick: one small batch
    per size."""
    small = train_speed(64, 128, 64, 1024, *((8, 1) if quick else (64, 3)), len(classes))
    large = train_speed(256, 256, 128, 512, *((4, 1) if quick else (16, 2)), len(classes))
    rows = read_rows(cache.rows)
    dataset = TrainingSet(np.load(cache.audio, mmap_mode="r"), target_matrix(rows, classes), np.arange(len(rows)))
    began, seen = time.perf_counter(), 0
    for i, (waves, _) in enumerate(dataset.epoch(1, 64)):
        seen += len(waves)
        if i == 15:
            break
    loader = seen / (time.perf_counter() - began)
    print(f"training step: 64x128 {small:.1f} samples/s, 256x256 {large:.1f} samples/s; "
          f"loader on the cache {loader:.0f} samples/s", flush=True)
    return small, large, loader


def measure_pseudo(root, caches, classes, windows, threads, figures, every_backend=True, models="models.csv"):
    """Seconds per 1,000 windows of the table's models (--models: the write-up's six) per backend
    (every_backend=False: the fastest installed only), and pseudo.py's time and memory at both sizes (one small
    model) into figures. Returns ({backend: s per 1,000}, the models table)."""
    cache = CachePaths(caches["full"])
    n_windows = len(np.load(cache.unlabeled_audio, mmap_mode="r"))
    ensemble = os.path.join(root, "ensemble")
    table = writeup_ensemble(ensemble, classes, models)
    rows_timed = np.arange(min(windows, n_windows))
    per_1000 = {}
    backends = infer.available_backends(ensemble, infer.read_specs(ensemble))
    for backend in backends if every_backend else backends[:1]:
        engine = pseudo.ExportedEngine(ensemble, backend, threads)
        pseudo.label_windows(engine, cache.unlabeled_audio, rows_timed[:16], show=False)  # warm-up
        began = time.perf_counter()
        pseudo.label_windows(engine, cache.unlabeled_audio, rows_timed, show=False)
        per_1000[backend] = (time.perf_counter() - began) / len(rows_timed) * 1000
        print(f"pseudo-labelling, {models_count(table)}, {backend}: {per_1000[backend]:.1f} s per 1,000 windows",
              flush=True)
    tiny = os.path.join(root, "tiny-ensemble")  # pseudo.py's memory at both sizes, with one small model
    export_artifact(MelModel(len(classes), 64, 64), MelSettings(n_mels=64, hop_length=1024), classes, tiny,
                    "m")
    save_json(infer.ensemble_manifest(["m"]), os.path.join(tiny, "manifest.json"))
    for label in ("full", "quarter"):
        seconds, rss = run_measured([sys.executable, os.path.join(ROOT, "pseudo.py"), "--ensemble", tiny, "--cache",
                                     caches[label], "--out", os.path.join(root, f"pseudo-{label}.npz"),
                                     "--threads", str(threads), "--device", "cpu"])
        figures[f"pseudo_{label}"] = (seconds, rss)
        cached = len(np.load(CachePaths(caches[label]).unlabeled_audio, mmap_mode="r"))
        print(f"pseudo.py {label} ({cached:,} cached windows, one 64x64 model): {seconds:.0f} s, "
              f"peak RSS {rss:.2f} GB", flush=True)
    return per_1000, table, n_windows


def project(table, small, large, per_1000, n_windows, rows, prep_seconds):
    """[(step, seconds)] of the write-up's cycle: 3 rounds x the table's models x 50 epochs over the training rows, 2
    pseudo-label rounds; seconds per sample interpolated by image pixels between the two measured sizes."""
    epochs = 50
    per_sample = {}
    for h, w in {(int(r["image_height"]), int(r["image_width"])) for _, r in table.iterrows()}:
        share = (h * w - 64 * 128) / (256 * 256 - 64 * 128)
        per_sample[(h, w)] = max(1 / small, (1 - share) / small + share / large)
    fastest = min(per_1000, key=per_1000.get)
    steps = [("prep (measured)", prep_seconds)]
    for r in (1, 2, 3):
        for model_id, row in table.iterrows():
            h, w = int(row["image_height"]), int(row["image_width"])
            steps.append((f"round {r} model {model_id} ({h}x{w}), {epochs} epochs",
                          epochs * rows * 0.8 * per_sample[(h, w)]))
        if r < 3:
            steps.append((f"pseudo{r}: {n_windows:,} windows, {models_count(table)}, {fastest}",
                          n_windows * per_1000[fastest] / 1000))
    return steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    add_flag(p, "--quick")
    add_flag(p, "--models", default="models.csv")  # the table whose cycle is timed and projected
    add_flag(p, "--root")
    p.add_argument("--windows", type=int, default=200, help="cached windows timed per pseudo-label backend")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = QUICK if args.quick else FULL
    root = args.root or tempfile.mkdtemp(prefix="birdclef-scale-")
    figures = {}
    try:
        caches = measure_prep(root, size, args.threads, figures)
        cache = CachePaths(caches["full"])
        classes = load_classes(cache.classes)
        small, large, _ = measure_training(cache, classes, args.quick)
        per_1000, table, n_windows = measure_pseudo(root, caches, classes, args.windows, args.threads, figures,
                                                    every_backend=not args.quick, models=args.models)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    steps = project(table, small, large, per_1000, n_windows, size["rows"], figures["prep_full"][0])
    fastest = min(per_1000, key=per_1000.get)
    print(f"\nprojected on this machine ({args.threads} threads, CPU), {size['rows']:,} rows x 50 epochs per model "
          f"(80% train):")
    print("| step | hours |\n|---|---|")
    for name, seconds in steps:
        print(f"| {name} | {seconds / 3600:.2f} |")
    print(f"| whole cycle | {sum(s for _, s in steps) / 3600:.1f} |")
    print(f"scale prep_s={figures['prep_full'][0]:.0f} prep_rss_gb={figures['prep_full'][1]:.2f}/"
          f"{figures['prep_quarter'][1]:.2f} cache_gb={figures['prep_full'][2]:.1f} "
          f"pseudo_round_min={n_windows * per_1000[fastest] / 1000 / 60:.1f} ({fastest}) "
          f"pseudo_rss_gb={figures['pseudo_full'][1]:.2f}/{figures['pseudo_quarter'][1]:.2f}")


if __name__ == "__main__":
    main()
