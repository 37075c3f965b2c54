"""Shared pieces of the BirdCLEF 2024 2nd-place recipe: audio reading, mel front end, model, losses,
augmentations, training dataset, folds and metrics.

Everything here is used by prep.py, train.py, soup.py and pseudo.py. infer.py stays self-contained: the
networks it runs are exported from the modules defined here (see `export_model`), so the mel that trained a
model is the mel that scores it.
"""
import ast
import json
import math
import os
import sys
from dataclasses import dataclass, asdict

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

SAMPLE_RATE = 32000
WINDOW_SECONDS = 5
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
BACKBONE = "tf_efficientnet_b0.ns_jft_in1k"


class UserError(Exception):
    """Bad input from the user: scripts print the message as one line and exit non-zero."""


def run_main(main):
    """Run a script's main(); a UserError becomes one line on stderr and exit status 2, no traceback."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------------------------------------
# audio


def read_audio(path, max_seconds=None, sample_rate=SAMPLE_RATE):
    """Decode an audio file (ogg, wav, flac, mp3: whatever libsndfile reads) to mono float32 at `sample_rate`.

    Only the first `max_seconds` are read when given. Raises ValueError with a short reason for an empty or
    truncated file; soundfile's own errors (corrupt data) propagate as they are.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    with sf.SoundFile(path) as f:
        native_rate = f.samplerate
        expected = f.frames
        if expected <= 0:
            raise ValueError("empty (no audio frames)")
        wanted = expected if max_seconds is None else min(expected, int(math.ceil(max_seconds * native_rate)))
        audio = f.read(wanted, dtype="float32", always_2d=True)
    if len(audio) == 0:
        raise ValueError("empty (no audio frames)")
    if len(audio) < wanted:
        raise ValueError(f"truncated (decoded {len(audio)} of {wanted} frames)")
    audio = audio.mean(axis=1)
    if native_rate != sample_rate:
        g = math.gcd(native_rate, sample_rate)
        audio = resample_poly(audio, sample_rate // g, native_rate // g).astype(np.float32)
    if max_seconds is not None:
        audio = audio[: int(max_seconds * sample_rate)]
    return audio


def first_five_seconds(audio):
    """The first 5-s window of a waveform, zero-padded at the end when the recording is shorter."""
    out = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    n = min(len(audio), WINDOW_SAMPLES)
    out[:n] = audio[:n]
    return out


def parse_label_list(text):
    """'["a", "b"]' -> ['a', 'b']; empty or NaN -> []."""
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"secondary_labels value is not a Python list literal: {text!r}")
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


# ----------------------------------------------------------------------------------------------------------
# the training cache written by prep.py


@dataclass(frozen=True)
class CachePaths:
    """File names inside a prep cache folder (the interface between prep.py and the training scripts)."""
    root: str

    @property
    def audio(self):  # (N, WINDOW_SAMPLES) float16: first 5 s of every training file
        return os.path.join(self.root, "train_audio.npy")

    @property
    def rows(self):  # filename, primary_label, secondary_labels, source, rating (row i <-> audio[i])
        return os.path.join(self.root, "train_rows.csv")

    @property
    def classes(self):  # one class per line, the submission's column order
        return os.path.join(self.root, "classes.txt")

    @property
    def unlabeled(self):  # path, duration_s, n_windows of every unlabeled soundscape
        return os.path.join(self.root, "unlabeled.csv")

    @property
    def unlabeled_audio(self):  # (M, WINDOW_SAMPLES) float16: a random subset of unlabeled 5-s windows
        return os.path.join(self.root, "unlabeled_windows.npy")

    @property
    def unlabeled_windows(self):  # path, end_second of each row of unlabeled_audio
        return os.path.join(self.root, "unlabeled_windows.csv")

    @property
    def bad_files(self):
        return os.path.join(self.root, "bad_files.csv")


def load_classes(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def target_matrix(rows, classes):
    """Multi-hot targets: 1.0 for the primary and every secondary species of each row."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for r, (primary, secondary) in enumerate(zip(rows["primary_label"], rows["secondary_labels"])):
        y[r, index[primary]] = 1.0
        for s in parse_label_list(secondary):
            if s in index:
                y[r, index[s]] = 1.0
    return y


def assign_folds(primary_labels, n_folds, seed):
    """Stratified fold of each row, reproducible from (n_folds, seed) alone.

    Rows of each label are shuffled with the seed and dealt round-robin, starting each label where the last
    one stopped so that small classes do not all land in fold 0.
    """
    labels = np.asarray(primary_labels).astype(str)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (start + np.arange(len(idx))) % n_folds
        start = (start + len(idx)) % n_folds
    return folds
