"""A GPU box in one command: for each model of the models table, training samples/s on the device (train.py's
step with AMP: time shift, mel, augmentations, forward, backward, fused AdamW, replayed from a CUDA graph on a
GPU, and beside it there the eager step; best and median of several interleaved timings after full-size warm-up,
and the step's host time beside its device time: host time near the device's means the host is the bottleneck), validation's samples/s, the loader's samples/s with the worker threads
train.py gives it on that device, and their ratio (below 1: the GPU waits for data); pseudo-labelling windows/s
on the device (pseudo.py's engine for a GPU: every model of the table, AMP, batches of 256 windows); and the
projected hours of the write-up's whole cycle at BirdCLEF 2024 size (24,459 recordings, 50 epochs over 80% of them
per model, 3 rounds, 2 pseudo-label rounds over prep's 20,000 cached windows). Random weights: speed only.

    python bench/gpu.py                                  # the GPU, models.csv (make bench-gpu)
    python bench/gpu.py --n-gpus 4                         # ... projected with the models spread over 4 GPUs
    python bench/gpu.py --with-compile --slots 2           # ... and torch.compile, 2 jobs sharing the GPU
    python bench/gpu.py --device cpu --steps 1 --repeats 1 --batches 2 --batch-size 8 --pseudo-batch-size 8  # anywhere
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
from steps import amp_dtype_of  # noqa: E402
import train  # noqa: E402
from common import WINDOW_SAMPLES, MelModel, MelSettings  # noqa: E402
from tables import read_models_table  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from errors import run_main  # noqa: E402
from devices import pick_device  # noqa: E402
from train_speed import StepBench, loader_speed  # noqa: E402
import numpy as np  # noqa: E402

# defaults: the write-up's table and recipe at BirdCLEF 2024 size
models = "models.csv"
steps = 20                # timed training steps per model and repeat (after two warm-up steps)
repeats = 3               # timings per model, interleaved: best and median
batches = 48              # timed loader batches
pseudo_batches = 8        # timed pseudo-labelling batches of 256 windows per repeat
rows_2024 = 24459         # BirdCLEF 2024's training recordings
classes_2024 = 182
cached_windows = 20000    # prep's default cap of unlabeled windows (what a pseudo-label round scores)


def loader_workers(device):
    """train.py's --loader-workers auto on this device."""
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def step_variants(device, with_compile=False):
    """The training steps to time: train.py's own on this device first (a CUDA graph on a GPU, eager on a CPU),
    then on a GPU the eager step beside it (train.py --cuda-graph off), the float16 step with gradient scaling
    (train.py's on a T4 or P100: --amp-dtype float16), and with_compile the compiled network."""
    if device.type != "cuda":
        first = ["eager"]
    elif amp_dtype_of(device)[0] == torch.bfloat16:
        first = ["graph", "eager", "float16"]
    else:  # no bfloat16 in hardware: train.py's step is the float16 one
        first = ["float16", "eager"]
    return first + (["compile"] if with_compile else [])


def measure_models(table, device, n_steps, n_batches, batch_size, repeats, variants=("eager",)):
    """{(model id, variant): figures} for each row of the table and each step variant (StepBench's: eager,
    graph, compile): train.py's step timed `repeats` times, every model and variant interleaved (each repeat
    starts one later), after full-size warm-up steps each (cuDNN's search, the graph's capture, the
    compilation); the best and median samples/s, the step's device and host milliseconds, validation's
    samples/s, the loader's."""
    workers = loader_workers(device)
    with tempfile.TemporaryDirectory() as folder:
        loader = loader_speed(folder, batch_size, n_batches, workers, threads=True,
                              rows=min(4096, batch_size * n_batches))
    benches = {}
    for i, row in table.iterrows():
        for variant in variants:
            began = time.perf_counter()
            bench = StepBench.of_row(row, batch_size, classes_2024, device, amp=True, variant=variant)
            bench.steps(bench.warmup_steps)
            bench.evaluate(1)
            benches[i, variant] = bench
            if variant != "eager":
                print(f"model {i}, {variant}: warmed up in {time.perf_counter() - began:.1f} s", flush=True)
    keys, times = list(benches), {k: [] for k in benches}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(benches[k].steps(n_steps))
    figures = {}
    for (i, variant), bench in benches.items():
        row, timed = table.loc[i], times[i, variant]
        step_s, host_s = np.median([t[0] for t in timed]), np.median([t[1] for t in timed])
        best = batch_size / min(t[0] for t in timed)
        speed, valid = batch_size / step_s, batch_size / bench.evaluate(max(1, n_steps // 2))
        figures[i, variant] = dict(speed=speed, best=best, loader=loader, valid=valid)
        print(f"model {i}, {variant} step ({int(row['image_height'])}x{int(row['image_width'])}, "
              f"{int(row['n_mels'])} mels, hop {int(row['hop_length'])}): train {best:8.1f} best / {speed:8.1f} "
              f"median samples/s, step {1000 * step_s:7.1f} ms on the device, {1000 * host_s:7.1f} ms on the host; "
              f"validation {valid:8.1f} samples/s; loader ({workers} worker threads) {loader:8.1f} samples/s, "
              f"loader/train {loader / speed:5.2f}", flush=True)
    return figures


def _slot_job(row, device, batch_size, seconds, barrier, results, slot, slots):
    """One of several processes sharing the device (make GPUS=0,0): train.py's step for `seconds` after warm-up,
    all starting together; its samples/s into results[slot]."""
    torch.backends.cudnn.benchmark = True
    if device == "cpu":  # the processes share the cores, as jobs sharing a GPU share it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // slots))
    bench = StepBench.of_row(row, batch_size, classes_2024, device, amp=True,
                             variant=step_variants(torch.device(device))[0])
    bench.steps(bench.warmup_steps)
    barrier.wait()
    began, n = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        bench.steps(5)
        n += 5
    results[slot] = n * batch_size / (time.perf_counter() - began)


def slots_speed(row, device, batch_size, slots, seconds=8.0):
    """Samples/s of `slots` training processes on one device together (the sum), each its own model: whether
    several jobs per GPU (make GPUS=0,0,...) pay."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")  # CUDA in each child, never forked
    with ctx.Manager() as manager:
        barrier, results = manager.Barrier(slots), manager.dict()
        jobs = [ctx.Process(target=_slot_job, args=(dict(row), str(device), batch_size, seconds, barrier, results, k,
                                                    slots))
                for k in range(slots)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        if len(results) < slots:
            raise RuntimeError(f"{slots - len(results)} of {slots} slot processes failed")
        return float(sum(results.values()))


def pseudo_speed(table, device, n_batches, batch=pseudo.batch_windows, repeats=3):
    """Median windows/s of pseudo.py's GPU engine (every model of the table, AMP) over `repeats` runs of
    n_batches, on float16 batches as the cache holds them, after two full-size warm-up batches."""
    soups = []
    for model_id, row in table.iterrows():
        torch.manual_seed(int(model_id))
        config = dict(mel_settings=vars(MelSettings(n_mels=int(row["n_mels"]), hop_length=int(row["hop_length"]))),
                      classes=[str(c) for c in range(classes_2024)])
        soups.append((config, MelModel(classes_2024, int(row["image_height"]), int(row["image_width"]),
                                       backbone=row.get("backbone") or None, head=row.get("head") or "gem5")))
    engine = pseudo.SoupEngine(soups, device)
    waves = (torch.randn(batch, WINDOW_SAMPLES) * 0.1).half()
    engine(waves)
    engine(waves)
    speeds = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(n_batches):
            engine(waves)
        speeds.append(n_batches * len(waves) / (time.perf_counter() - began))
    return float(np.median(speeds))


def projected_hours(table, figures, windows_per_s, n_gpus):
    """Hours of the write-up's cycle on this device: 3 rounds of every model (50 epochs: training over 80% of
    the rows at the slower of the step and the loader, validation over the other 20%), 2 pseudo-label rounds;
    with n_gpus, a round's models spread over them longest first (make GPUS=...)."""
    def model_hours(f):
        return train.epochs * rows_2024 * (0.8 / min(f["speed"], f["loader"]) + 0.2 / f["valid"]) / 3600
    round_models = sorted((model_hours(figures[i]) for i in table.index), reverse=True)
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
    add_flag(p, "--repeats", default=repeats)
    p.add_argument("--n-gpus", type=int, default=1, help="GPUs the projection spreads a round's models over")
    p.add_argument("--with-compile", action="store_true", help="also time each model's step as train.py --compile "
                   "on --cuda-graph off runs it (the network torch.compile'd), interleaved with the others; the "
                   "projection keeps train.py's default step (a CUDA graph on a GPU)")
    p.add_argument("--slots", type=int, default=1, help="above 1: also measure this many training processes "
                   "sharing the device, each model in turn, against one (make GPUS=0,0,...)")
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py sets it
    table = read_models_table(args.models)
    print(f"device {describe(device)}, torch {torch.__version__}, {os.cpu_count()} CPU cores, {args.models}, "
          f"batch {args.batch_size}", flush=True)
    variants = step_variants(device, args.with_compile)
    measured = measure_models(table, device, args.steps, args.batches, args.batch_size, args.repeats, variants)
    figures = {i: f for (i, variant), f in measured.items() if variant == variants[0]}  # train.py's step
    for variant in variants[1:]:
        print(f"{variants[0]} step against {variant}, median: " + ", ".join(
            f"model {i} x{measured[i, variants[0]]['speed'] / measured[i, variant]['speed']:.2f}" for i in table.index))
    for i, row in table.iterrows() if args.slots > 1 else ():
        one, several = (slots_speed(row, device, args.batch_size, k) for k in (1, args.slots))
        print(f"model {i}, {args.slots} processes on one device: {several:.1f} samples/s together against "
              f"{one:.1f} for one (x{several / one:.2f})", flush=True)
    windows_per_s = pseudo_speed(table, device, args.pseudo_batches, args.pseudo_batch_size, args.repeats)
    print(f"pseudo-labelling, {len(table)} models: {windows_per_s:.1f} windows/s", flush=True)
    hours, model_hours, pseudo_hours = projected_hours(table, figures, windows_per_s, args.n_gpus)
    print(f"projected, the write-up's cycle at BirdCLEF 2024 size on {args.n_gpus} x {describe(device)}: {hours:.1f} h "
          f"(training {model_hours:.1f} h per round in all, one pseudo-label round {pseudo_hours:.2f} h; prep, "
          f"soups and exports run on the CPU: make bench-scale)")
    ratio = min(f["loader"] / f["speed"] for f in figures.values())
    print(f"gpu device={describe(device)} train_samples_per_s="
          + "/".join(f"{figures[i]['speed']:.1f}" for i in table.index)
          + f" loader_ratio={ratio:.2f} pseudo_windows_per_s={windows_per_s:.1f} cycle_hours={hours:.1f}")


if __name__ == "__main__":
    run_main(main)
