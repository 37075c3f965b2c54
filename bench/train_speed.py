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
from common import (WINDOW_SAMPLES, AugmentChances, HelpFormatter, MelEfficientNet, MelFrontEnd,  # noqa: E402
                    MelSettings, TrainingSet, augment, bce_focal_loss)
from flags import add_flag  # noqa: E402


class FakePseudo:
    """Stands in for PseudoWindows: a float16 memmap of windows and their soft labels."""

    def __init__(self, audio, n_classes, rng):
        self.audio, self.index = audio, np.arange(len(audio))
        self.targets = rng.random((len(audio), n_classes)).astype(np.float32)

    def __len__(self):
        return len(self.index)


def memmap(path, rows, rng):
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, WINDOW_SAMPLES))
    for start in range(0, rows, 256):
        array[start:start + 256] = (rng.standard_normal((min(256, rows - start), WINDOW_SAMPLES)) * 0.1)
    array.flush()
    return np.load(path, mmap_mode="r")


def train_speed(height, width, n_mels, hop, batch, steps, n_classes=182, device="cpu", amp=False):
    """Samples/s of train.py's step (mel, augmentations, forward, backward, AdamW) on `device`, with AMP as
    train.py runs it (float16 autocast and gradient scaling on CUDA, bfloat16 autocast on CPU)."""
    device = torch.device(device)
    torch.manual_seed(0)
    mel = MelFrontEnd(MelSettings(n_mels=n_mels, hop_length=hop)).to(device)
    model = MelEfficientNet(n_classes, height, width).to(device).to(memory_format=torch.channels_last)
    model.channels_last = True
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    waves = torch.randn(batch, WINDOW_SAMPLES, device=device) * 0.1
    targets = (torch.rand(batch, n_classes, device=device) < 0.02).float()
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        with torch.no_grad():
            images, t = augment(mel(waves), targets, AugmentChances(), generator)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = bce_focal_loss(model(images), t)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - began)
    return batch / np.mean(times)


def loader_speed(folder, batch, batches, workers=0, threads=False, n_classes=182, rows=4096):
    """Samples/s of TrainingSet's batches: inline, or built ahead by `workers` threads (train.py's loader) or
    processes (torch's DataLoader, for comparison)."""
    rng = np.random.default_rng(0)
    audio = memmap(os.path.join(folder, "train.npy"), rows, rng)
    windows = memmap(os.path.join(folder, "windows.npy"), max(1, rows // 4), rng)
    targets = (rng.random((len(audio), n_classes)) < 0.01).astype(np.float32)
    dataset = TrainingSet(audio, targets, np.arange(len(audio)), FakePseudo(windows, n_classes, rng), 0.35)
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
