"""A GPU box in one command: for each model of the models table, training samples/s on the device (train.py's
step with AMP: mel, augmentations, forward, backward, AdamW), the loader's samples/s with the worker threads
train.py gives it on that device, and their ratio (below 1: the GPU waits for data); pseudo-labelling windows/s
on the device (pseudo.py's engine for a GPU: every model of the table, AMP, batches of 256 windows); and the
projected hours of the write-up's whole cycle at BirdCLEF 2024 size (24,459 recordings, 50 epochs over 80% of them
per model, 3 rounds, 2 pseudo-label rounds over prep's 20,000 cached windows). Random weights: speed only.

    python bench/gpu.py                                  # the GPU, models.csv (make bench-gpu)
    python bench/gpu.py --n-gpus 4                         # ... projected with the models spread over 4 GPUs
    python bench/gpu.py --device cpu --steps 1 --batches 2 --batch-size 8 --pseudo-batch-size 8  # small, anywhere
    make bench-gpu DEVICE=cpu

Ends with one line: gpu device=... train_samples_per_s=<per model> loader_ratio=<min> pseudo_windows_per_s=...
cycle_hours=...
"""
import argparse
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import pseudo  # noqa: E402
import train  # noqa: E402
from common import WINDOW_SAMPLES, MelEfficientNet, HelpFormatter, MelSettings  # noqa: E402
from tables import read_models_table  # noqa: E402
from flags import add_flag  # noqa: E402
from errors import run_main  # noqa: E402
from devices import pick_device  # noqa: E402
from train_speed import loader_speed, train_speed  # noqa: E402

# defaults: the write-up's table and recipe at BirdCLEF 2024 size
models = "models.csv"
steps = 10                # timed training steps per model (after one warm-up step)
batches = 48              # timed loader batches
pseudo_batches = 4        # timed pseudo-labelling batches of 256 windows
rows_2024 = 24459         # BirdCLEF 2024's training recordings
classes_2024 = 182
cached_windows = 20000    # prep's default cap of unlabeled windows (what a pseudo-label round scores)


def loader_workers(device):
    """train.py's --loader-workers auto on this device."""
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def measure_models(table, device, n_steps, n_batches, batch_size):
    """{model id: (train samples/s, loader samples/s)} for each row of the table."""
    workers = loader_workers(device)
    with tempfile.TemporaryDirectory() as folder:
        loader = loader_speed(folder, batch_size, n_batches, workers, threads=True,
                              rows=min(4096, batch_size * n_batches))
    figures = {}
    for model_id, row in table.iterrows():
        speed = train_speed(int(row["image_height"]), int(row["image_width"]), int(row["n_mels"]),
                            int(row["hop_length"]), batch_size, n_steps, classes_2024, device, amp=True)
        figures[model_id] = (speed, loader)
        print(f"model {model_id} ({int(row['image_height'])}x{int(row['image_width'])}, {int(row['n_mels'])} mels, "
              f"hop {int(row['hop_length'])}): train {speed:8.1f} samples/s, loader ({workers} worker threads) "
              f"{loader:8.1f} samples/s, loader/train {loader / speed:5.2f}", flush=True)
    return figures


def pseudo_speed(table, device, n_batches, batch=pseudo.batch_windows):
    """Windows/s of pseudo.py's GPU engine (every model of the table, AMP) on batches of its size."""
    soups = []
    for model_id, row in table.iterrows():
        torch.manual_seed(int(model_id))
        config = dict(mel_settings=vars(MelSettings(n_mels=int(row["n_mels"]), hop_length=int(row["hop_length"]))),
                      classes=[str(c) for c in range(classes_2024)])
        soups.append((config, MelEfficientNet(classes_2024, int(row["image_height"]), int(row["image_width"]))))
    engine = pseudo.SoupEngine(soups, device)
    waves = torch.randn(batch, WINDOW_SAMPLES) * 0.1
    engine(waves[:8])  # warm-up
    began = time.perf_counter()
    for _ in range(n_batches):
        engine(waves)
    return n_batches * len(waves) / (time.perf_counter() - began)


def projected_hours(table, figures, windows_per_s, n_gpus):
    """Hours of the write-up's cycle on this device: 3 rounds of every model (50 epochs over 80% of the rows, at the
    slower of the step and the loader), 2 pseudo-label rounds; with n_gpus, a round's models spread over them
    longest first (make GPUS=...)."""
    round_models = sorted((train.epochs * rows_2024 * 0.8 / min(figures[i]) / 3600 for i in table.index),
                          reverse=True)
    gpus = [0.0] * n_gpus
    for hours in round_models:  # each job takes the GPU that frees first
        gpus[gpus.index(min(gpus))] += hours
    pseudo_hours = cached_windows / windows_per_s / 3600
    return 3 * max(gpus) + 2 * pseudo_hours, sum(round_models), pseudo_hours


def describe(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return device.type


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--device", default="auto")
    add_flag(p, "--models", default=models)
    add_flag(p, "--steps", default=steps)
    p.add_argument("--batches", type=int, default=batches, help="timed loader batches")
    p.add_argument("--pseudo-batches", type=int, default=pseudo_batches, help="timed pseudo-labelling batches")
    add_flag(p, "--batch-size", default=train.batch_size)
    p.add_argument("--pseudo-batch-size", type=int, default=pseudo.batch_windows, help="windows per pseudo-labelling "
                   "batch (pseudo.py's on a GPU)")
    p.add_argument("--n-gpus", type=int, default=1, help="GPUs the projection spreads a round's models over")
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    table = read_models_table(args.models)
    print(f"device {describe(device)}, torch {torch.__version__}, {os.cpu_count()} CPU cores, {args.models}, "
          f"batch {args.batch_size}", flush=True)
    figures = measure_models(table, device, args.steps, args.batches, args.batch_size)
    windows_per_s = pseudo_speed(table, device, args.pseudo_batches, args.pseudo_batch_size)
    print(f"pseudo-labelling, {len(table)} models: {windows_per_s:.1f} windows/s", flush=True)
    hours, model_hours, pseudo_hours = projected_hours(table, figures, windows_per_s, args.n_gpus)
    print(f"projected, the write-up's cycle at BirdCLEF 2024 size on {args.n_gpus} x {describe(device)}: {hours:.1f} h "
          f"(training {model_hours:.1f} h per round in all, one pseudo-label round {pseudo_hours:.2f} h; prep, "
          f"soups and exports run on the CPU: make bench-scale)")
    ratio = min(loader / speed for speed, loader in figures.values())
    print(f"gpu device={describe(device)} train_samples_per_s="
          + "/".join(f"{figures[i][0]:.1f}" for i in table.index)
          + f" loader_ratio={ratio:.2f} pseudo_windows_per_s={windows_per_s:.1f} cycle_hours={hours:.1f}")


if __name__ == "__main__":
    run_main(main)
