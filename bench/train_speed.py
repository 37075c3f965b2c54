"""Training throughput on this machine: samples/s of a full training step (mel, augmentations, forward,
backward, optimiser) for a 64x128 and a 256x256 model, and of the data loader alone (cached first-5-s audio
with pseudo-label mixing, no decoding), inline and with background workers (threads, as train.py's
--loader-workers, and processes through torch's DataLoader, for comparison). A GPU step faster than the loader would wait for data.

    python bench/train_speed.py --threads 2 --workers 2
    make bench-train

Ends with: train_samples_per_s=X loader_samples_per_s=Y loader_workers_samples_per_s=Z (64x128 model).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (SAMPLE_RATE, WINDOW_SAMPLES, MelModel, MelFrontEnd, window_seconds_of,  # noqa: E402
                    MelSettings, MixWindows, TrainingSet, bce_focal_loss)
from flags import HelpFormatter, add_flag  # noqa: E402


def memmap(path, rows, rng):
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, WINDOW_SAMPLES))
    for start in range(0, rows, 256):
        array[start:start + 256] = (rng.standard_normal((min(256, rows - start), WINDOW_SAMPLES)) * 0.1)
    array.flush()
    return np.load(path, mmap_mode="r")


class StepBench:
    """train.py's own step (time shift, mel, the write-up's augmentations, forward, backward, AdamW, the
    scheduler) for one model on `device`, with AMP as train.py runs it, on a fixed random batch. variant:
    "eager" (steps.train_step), "graph" (steps.GraphedStep: replayed from a CUDA graph, train.py --cuda-graph on,
    its default for one GPU with bfloat16), "compile" (the network torch.compile'd: train.py --compile on),
    "float16" (the eager step with float16 autocast and gradient scaling: train.py's step on a GPU without
    bfloat16 in hardware, such as a T4)."""

    variants = ("eager", "graph", "compile", "float16")

    @classmethod
    def of_row(cls, row, batch, n_classes=182, device="cpu", amp=False, variant="eager"):
        """The bench of a models table's row: its image and mel, and its backbone, head, window and n_fft where the
        row gives them (the write-up's where not)."""
        given = {k: row[k] for k in ("backbone", "head", "n_fft") if row.get(k, "") not in ("", None)}
        return cls(int(row["image_height"]), int(row["image_width"]), int(row["n_mels"]), int(row["hop_length"]),
                   batch, n_classes, device, amp, variant, backbone=given.get("backbone"),
                   head=given.get("head", "gem5"), seconds=window_seconds_of(row), n_fft=int(given.get("n_fft", 2048)))

    def __init__(self, height, width, n_mels, hop, batch, n_classes=182, device="cpu", amp=False, variant="eager",
                 backbone=None, head="gem5", seconds=5, n_fft=2048):
        import steps
        import train
        if variant not in self.variants:
            raise ValueError(f"variant {variant!r} is not one of {self.variants}")
        self.train, self.device, self.batch = train, torch.device(device), batch
        torch.manual_seed(0)
        self.run = steps.step_state(MelModel(n_classes, height, width, backbone=backbone, head=head),
                                    MelFrontEnd(MelSettings(n_mels=n_mels, hop_length=hop, n_fft=n_fft)), self.device,
                                    amp,
                                    graphed=variant == "graph",
                                    amp_dtype=torch.float16 if variant == "float16" else None)
        if variant == "compile":  # train.py --compile on: the network compiled, the step around it as it is
            self.run.trained = torch.compile(self.run.trained)
        self.waves = torch.randn(batch, seconds * SAMPLE_RATE, device=self.device) * 0.1
        self.targets = (torch.rand(batch, n_classes, device=self.device) < 0.02).float()
        generator = torch.Generator(device=self.device).manual_seed(0)
        shift = int(round(train.time_shift_seconds * SAMPLE_RATE))
        self.step = steps.GraphedStep(self.run, shift, bce_focal_loss) if variant == "graph" else \
            (lambda w, t: steps.train_step(self.run, w, t, generator, shift, bce_focal_loss, self.run.amp_dtype))
        self.amp_dtype = self.run.amp_dtype
        # warm-up steps before timing: the graph's eager ones and its capture
        self.warmup_steps = self.step.warmup + 2 if variant == "graph" else 2

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def steps(self, n):
        """(seconds per step, host seconds per step): the host's time is until its last step is dispatched, the
        device's until it is done. Host time near the device's: the host is the bottleneck."""
        self.sync()
        began = time.perf_counter()
        for _ in range(n):
            self.step(self.waves, self.targets)
        host = time.perf_counter() - began
        self.sync()
        return (time.perf_counter() - began) / n, host / n

    def evaluate(self, n):
        """Seconds per batch of validation's forward pass (no gradients, AMP as in training)."""
        self.sync()
        began = time.perf_counter()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.run.amp):
            self.run.trained.eval()
            for _ in range(n):
                self.run.trained(self.run.mel(self.waves))
            self.run.trained.train()
        self.sync()
        return (time.perf_counter() - began) / n


def train_speed(height, width, n_mels, hop, batch, steps, n_classes=182, device="cpu", amp=False):
    """Samples/s of train.py's step (StepBench) on `device`, after one warm-up step."""
    bench = StepBench(height, width, n_mels, hop, batch, n_classes, device, amp)
    bench.steps(1)
    return batch / bench.steps(steps)[0]


def loader_speed(folder, batch, batches, workers=0, threads=False, n_classes=182, rows=4096):
    """Samples/s of TrainingSet's batches: inline, or built ahead by `workers` threads (train.py's loader) or
    processes (torch's DataLoader, for comparison)."""
    rng = np.random.default_rng(0)
    audio = memmap(os.path.join(folder, "train.npy"), rows, rng)
    windows = memmap(os.path.join(folder, "windows.npy"), max(1, rows // 4), rng)
    targets = (rng.random((len(audio), n_classes)) < 0.01).astype(np.float32)
    pseudo = MixWindows(windows, np.arange(len(windows)), rng.random((len(windows), n_classes)))
    dataset = TrainingSet(audio, targets, np.arange(len(audio)), pseudo, 0.35)
    if threads or workers == 0:
        batches_of = dataset.epoch(1, batch, workers=workers)
    else:
        batches_of = torch.utils.data.DataLoader(dataset.epoch_plan(1, batch), batch_size=None,
                                                 collate_fn=dataset.build, num_workers=workers, prefetch_factor=2)
    began, n = time.perf_counter(), 0
    for i, (waves, _) in enumerate(batches_of):
        n += len(waves)
        if i + 1 == batches:
            break
    return n / (time.perf_counter() - began)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    add_flag(p, "--steps", default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="loader workers to measure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    small = train_speed(64, 128, 64, 1024, 64, args.steps)
    large = train_speed(256, 256, 128, 512, 16, max(2, args.steps // 2))
    with tempfile.TemporaryDirectory() as folder:
        loader = loader_speed(folder, 64, 48)
        threads = loader_speed(folder, 64, 48, args.workers, threads=True)
        processes = loader_speed(folder, 64, 48, args.workers)
    print(f"threads={args.threads} torch={torch.__version__}")
    print(f"train step 64x128  (batch 64): {small:8.1f} samples/s")
    print(f"train step 256x256 (batch 16): {large:8.1f} samples/s")
    print(f"loader, pseudo mixing p=0.35 (batch 64): inline {loader:8.1f} samples/s "
          f"= {loader / small:.1f}x the 64x128 step")
    print(f"loader, {args.workers} worker threads (train.py --loader-workers): {threads:8.1f} samples/s "
          f"= {threads / small:.1f}x the 64x128 step; {args.workers} worker processes: {processes:8.1f} samples/s")
    print(f"a GPU step faster than {threads:.0f} samples/s would wait for this loader; each worker adds about "
          f"{threads / max(1, args.workers):.0f} samples/s here")
    print(f"train_samples_per_s={small:.1f} loader_samples_per_s={loader:.1f} "
          f"loader_workers_samples_per_s={threads:.1f}")


if __name__ == "__main__":
    main()
