"""Training throughput on this machine: samples/s of a full training step (mel, augmentations, forward,
backward, optimiser) for a 64x128 and a 256x256 model, and of the data loader alone (cached first-5-s audio
with pseudo-label mixing, no decoding). The loader must outpace the step by at least 5x.

    python bench/train_speed.py --threads 2
    make bench-train

Ends with: train_samples_per_s=X loader_samples_per_s=Y (for the 64x128 model).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (WINDOW_SAMPLES, AugmentChances, BirdNet, HelpFormatter, MelFrontEnd, MelSettings,  # noqa: E402
                    TrainingSet, augment, bce_focal_loss)


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


def train_speed(height, width, n_mels, hop, batch, steps, n_classes=182):
    torch.manual_seed(0)
    mel = MelFrontEnd(MelSettings(n_mels=n_mels, hop_length=hop))
    model = BirdNet(n_classes, height, width).to(memory_format=torch.channels_last)
    model.channels_last = True
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    waves, targets = torch.randn(batch, WINDOW_SAMPLES) * 0.1, (torch.rand(batch, n_classes) < 0.02).float()
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):  # the first step warms up
        began = time.perf_counter()
        with torch.no_grad():
            images, t = augment(mel(waves), targets, AugmentChances(), generator)
        loss = bce_focal_loss(model(images), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - began)
    return batch / np.mean(times)


def loader_speed(folder, batch, batches, n_classes=182):
    rng = np.random.default_rng(0)
    audio = memmap(os.path.join(folder, "train.npy"), 2048, rng)
    windows = memmap(os.path.join(folder, "windows.npy"), 1024, rng)
    targets = (rng.random((len(audio), n_classes)) < 0.01).astype(np.float32)
    dataset = TrainingSet(audio, targets, np.arange(len(audio)), FakePseudo(windows, n_classes, rng), 0.35)
    began, n = time.perf_counter(), 0
    for i, (waves, _) in enumerate(dataset.epoch(1, batch)):
        n += len(waves)
        if i + 1 == batches:
            break
    return n / (time.perf_counter() - began)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    small = train_speed(64, 128, 64, 1024, 64, args.steps)
    large = train_speed(256, 256, 128, 512, 16, max(2, args.steps // 2))
    with tempfile.TemporaryDirectory() as folder:
        loader = loader_speed(folder, 64, 24)
    print(f"threads={args.threads} torch={torch.__version__}")
    print(f"train step 64x128  (batch 64): {small:8.1f} samples/s")
    print(f"train step 256x256 (batch 16): {large:8.1f} samples/s")
    print(f"loader alone, pseudo mixing p=0.35 (batch 64): {loader:8.1f} samples/s "
          f"= {loader / small:.1f}x the 64x128 step")
    print(f"train_samples_per_s={small:.1f} loader_samples_per_s={loader:.1f}")


if __name__ == "__main__":
    main()
