"""Score soundscapes with an exported ensemble and write a BirdCLEF submission. CPU only, self-contained:
paste this file alone into a Kaggle notebook cell, or run it as a script (needs torch >= 2.1, numpy, soundfile,
pandas; scipy only to resample; OpenVINO or ONNX Runtime when installed).

    python infer.py --threads 4                       # Kaggle: finds the attached ensemble and competition
    python infer.py --ensemble work/ensemble --audio data/demo/test_soundscapes --out submission.csv
    python infer.py --ensemble work/ensemble --audio my_recordings --backend torch --pp-weight 0 --budget-min 30
    main(["--budget-min", "60"])                      # from a later notebook cell
    python infer.py --ensemble work/ensemble --audio recorders/ --detections detections/ \
        --taxonomy data/birdclef-2026/taxonomy.csv   # field recordings: Raven tables and detections.csv

In a notebook cell (a Jupyter kernel) the kernel's own argv is ignored: the file runs with the defaults below.
Reads --ensemble (default: the one ensemble of ours under --kaggle-root, at any depth, else work/ensemble), a
folder written by `make ensemble`: manifest.json and, per model, <name>.json (mel settings,
image size, classes, value, cost), <name>.onnx (for OpenVINO / ONNX Runtime) and <name>.ts (TorchScript, for
--backend torch); nothing in it needs torch.export, so an ensemble exported under a newer torch loads here.
The mel front end is defined in this file (common.py imports it for training): one STFT per n_fft serves every
mel whose hop is a multiple of the shortest. Each soundscape is cut into 5-s windows (the last zero-padded);
row_id is <file stem>_<end second>. The ensemble is the mean of the models' sigmoid probabilities; then per
file p[t] + w * (p[t-1] + p[t+1]), divided by 1 + 2w (the write-up's post-processing with w = 0.5; the divisor keeps
values in [0, 1] and changes no ranking). Models run in order of value for cost and are dropped, with a
warning, when the projected time would pass --budget-min. Scores --audio (default: test_soundscapes of the
newest <kaggle-root>/birdclef-*). Writes --out (default submission.csv): a complete submission, always, with
the columns of the sample_submission.csv beside the audio folder; and beside it <out>.timing.json (network
seconds per soundscape of each model, for report.py).
With --detections OUT (field recordings), every audio file under --audio, recursively, is scored a minute at a
time (memory stays that of a 1-minute file, however long the file), with the same ensemble and post-processing,
into a Raven Pro selection table per file (OUT/<its path>.selections.txt) and OUT/detections.csv of them all.
"""
import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import re
import sys
import time
import warnings
from collections import Counter, namedtuple
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

SAMPLE_RATE = 32000
WINDOW_SECONDS = 5
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
EXPORT_FORMAT = 2         # <name>.json's "format": 2 = ONNX + TorchScript networks, mel settings (no .pt2)
ENSEMBLE_FORMAT = "birdclef-2nd-place-ensemble"  # manifest.json's "format": what tells our ensembles from others

# defaults: a Kaggle kernel with the competition data and the exported ensemble attached
# searched for the ensemble (our manifest.json) and the competition's audio; the variable serves tests and
# other hosts, where the file is pasted unchanged
kaggle_root = os.environ.get("BIRDCLEF_KAGGLE_ROOT", "/kaggle/input")
out_file = "submission.csv"
# time budget in minutes by the attached competition's year: Kaggle stops at 120 minutes in BirdCLEF 2024 and at
# 90 from 2025 on; 10 are left for the rest of the kernel
budget_min_by_year = {2024: 110.0}
budget_min = 80.0         # any other year, or audio that is not a competition's
pp_weight = 0.5           # neighbour smoothing weight (0 disables): the write-up's [0.5, 1, 0.5]
# post-processing of a file's rows beyond the write-up's (an ensemble's postprocessing.json, which make ensemble
# writes from PP_KERNEL, PP_BOOST and PP_TTA, sets its own; a flag wins over both)
pp_kernel = None          # an odd-length smoothing kernel over a file's windows, e.g. (0.1, 0.2, 0.4, 0.2, 0.1)
pp_boost = 0.0            # each class's rows moved toward the file's maximum of that class by this share; 0: off
pp_tta = 0.0              # the share of the windows shifted by -2.5 and +2.5 s in each row; 0: off (2x networks)
teacher_vote = 0.4        # a teacher's share of a covered class (--teacher-model): 2026's 4th place gave Perch 40 %
threads = 4               # Kaggle's CPU kernels have 4 vCPUs
fallback_seconds = 60     # rows of an unreadable file when neither its header nor other files tell its length
decode_block_seconds = 5  # audio is decoded in blocks: a decoder error mid-file keeps what came before
mel_chunk = 4             # windows per mel call: a few windows' spectra stay in cache (~3x faster than 48 at once)
network_pixels = 8 * 256 * 256  # image pixels per network call: 8 windows of 256x256 beat 48 by ~10% (cache)
block_seconds = 60        # --detections scores a minute at a time: a 10-hour file peaks as a 1-minute one
min_score = 0.5           # --detections: a window and class scored at least this is a detection


class InferError(Exception):
    """Bad input (no ensemble, a class mismatch, an old export): main prints one line and exits 2."""


def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def in_notebook():
    """True in a Jupyter kernel's cell, where sys.argv holds the kernel's own flags (-f kernel.json), not ours.
    (`%run infer.py ...` sets argv[0] to this file and keeps its arguments.)"""
    return "ipykernel" in sys.modules and "kernel" in os.path.basename(sys.argv[0] if sys.argv else "")


# ----------------------------------------------------------------------------------------------------------
# what is attached: the ensemble and the competition under the Kaggle root


def ensemble_manifest(names, sources=None):
    """manifest.json of an exported ensemble: its format (ours, versioned) and its models' names."""
    return dict(format=ENSEMBLE_FORMAT, version=EXPORT_FORMAT, models=list(names), sources=sources or [])


def is_our_manifest(path):
    """Whether a manifest.json is an ensemble of this project (other datasets ship manifest.json files too)."""
    try:
        with open(path) as f:
            manifest = json.load(f)
        return isinstance(manifest, dict) and manifest.get("format") == ENSEMBLE_FORMAT
    except (OSError, ValueError):
        return False


def find_models_dir(root=kaggle_root):
    """The folder of the one manifest.json of ours under root (Kaggle datasets and Models, at any depth; other
    manifest.json files are ignored), else work/ensemble. Several of ours: an InferError listing them."""
    found = []
    if os.path.isdir(root):
        for folder, subfolders, files in os.walk(root, followlinks=True):
            if "manifest.json" in files and is_our_manifest(os.path.join(folder, "manifest.json")):
                found.append(folder)
            subfolders[:] = [s for s in sorted(subfolders) if not s.endswith("_audio")]  # skip big audio trees
    if len(found) > 1:
        raise InferError(f"{len(found)} ensembles attached ({', '.join(sorted(found))}); pass --ensemble DIR")
    if found:
        return found[0]
    return "work/ensemble" if os.path.isfile("work/ensemble/manifest.json") else None


def competition_year(audio_dir):
    """The year of a competition's audio folder (.../birdclef-2025/test_soundscapes -> 2025), else None."""
    numbers = re.findall(r"birdclef\D*(\d{4})", os.path.basename(os.path.dirname(os.path.abspath(audio_dir))))
    return int(numbers[-1]) if numbers else None


def default_budget_min(audio_dir):
    """--budget-min when not given: by the attached competition's year (110 in 2024, 80 from 2025 on)."""
    return budget_min_by_year.get(competition_year(audio_dir), budget_min)


def find_audio_dir(root=kaggle_root):
    """test_soundscapes of the newest attached competition (birdclef-2026 before birdclef-2025), or None."""
    found = glob.glob(os.path.join(root, "birdclef*", "test_soundscapes"))
    return max(found, key=lambda folder: (competition_year(folder) or -1, folder)) if found else None


def sample_submission_columns(audio_dir, given=None):
    """(class columns or None when there is no file, path) of sample_submission.csv: given, else the one
    beside the audio folder."""
    path = given or os.path.join(os.path.dirname(os.path.abspath(audio_dir)), "sample_submission.csv")
    if not os.path.isfile(path):
        if given:
            raise InferError(f"sample submission not found: {given}")
        return None, path
    columns = list(pd.read_csv(path, nrows=0, dtype=str).columns)
    return [c for c in columns if c != "row_id"], path


# ----------------------------------------------------------------------------------------------------------
# audio


def native_blocks(path, block_seconds=None, max_seconds=None):
    """(sample rate, generator): the file decoded at its own rate, as float32 (frames, channels) blocks of
    `block_seconds` (default decode_block_seconds; the last may be shorter), up to `max_seconds` when given.

    A file damaged partway (a corrupt ogg page, a flac frame that loses sync) is used as far as it decodes, with one
    warning line: after an error a fresh decoder goes on from there in quarter seconds, and the next error ends it.
    The generator raises ValueError for a file that yields no audio at all; opening raises soundfile's own error
    when not even its header reads.
    """
    import soundfile as sf
    with sf.SoundFile(path) as f:
        rate, expected = f.samplerate, f.frames
    if expected <= 0:
        raise ValueError("empty (no audio frames)")
    wanted = expected if max_seconds is None else min(expected, int(math.ceil(max_seconds * rate)))

    def blocks():
        got, error = 0, None
        for step in (int((block_seconds or decode_block_seconds) * rate), rate // 4):  # after an error: quarters
            with sf.SoundFile(path) as f:  # a fresh decoder: one that lost sync stays lost
                if got:
                    f.seek(got)
                while got < wanted:
                    try:
                        block = f.read(min(step, wanted - got), dtype="float32", always_2d=True)
                    except Exception as err:
                        error = f"{type(err).__name__}: {err}".replace("\n", " ")
                        break
                    if len(block) == 0:
                        break
                    got += len(block)
                    yield block
            if error is None:
                break
        if got == 0:
            raise ValueError(f"no audio decodes ({error})" if error else "empty (no audio frames)")
        if got < wanted:
            warn(f"{path}: damaged, decoded {got / rate:.1f} of {wanted / rate:.1f} s"
                 + (f" ({error})" if error else "") + "; using what decodes")
    return rate, blocks()


def to_mono(block):
    return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)  # no copy for mono


def resample_ratio(rate):
    """(up, down) of resample_poly from `rate` to SAMPLE_RATE."""
    g = math.gcd(rate, SAMPLE_RATE)
    return SAMPLE_RATE // g, rate // g


def read_audio(path, max_seconds=None):
    """Decode a file (ogg, wav, flac, mp3: whatever libsndfile reads) to mono float32 at 32 kHz, whole.

    Only the first `max_seconds` are read when given. A file damaged partway is used as far as it decodes
    (native_blocks, with one warning line). Raises ValueError for a file that yields no audio at all, and
    soundfile's own error when not even its header reads.
    """
    rate, blocks = native_blocks(path, max_seconds=max_seconds)
    blocks = list(blocks)
    audio = to_mono(blocks[0] if len(blocks) == 1 else np.concatenate(blocks))
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly
        audio = resample_poly(audio, *resample_ratio(rate)).astype(np.float32)
    return audio if max_seconds is None else audio[:int(max_seconds * SAMPLE_RATE)]


def audio_in_blocks(path, block_seconds):
    """(n_windows from the header, generator of mono float32 32-kHz blocks of `block_seconds` each (a multiple of
    5), the last shorter): the file as read_audio decodes it, never whole in memory. Resampling takes 1 s of the
    neighbouring blocks on each side and cuts it off again, and each block starts on a whole second, where the
    output of resample_poly starts on a whole sample: the same values as resampling the whole file."""
    rate, blocks = native_blocks(path, block_seconds)
    size = int(block_seconds * rate)

    def regrouped():  # blocks of exactly `size` frames (after a decoding error the decoder gives quarter seconds)
        pending, held = [], 0
        for block in blocks:
            pending.append(to_mono(block))
            held += len(block)
            while held >= size:
                joined = np.concatenate(pending)
                yield joined[:size]
                pending, held = [joined[size:]], held - size
        if held:
            yield np.concatenate(pending)

    def resampled():
        from scipy.signal import resample_poly
        up, down = resample_ratio(rate)
        before = np.zeros(0, np.float32)
        source = regrouped()
        current = next(source, None)
        while current is not None:
            following = next(source, None)
            after = following[:rate] if following is not None else np.zeros(0, np.float32)
            out = resample_poly(np.concatenate([before, current, after]), up, down).astype(np.float32)
            first = len(before) * up // down
            yield out[first:first + int(math.ceil(len(current) * up / down))]
            before, current = current[-rate:], following
    return count_windows(path), (regrouped() if rate == SAMPLE_RATE else resampled())


def windows_of(audio, n_windows=None):
    """(n_windows, WINDOW_SAMPLES): consecutive 5-s windows, the last partial one zero-padded.

    n_windows defaults to as many as the audio needs; a given count pads or cuts to it.
    """
    n = n_windows or max(1, math.ceil(len(audio) / WINDOW_SAMPLES))
    padded = np.zeros(n * WINDOW_SAMPLES, dtype=np.float32)
    kept = min(len(audio), len(padded))
    padded[:kept] = audio[:kept]
    return padded.reshape(n, WINDOW_SAMPLES)


def duration_of(path):
    """Seconds of audio from a file's header; 0 when the header does not read."""
    try:
        import soundfile as sf
        info = sf.info(path)
        return max(0, info.frames) / info.samplerate if info.samplerate > 0 else 0.0
    except Exception:
        return 0.0


def count_windows(path):
    """Number of windows of a file from its header alone (the rows of an undecodable file), None if unreadable."""
    seconds = duration_of(path)
    return max(1, math.ceil(seconds / WINDOW_SECONDS - 1e-9)) if seconds > 0 else None


def smooth_neighbours(probs, weight=pp_weight):
    """(windows, classes) of one file -> (p[t] + w*(p[t-1] + p[t+1])) / (1 + 2w); a missing neighbour is 0."""
    return smooth_kernel(probs, (weight, 1.0, weight))


def smooth_kernel(probs, kernel):
    """(windows, classes) of one file -> each row the kernel's weighted sum of the rows around it (an odd-length
    kernel, centred on the row; a missing row is 0), divided by the kernel's sum: values stay in [0, 1]."""
    kernel = np.asarray(kernel, dtype=np.float64)
    half = len(kernel) // 2
    if len(probs) == 0 or not np.any(kernel[np.arange(len(kernel)) != half]):
        return probs
    padded = np.pad(probs, ((half, half), (0, 0)))
    out = sum(w * padded[k:k + len(probs)] for k, w in enumerate(kernel) if w)
    return (out / kernel.sum()).astype(probs.dtype, copy=False)


def boost_to_file_max(probs, weight):
    """(windows, classes) of one file -> each class's rows moved toward the file's maximum of that class by
    `weight`: p + w * (max - p). A species heard in one window of a file is likely in its others."""
    if weight == 0 or len(probs) == 0:
        return probs
    return probs + weight * (probs.max(axis=0, keepdims=True) - probs)


def blend_shifted(probs, shifted, weight):
    """probs (windows, classes), shifted (windows + 1, classes): the rows of the windows 2.5 s earlier (row 0:
    from -2.5 s) -> (1 - w) * p[t] + w * (q[t] + q[t + 1]) / 2, the two shifted windows that overlap window t."""
    if weight == 0 or shifted is None:
        return probs
    return (1 - weight) * probs + weight * 0.5 * (shifted[:-1] + shifted[1:])


@dataclass(frozen=True)
class PostProcessing:
    """What is done to a file's rows after the ensemble's mean: the shifted windows' share (tta), the smoothing
    kernel, the boost toward the file's maximum; in that order, with a teacher's vote after the first (combine)."""
    kernel: tuple = (pp_weight, 1.0, pp_weight)
    boost: float = pp_boost
    tta: float = pp_tta

    def check(self):
        if len(self.kernel) % 2 == 0 or any(w < 0 for w in self.kernel) or sum(self.kernel) <= 0:
            raise InferError(f"the smoothing kernel must have an odd length and weights >= 0, not "
                             f"{','.join(f'{w:g}' for w in self.kernel)}")
        for name in ("boost", "tta"):
            if not 0 <= getattr(self, name) <= 1:
                raise InferError(f"the {name} weight must be in [0, 1], not {getattr(self, name):g}")
        return self

    def describe(self):
        return (f"smoothing [{', '.join(f'{w:g}' for w in self.kernel)}], boost {self.boost:g}, "
                f"shifted windows {self.tta:g}")


def as_post_processing(pp):
    """A PostProcessing, or a number: the write-up's neighbour weight alone (0: none)."""
    return pp if isinstance(pp, PostProcessing) else PostProcessing(kernel=(pp, 1.0, pp), boost=0.0, tta=0.0)


POSTPROCESSING_FILE = "postprocessing.json"  # in an ensemble folder: its recorded post-processing


def read_post_processing(folder):
    """The post-processing recorded with an ensemble (make ensemble writes postprocessing.json), else the write-up's."""
    path = os.path.join(folder or "", POSTPROCESSING_FILE)
    if not os.path.isfile(path):
        return PostProcessing()
    with open(path) as f:
        recorded = json.load(f)
    return PostProcessing(kernel=tuple(float(w) for w in recorded["kernel"]), boost=float(recorded["boost"]),
                          tta=float(recorded["tta"])).check()




# ----------------------------------------------------------------------------------------------------------
# mel front end: the one implementation, used by training (common.py imports it) and here


def mel_filterbank(n_freqs, n_mels, f_min, f_max, sample_rate):
    """(n_freqs, n_mels) triangular filters on the HTK mel scale, peak 1, over the rfft bin frequencies."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.linspace(0, sample_rate / 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    rising = (bins[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    falling = (edges[None, 2:] - bins[:, None]) / (edges[2:] - edges[1:-1])[None, :]
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


NORMALIZATIONS = ("minmax", "standard")


@dataclass(frozen=True)
class MelSettings:
    """What decides a mel image; models with equal settings share one mel computation at inference."""
    n_mels: int = 128
    hop_length: int = 512
    n_fft: int = 2048
    f_min: float = 20.0
    f_max: float = 16000.0
    sample_rate: int = SAMPLE_RATE
    top_db: float = 80.0
    normalize: str = "minmax"   # each image scaled to [0, 1] (minmax), or to mean 0 / std 1 (standard)

    @property
    def key(self):
        return (f"mel{self.n_mels}_hop{self.hop_length}_fft{self.n_fft}_{self.f_min:g}-{self.f_max:g}Hz"
                + ("" if self.normalize == "minmax" else f"_{self.normalize}"))

    @property
    def frames(self):  # frames of one centred 5-s window
        return WINDOW_SAMPLES // self.hop_length + 1


class PowerSpectrogram(nn.Module):
    """(B, samples) waveform -> (B, n_fft // 2 + 1, frames) power |STFT|^2, centred, Hann window.

    Frame k is centred on sample k * hop_length, so the spectrogram at a hop m times longer is frames [::m] of
    this one: at inference, mels that share n_fft share one STFT (FrontEnd).
    """

    def __init__(self, n_fft, hop_length):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wave):
        spec = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                          return_complex=True)
        return spec.real ** 2 + spec.imag ** 2


class MelImage(nn.Module):
    """(B, n_fft // 2 + 1, frames) power -> (B, 1, n_mels, frames): mel filterbank -> 10*log10 -> floor at
    max - top_db -> per sample, min-max to [0, 1] (normalize "minmax") or mean 0 / std 1 ("standard").

    The filterbank is applied in bands of 16 mel filters, each only over the frequency bins its filters cover
    (a triangular filter is zero elsewhere): the same sums, about an eighth of a dense matmul's work.
    """

    band = 16

    def __init__(self, settings):
        super().__init__()
        if settings.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, not {settings.normalize!r}")
        self.top_db, self.standardize = settings.top_db, settings.normalize == "standard"
        fb = mel_filterbank(settings.n_fft // 2 + 1, settings.n_mels, settings.f_min, settings.f_max,
                            settings.sample_rate).T  # (n_mels, n_freqs)
        self.bins = []  # (first, end) frequency bin of each band
        for k, start in enumerate(range(0, len(fb), self.band)):
            rows = fb[start:start + self.band]
            used = np.flatnonzero(rows.any(axis=0))
            first, end = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
            self.bins.append((first, end))
            self.register_buffer(f"filters{k}", torch.from_numpy(rows[:, first:end].copy()), persistent=False)

    def forward(self, power):
        mel = torch.cat([torch.matmul(getattr(self, f"filters{k}"), power[:, first:end])
                         for k, (first, end) in enumerate(self.bins)], dim=1)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        top = db.amax(dim=(1, 2), keepdim=True)
        db = torch.maximum(db, top - self.top_db)
        if self.standardize:
            mean = db.mean(dim=(1, 2), keepdim=True)
            std = (db - mean).square().mean(dim=(1, 2), keepdim=True).sqrt()
            return ((db - mean) / (std + 1e-6)).unsqueeze(1)
        low = db.amin(dim=(1, 2), keepdim=True)
        return ((db - low) / (top - low + 1e-6)).unsqueeze(1)


class MelFrontEnd(nn.Module):
    """(B, samples) waveform -> (B, 1, n_mels, frames) mel power in dB, normalized per sample (MelSettings):
    PowerSpectrogram then MelImage. Call it outside autocast: it must run in float32 (fp16 power overflows,
    and its dB underflows).
    """

    def __init__(self, settings=MelSettings()):
        super().__init__()
        self.settings = settings
        self.spectrogram = PowerSpectrogram(settings.n_fft, settings.hop_length)
        self.image = MelImage(settings)

    def forward(self, wave):
        if wave.device.type == "cpu":  # a few windows at a time keep their spectra in cache (about 2x faster);
            # 8 pieces up to 64 windows, so a training step's host work does not grow with its batch
            pieces = min(len(wave), max(8, -(-len(wave) // 8)))
            return torch.cat([self.image(self.spectrogram(chunk)) for chunk in wave.tensor_split(max(1, pieces))])
        return self.image(self.spectrogram(wave))


def mel_key_of(settings, seconds=WINDOW_SECONDS):
    """What tells a mel apart at inference: its settings, and its window where that is longer than 5 s."""
    return settings.key if seconds == WINDOW_SECONDS else f"{settings.key}_{seconds}s"


def centred_windows(audio, n_rows, seconds=WINDOW_SECONDS):
    """(n_rows, seconds x SAMPLE_RATE): the window of `seconds` centred on each 5-s row of the audio (row i spans
    [5i, 5i + 5) s; the audio is zero-padded on both sides). At 5 s these are windows_of's windows."""
    if seconds == WINDOW_SECONDS:
        return windows_of(audio, n_rows)
    pad, length = (seconds - WINDOW_SECONDS) * SAMPLE_RATE // 2, seconds * SAMPLE_RATE
    padded = np.zeros((n_rows - 1) * WINDOW_SAMPLES + length, dtype=np.float32)
    kept = min(len(audio), n_rows * WINDOW_SAMPLES)
    padded[pad:pad + kept] = audio[:kept]
    return np.lib.stride_tricks.sliding_window_view(padded, length)[::WINDOW_SAMPLES][:n_rows].copy()


def rows_of_frames(logits, seconds=WINDOW_SECONDS):
    """(n_rows, classes) probabilities of a file's 5-s rows from a network's logits on the windows of `seconds`
    centred on each row: (n_rows, classes) (one value per window) or (n_rows, T, classes) (a sed head's frames).
    The frames' probabilities are laid on the file's timeline (each window's frames cover its span evenly) and
    averaged where windows overlap; each row is the max of its frames. A window's one value covers its span."""
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    if probs.ndim == 2:
        if seconds == WINDOW_SECONDS:
            return probs
        probs = probs[:, None, :]
    n_rows, frames, n_classes = probs.shape
    k = seconds // WINDOW_SECONDS
    per_row = max(2, 2 * round(frames / (2 * k)))  # even: a window of an even k starts half a row early
    grid = k * per_row
    probs = probs[:, (np.arange(grid) * frames) // grid]  # nearest frame at each slot of the window
    total = np.zeros(((n_rows + k) * per_row, n_classes), np.float64)
    count = np.zeros(len(total))
    first = k * per_row // 2 - (k - 1) * per_row // 2  # the timeline holds k / 2 rows before row 0
    for i in range(n_rows):
        at = first + i * per_row
        total[at:at + grid] += probs[i]
        count[at:at + grid] += 1
    start = k * per_row // 2
    rows = (total / np.maximum(count, 1)[:, None])[start:start + n_rows * per_row]
    return rows.reshape(n_rows, per_row, n_classes).max(axis=1).astype(np.float32)


class FrontEnd:
    """Every distinct mel of an ensemble, each STFT computed once per window length.

    Built from the models' mel settings and windows (seconds, default 5). Among mels of one window length, one
    whose hop is a multiple m of another's with the same n_fft takes frames [::m] of that power spectrogram (frame k
    is centred on sample k * hop): the same numbers, one STFT. __call__((B, samples) tensor of windows of one
    length) -> {mel_key: (B, 1, n_mels, frames) tensor} of the mels of that length; of_audio(audio, n_rows[, lengths])
    -> the same for every length (or those given), of the windows centred on each 5-s row.
    """

    def __init__(self, settings, seconds=None):
        seconds = [WINDOW_SECONDS] * len(settings) if seconds is None else [int(w) for w in seconds]
        distinct = {mel_key_of(s, w): (s, w) for s, w in zip(settings, seconds)}
        self.spectrograms, self.mels = {}, {}  # (seconds, n_fft, hop) -> module; key -> (seconds, source, stride, mel)
        for key, (s, w) in distinct.items():
            hop = min(o.hop_length for o, ow in distinct.values()
                      if ow == w and o.n_fft == s.n_fft and s.hop_length % o.hop_length == 0)
            if (w, s.n_fft, hop) not in self.spectrograms:
                self.spectrograms[(w, s.n_fft, hop)] = PowerSpectrogram(s.n_fft, hop).eval()
            self.mels[key] = (w, (w, s.n_fft, hop), s.hop_length // hop, MelImage(s).eval())
        self.window_seconds = sorted({w for w, _, _, _ in self.mels.values()}) or [WINDOW_SECONDS]

    def __call__(self, windows):
        seconds = windows.shape[1] // SAMPLE_RATE
        mels = {key: m for key, m in self.mels.items() if m[0] == seconds}
        parts = {key: [] for key in mels}
        with torch.no_grad():
            for chunk in windows.split(max(1, mel_chunk * WINDOW_SECONDS // seconds)):
                powers = {source: module(chunk) for source, module in self.spectrograms.items()
                          if source[0] == seconds}
                for key, (_, source, stride, mel) in mels.items():
                    parts[key].append(mel(powers[source][..., ::stride]))
        return {key: torch.cat(p) for key, p in parts.items()}

    def of_audio(self, audio, n_rows, lengths=None):
        out = {}
        for seconds in lengths or self.window_seconds:
            out.update(self(torch.from_numpy(centred_windows(audio, n_rows, seconds))))
        return out


# ----------------------------------------------------------------------------------------------------------
# models


class Network:
    """One exported model: run(mel (B, 1, n_mels, frames) float32 tensor) -> (B, classes) logits numpy."""

    def __init__(self, folder, spec, backend, n_threads, precision="f32"):
        self.name, self.classes = spec["name"], spec["classes"]
        self.mel_settings = MelSettings(**spec["mel_settings"])
        self.window_seconds = int(spec.get("window_seconds", WINDOW_SECONDS))  # an export of before: 5 s
        self.mel_key = mel_key_of(self.mel_settings, self.window_seconds)
        self.value, self.cost = float(spec.get("value") or 0.0), float(spec.get("cost") or 1.0)
        self.windows_per_call = max(1, network_pixels // (int(spec["image_height"]) * int(spec["image_width"])))
        if math.isnan(self.value):
            self.value = 0.0
        self.backend, self.precision = backend, "f32"   # the precision it computes in
        onnx_path = os.path.join(folder, spec["onnx"])
        if backend == "openvino":
            import openvino as ov
            core = ov.Core()
            # explicit, since OpenVINO would pick bf16 by itself on some CPUs; bf16 only where it is native
            native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if precision == "bf16" and not native_bf16:
                warn("this CPU has no native bf16; running in f32")
            float_precision = "bf16" if precision in ("bf16", "auto") and native_bf16 else "f32"
            config = {"INFERENCE_NUM_THREADS": n_threads, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": float_precision}
            # full calls run a copy compiled for their fixed batch size (6-7% faster end to end than the
            # dynamic batch, measured); the dynamic one takes a file's last, shorter call
            fixed_batch = core.read_model(onnx_path)
            shape = list(fixed_batch.input().partial_shape)
            shape[0] = self.windows_per_call
            fixed_batch.reshape({fixed_batch.input().get_any_name(): ov.PartialShape(shape)})
            requests = {full: core.compile_model(model, "CPU", config).create_infer_request()
                        for full, model in ((True, fixed_batch), (False, core.read_model(onnx_path)))}
            self.precision = float_precision
            # logits() copies the output out
            self.run = lambda mel: requests[len(mel) == self.windows_per_call].infer([mel.numpy()])[0]
        elif backend == "onnx":
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads = n_threads
            session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self.run = lambda mel: session.run(None, {name: mel.numpy()})[0]
        else:
            with warnings.catch_warnings():  # newer torch notes that TorchScript is deprecated; it loads
                warnings.simplefilter("ignore")
                module = torch.jit.load(os.path.join(folder, spec["torchscript"]), map_location="cpu").eval()

            def run(mel):
                with torch.no_grad():
                    return module(mel).numpy()
            self.run = run

    def logits(self, mel):
        """(B, classes) float32 logits (a sed head's (B, T, classes) frames), windows_per_call windows at a time."""
        parts = [self.run(part) for part in mel.split(self.windows_per_call)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def available_backends(folder, specs):
    """Installed backends that can run these models, fastest first: OpenVINO, ONNX Runtime, torch."""
    found = ["torch"]
    has_onnx = all(os.path.exists(os.path.join(folder, s["onnx"])) for s in specs)
    for module, backend in (("onnxruntime", "onnx"), ("openvino", "openvino")):
        try:
            __import__(module)
        except ImportError:
            continue
        if has_onnx:
            found.insert(0, backend)
    return found


Ensemble = namedtuple("Ensemble", "networks front_end classes backend")


def read_specs(folder):
    """manifest.json and each model's <name>.json -> [spec]; an export of an older version is an InferError."""
    manifest_path = os.path.join(folder or "", "manifest.json")
    if not folder or not os.path.isfile(manifest_path):
        raise InferError(f"no ensemble found (manifest.json) in {folder!r}; pass --ensemble DIR")
    with open(manifest_path) as f:
        manifest = json.load(f)
    specs = []
    for name in manifest["models"]:
        with open(os.path.join(folder, f"{name}.json")) as f:
            specs.append(json.load(f))
    old = [s["name"] for s in specs if s.get("format") != EXPORT_FORMAT]
    if old:
        sources = " ".join(manifest.get("sources") or ["<model dir>"])
        raise InferError(f"{folder} was exported by an older version of this project (model {', '.join(old)}); "
                         f"re-export it with this version: for each model dir, python soup.py --model-dir DIR, "
                         f"then python soup.py bundle --out {folder} {sources}")
    return specs


def load_ensemble(folder, backend, n_threads, precision="f32"):
    """manifest.json -> Ensemble(networks sorted by value for cost, their FrontEnd, classes, backend)."""
    specs = read_specs(folder)
    backends = available_backends(folder, specs)
    if backend == "auto":
        backend = backends[0]
    elif backend not in backends:
        raise InferError(f"backend {backend} is not available here (available: {', '.join(backends)})")
    classes = [str(c) for c in specs[0]["classes"]]
    if any([str(c) for c in s["classes"]] != classes for s in specs):
        raise InferError("the ensemble's models disagree on the class list")
    if backend != "openvino" and precision == "bf16":
        warn(f"--precision {precision} applies to OpenVINO only; {backend} runs in f32")
    networks = [Network(folder, s, backend, n_threads, precision) for s in specs]
    networks.sort(key=lambda n: n.value / n.cost, reverse=True)
    front_end = FrontEnd([n.mel_settings for n in networks], [n.window_seconds for n in networks])
    print(f"{len(networks)} models ({backend}, {networks[0].precision}): " + ", ".join(n.name for n in networks),
          flush=True)
    return Ensemble(networks, front_end, classes, backend)


# ----------------------------------------------------------------------------------------------------------
# the run


def decode_and_mel(path, front_end, keep_waves=False, shifted=False):
    """Decode one file and compute each distinct mel once: (n_windows, {mel_key: mel tensor}, None), or
    (n_windows from the header or None, None, error) when it cannot be decoded. A file that decodes short of its
    header gets the header's rows: the windows past the damage are zeros. keep_waves: the 5-s windows themselves
    under "waves" too (a teacher's input); shifted: the mels of the windows 2.5 s earlier under "shifted" too
    ({mel_key: mel tensor}, n_windows + 1 rows)."""
    try:
        audio = read_audio(path)
        n_windows = max(1, math.ceil(len(audio) / WINDOW_SAMPLES), count_windows(path) or 0)
        return n_windows, mels_of(front_end, audio, n_windows, keep_waves, shifted), None
    except Exception as err:
        return count_windows(path), None, f"{type(err).__name__}: {err}"


def mels_of(front_end, audio, n_rows, keep_waves=False, shifted=False, keep=None):
    """{mel_key: mels of the windows centred on each of n_rows rows of the audio} (FrontEnd.of_audio); keep_waves:
    the 5-s windows under "waves" (a teacher's input); shifted: the same for the rows 2.5 s earlier under "shifted"
    (n_rows + 1 rows); keep (first, n): the rows that count, the others context (network_probs cuts them off)."""
    mels = front_end.of_audio(audio, n_rows)
    if keep_waves:
        mels["waves"] = windows_of(audio, n_rows)[slice(keep[0], keep[0] + keep[1]) if keep else slice(None)]
    if shifted:
        mels["shifted"] = mels_of(front_end, np.concatenate([np.zeros(WINDOW_SAMPLES // 2, np.float32),
                                                             audio[:n_rows * WINDOW_SAMPLES]]), n_rows + 1,
                                  keep=keep and (keep[0], keep[1] + 1))
    if keep:
        mels["keep"] = keep
    return mels


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op threads are n inside the block, as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def drop_over_budget(active, per_model, seconds_so_far, done, remaining, elapsed, budget_s):
    """Drop the least valuable-for-cost models (from the end of `active`) while the projected end, at the
    measured seconds per file, passes budget_s. seconds_so_far: {name or "prep": seconds over `done` files}."""
    while len(active) > 1 and elapsed + remaining * (
            seconds_so_far["prep"] + sum(seconds_so_far[n.name] for n in active)) / done > budget_s:
        dropped = active.pop()
        per_model.pop(dropped.name)
        what = dropped.name if isinstance(dropped, (TeacherVote, ShiftedWindows)) else f"model {dropped.name}"
        warn(f"time budget: dropping {what} (projected end past {budget_s / 60:.0f} min)")


Predictions = namedtuple("Predictions", "probs n_windows used seconds")


class TeacherVote:
    """A teacher's vote in the blend: an ONNX file with Perch v2's signature (`inputs` [B, 160000], 5 s at 32 kHz,
    as decoded -> `label` logits) and the mapping `make teacher` wrote (<teacher>.mapping.csv: one row per class,
    its `teacher_index`, -1 where the teacher does not cover it). probs(waves) -> (B, covered classes); the blend
    gives each covered class (1 - weight) x the ensemble's + weight x the teacher's, the others keep the
    ensemble's. It counts as the least valuable member: the time budget drops it before any model."""

    name, backend, mel_key = "teacher", "onnx", "waves"

    def __init__(self, model_path, mapping_path, classes, weight, n_threads):
        if not 0 < weight <= 1:
            raise InferError(f"--teacher-vote must be in (0, 1], not {weight:g}")
        if not mapping_path or not os.path.isfile(mapping_path):
            raise InferError(f"--teacher-mapping {mapping_path} does not exist (make teacher writes "
                             f"<teacher>.mapping.csv; make kaggle puts it in the upload)")
        table = pd.read_csv(mapping_path, dtype={"class": str})
        if "teacher_index" not in table or sorted(table["class"]) != sorted(map(str, classes)):
            raise InferError(f"{mapping_path} is no teacher mapping of the ensemble's classes (class, teacher_index)")
        index = dict(zip(table["class"], table["teacher_index"].astype(int)))
        self.columns = np.array([i for i, c in enumerate(classes) if index[str(c)] >= 0], dtype=np.int64)
        self.outputs = np.array([index[str(classes[i])] for i in self.columns], dtype=np.int64)
        self.weight = weight
        if not os.path.isfile(model_path):
            raise InferError(f"--teacher-model {model_path} does not exist")
        try:
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.log_severity_level = max(1, n_threads), 3
            self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        except ImportError:
            raise InferError("the teacher runs on ONNX Runtime: pip install onnxruntime (make kaggle ships its "
                             "wheel)") from None
        except Exception as error:
            raise InferError(f"--teacher-model {model_path} is no ONNX model ONNX Runtime loads "
                             f"({(str(error).splitlines() or [type(error).__name__])[0][:160]})") from None
        names = {i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()}
        if "inputs" not in names[0] or "label" not in names[1]:
            raise InferError(f"--teacher-model {model_path} lacks Perch v2's input 'inputs' or output 'label'")

    def probs(self, waves):
        logits = self.session.run(["label"], {"inputs": np.ascontiguousarray(waves, dtype=np.float32)})[0]
        return 1.0 / (1.0 + np.exp(-np.clip(logits[:, self.outputs], -30, 30)))

    def blend(self, ensemble, teacher):
        out = ensemble.copy()
        out[:, self.columns] = (1 - self.weight) * ensemble[:, self.columns] + self.weight * teacher
        return out


def combine(preds, teacher=None, teacher_probs=None, pp=pp_weight, shifted=None):
    """One file's rows: the mean of the models' probabilities ([(windows, classes)]), blended with the mean of
    their shifted windows' ([(windows + 1, classes)], where pp's tta > 0), the teacher's vote (when given), then
    pp's smoothing and boost (pp: a PostProcessing, or the neighbour weight alone)."""
    pp = as_post_processing(pp)
    mean = blend_shifted(np.mean(preds, axis=0), np.mean(shifted, axis=0) if shifted else None, pp.tta)
    if teacher is not None:
        mean = teacher.blend(mean, teacher_probs)
    return boost_to_file_max(smooth_kernel(mean, pp.kernel), pp.boost)


class ShiftedWindows:
    """The windows shifted by 2.5 s (test-time augmentation) as a member of the run: probs(batches) -> {model name:
    (windows + 1, classes)} of each network on batches["shifted"]. The time budget drops it before anything else."""

    name, backend = "shifted windows", None

    def __init__(self, networks):
        self.networks = list(networks)

    def probs(self, batches):
        return {n.name: network_probs(n, batches["shifted"]) for n in self.networks}


def network_probs(net, batches):
    """One member's (windows, classes) probabilities of a batch: {mel_key: mels, "waves": windows} (mels_of): a
    network's rows on the file's timeline (rows_of_frames), less the context rows where the batch says which count."""
    if isinstance(net, (TeacherVote, ShiftedWindows)):
        return net.probs(batches["waves"] if isinstance(net, TeacherVote) else batches)
    rows = rows_of_frames(net.logits(batches[net.mel_key]), net.window_seconds)
    first, n = batches.get("keep") or (0, len(rows))
    return rows[first:first + n]


def predict_files(paths, networks, front_end, budget_s=None, pp=pp_weight, prefetch=2, log=True, started=None,
                  teacher=None):
    """Ensemble probabilities of each file, as Predictions:
    probs {path: (n_windows, classes) array, or None if unreadable}, n_windows {path: rows, None if unknown},
    used (names of the models kept), seconds {name: network seconds}.

    Decoding and mels run in a thread pool ahead of the networks. When `budget_s` is given and the projected
    end (counted from `started`, default now) passes it, the least valuable-for-cost models are dropped
    (their predictions discarded everywhere); past the budget the remaining files get no prediction.
    teacher (a TeacherVote): blended into the ensemble's mean, before the smoothing; dropped first. pp: a
    PostProcessing (or the neighbour weight alone); with tta > 0 the shifted windows are scored too, and the
    budget drops them before the teacher and the models.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(x, **_):
            return x
    started = time.time() if started is None else started
    pp = as_post_processing(pp)
    shifted = ShiftedWindows(networks) if pp.tta > 0 else None
    # the teacher and the shifted windows last: dropped first
    networks = list(networks) + [m for m in (teacher, shifted) if m is not None]
    active = list(networks)
    per_model = {n.name: {} for n in networks}   # name -> {path: probs}
    seconds = {n.name: 0.0 for n in networks}   # network time so far
    seconds["prep"] = 0.0
    n_windows_of, results = {}, {}
    # OpenVINO and ONNX Runtime have thread pools of their own; torch then only computes mels, one file per
    # prefetching worker, and more torch threads would contend with the networks' (~6% slower, measured)
    mel_threads = torch.get_num_threads() if any(n.backend == "torch" for n in networks) else 1
    with ThreadPoolExecutor(max(1, prefetch)) as pool, torch_threads(mel_threads):
        def decode(path):
            return pool.submit(decode_and_mel, path, front_end, teacher is not None, shifted in active)
        futures = [decode(p) for p in paths[:prefetch]]
        # in a log file (not a terminal) a redraw every 30 s, not ten a second
        for i, path in enumerate(tqdm(paths, desc="soundscapes", unit="file", disable=not log,
                                      mininterval=0.1 if sys.stderr.isatty() else 30)):
            began = time.time()
            n_windows, mel_batches, error = futures[i].result()
            futures[i] = None
            if i + prefetch < len(paths):
                futures.append(decode(paths[i + prefetch]))
            seconds["prep"] += time.time() - began
            n_windows_of[path] = n_windows
            if error:
                warn(f"{path}: unreadable ({error}); its rows get neutral values")
                continue
            with torch.no_grad():
                for net in active:
                    t = time.time()
                    per_model[net.name][path] = network_probs(net, mel_batches)
                    seconds[net.name] += time.time() - t
            if budget_s is not None:
                done, elapsed = i + 1, time.time() - started
                drop_over_budget(active, per_model, seconds, done, len(paths) - done, elapsed, budget_s)
                if elapsed > budget_s:
                    warn(f"time budget spent after {done} files; the remaining {len(paths) - done} get neutral rows")
                    for rest in paths[done:]:
                        n_windows_of[rest] = count_windows(rest)
                    break
    members = [n for n in active if n is not teacher and n is not shifted]
    extras = [m for m in (teacher, shifted) if m in active]
    if shifted not in active:
        pp = dataclasses.replace(pp, tta=0.0)
    for path in paths:
        preds = [per_model[n.name][path] for n in members if path in per_model[n.name]]
        if len(preds) < len(members) or any(path not in per_model[m.name] for m in extras):
            results[path] = None
            continue
        results[path] = combine(preds, teacher if teacher in active else None,
                                per_model[teacher.name][path] if teacher in active else None, pp,
                                [per_model[shifted.name][path][n.name] for n in members] if shifted in active
                                else None)
    seconds.pop("prep")
    return Predictions(results, n_windows_of, [n.name for n in active], seconds)


def submission_frame(paths, results, n_windows_of, classes):
    """Rows <stem>_<end second> for every window of every file. A file without predictions gets the mean
    prediction, on as many rows as its header gives, else as the most common file length here."""
    known = [r for r in results.values() if r is not None]
    neutral = np.concatenate(known).mean(0) if known else np.full(len(classes), 0.5)
    counts = [len(r) for r in known] + [n for n in n_windows_of.values() if n]
    usual = Counter(counts).most_common(1)[0][0] if counts else fallback_seconds // WINDOW_SECONDS
    row_ids, blocks = [], []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        probs = results.get(path)
        n = len(probs) if probs is not None else (n_windows_of.get(path) or usual)
        blocks.append(probs if probs is not None else np.tile(neutral, (n, 1)))
        row_ids += [f"{stem}_{(w + 1) * WINDOW_SECONDS}" for w in range(n)]
    values = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, len(classes)), np.float32)
    frame = pd.DataFrame(np.clip(values, 0, 1), columns=list(classes))
    frame.insert(0, "row_id", row_ids)
    return frame


AUDIO_EXTENSIONS = (".ogg", ".wav", ".flac", ".mp3", ".oga", ".opus")  # any case


def list_audio(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(AUDIO_EXTENSIONS))


def check_columns(classes, columns, sample_path):
    """The submission's class order: the sample submission's when it has the models' classes; else an
    InferError naming the differences (raised before any audio is read)."""
    if columns is None:
        return list(classes)
    missing, extra = sorted(set(columns) - set(classes)), sorted(set(classes) - set(columns))
    if missing or extra:
        def few(names):
            return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        raise InferError(f"{sample_path} and the ensemble's classes differ: "
                         + "; ".join(part for part in (
                             f"{len(missing)} not in the models: {few(missing)}" if missing else "",
                             f"{len(extra)} not in the sample submission: {few(extra)}" if extra else "") if part))
    return columns


# ----------------------------------------------------------------------------------------------------------
# field recordings: every file of a folder tree, a Raven selection table each and one CSV, in flat memory

RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Class", "Scientific Name", "Common Name", "Score"]
TABLE_SUFFIX = ".selections.txt"   # <file name>.selections.txt, beside where the file is in the tree
# a recorder's start time in the file name: AudioMoth's 20260401_060000.WAV, Song Meter's SMM01234_20260401_060000.wav
START_TIME = re.compile(r"(?:^|[_-])(\d{8})[_-](\d{6})(?=$|[_.-])")


def list_audio_tree(folder, skip=None):
    """Every audio file under folder, recursively (AUDIO_EXTENSIONS in any case), in sorted order; hidden folders
    and `skip` (an output folder inside it) are left out."""
    found, skip = [], skip and os.path.abspath(skip)
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(f for f in folders
                            if not f.startswith(".") and os.path.abspath(os.path.join(root, f)) != skip)
        found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(AUDIO_EXTENSIONS)]
    return found


def start_time_of(path):
    """The recording's start from its file name (YYYYMMDD_HHMMSS, as AudioMoth and Song Meter write it), else None."""
    from datetime import datetime
    match = START_TIME.search(os.path.splitext(os.path.basename(path))[0])
    if match is None:
        return None
    try:
        return datetime.strptime("".join(match.groups()), "%Y%m%d%H%M%S")
    except ValueError:  # eight digits that are no date
        return None


def class_names(path, classes):
    """{class: (scientific name, common name)} from a taxonomy file: BirdCLEF 2025/2026's taxonomy.csv
    (primary_label, scientific_name, common_name) or 2024's eBird taxonomy (SPECIES_CODE, SCI_NAME,
    PRIMARY_COM_NAME); classes it lacks get empty names."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {c.lower(): c for c in table.columns}

    def column(*names):
        return next((columns[n] for n in names if n in columns), None)
    code = column("primary_label", "species_code", "ebird_code")
    if code is None:
        raise InferError(f"{path} has no class column (primary_label or SPECIES_CODE)")
    science, common = column("scientific_name", "sci_name"), column("common_name", "primary_com_name", "com_name")
    names = {row[code]: (row[science] if science else "", row[common] if common else "") for _, row in table.iterrows()}
    return {c: names.get(c, ("", "")) for c in classes}


def score_in_blocks(path, networks, front_end, teacher=None, pp=pp_weight, block_s=None):
    """One file's rows, as predict_files scores them, from blocks (score_files_in_blocks): (rows (windows,
    classes), seconds decoded); raises for a file that does not decode."""
    _, rows, seconds = next(score_files_in_blocks([path], networks, front_end, teacher, pp, block_s))
    if rows is None:
        raise seconds
    return rows, seconds


def score_files_in_blocks(paths, networks, front_end, teacher=None, pp=pp_weight, block_s=None, decoded=None):
    """Each file's rows as predict_files scores them (the ensemble's mean, the shifted windows, the teacher's vote,
    the post-processing), from blocks of block_s seconds (default block_seconds): memory holds a block's audio and
    mels or two, whatever the files' lengths. Yields (path, rows (windows, classes), seconds decoded), or (path,
    None, the exception) for a file that does not decode. decoded(seconds) is called after each block."""
    pp = as_post_processing(pp)
    shifted = ShiftedWindows(networks) if pp.tta > 0 else None
    members = list(networks) + [m for m in (teacher, shifted) if m is not None]
    # a network of windows longer than 5 s, and the shifted windows, read audio around a block's rows: each block is
    # scored with up to `context` seconds of the audio on either side, whose rows are cut off
    context = max([n.window_seconds for n in networks if n.window_seconds > WINDOW_SECONDS] +
                  [WINDOW_SECONDS if shifted is not None else 0])

    def mels():  # every block of every file in turn; a file's end, or its error, as (path, None, seconds/error)
        for path in paths:
            seconds = 0.0
            try:
                for before, block, after in with_context(audio_in_blocks(path, block_s or block_seconds)[1],
                                                         context * SAMPLE_RATE):
                    audio = np.concatenate([before, block, after])
                    first, n = len(before) // WINDOW_SAMPLES, math.ceil(len(block) / WINDOW_SAMPLES)
                    batches = mels_of(front_end, audio, math.ceil(len(audio) / WINDOW_SAMPLES), True,
                                      shifted is not None, (first, n))
                    seconds += len(block) / SAMPLE_RATE
                    yield path, batches, len(block) / SAMPLE_RATE
            except Exception as err:
                yield path, None, err
                continue
            yield path, None, seconds
    # the next block (of this file or the next) is decoded and its mels computed while the networks score this one
    mel_threads = torch.get_num_threads() if any(n.backend == "torch" for n in networks) else 1
    per_model = {n.name: [] for n in members}
    with ThreadPoolExecutor(1) as pool, torch_threads(mel_threads):
        for path, batches, seconds in one_ahead(mels(), pool):
            if batches is not None:
                with torch.no_grad():
                    for net in members:
                        per_model[net.name].append(network_probs(net, batches))
                if decoded:
                    decoded(seconds)
                continue
            if isinstance(seconds, Exception):
                yield path, None, seconds
            else:
                preds = [np.concatenate(per_model[n.name]) for n in networks]
                voted = np.concatenate(per_model["teacher"]) if teacher is not None else None
                moved = None
                if shifted is not None:  # each block's extra last row is the next block's first
                    blocks = per_model[shifted.name]
                    moved = [np.concatenate([b[n.name][:-1] for b in blocks[:-1]] + [blocks[-1][n.name]])
                             for n in networks]
                yield path, combine(preds, teacher, voted, pp, moved), seconds
            per_model = {n.name: [] for n in members}


def with_context(blocks, samples):
    """(before, block, after) for each block: up to `samples` before it (none at the file's start: no window is
    centred there) and up to `samples` after it, read ahead from the following blocks."""
    blocks, ahead = iter(blocks), []
    before = np.zeros(0, np.float32)
    current = next(blocks, None)
    while current is not None:
        while sum(len(b) for b in ahead) < samples:
            following = next(blocks, None)
            if following is None:
                break
            ahead.append(following)
        after = np.concatenate(ahead)[:samples] if ahead and samples else np.zeros(0, np.float32)
        yield before, current, after
        if samples:
            before = np.concatenate([before, current])[-samples:]
        current = ahead.pop(0) if ahead else next(blocks, None)


def one_ahead(items, pool):
    """The items of a generator, each next one computed in `pool` while the caller works on the one before."""
    items = iter(items)
    coming = pool.submit(next, items, None)
    while True:
        item = coming.result()
        if item is None:
            return
        coming = pool.submit(next, items, None)
        yield item


def selection_table(rows, seconds, classes, names, min_score, low_hz, high_hz):
    """Raven Pro's selection table of one file: a selection per window and class scored at least min_score
    (window by window, the highest score first), its frequencies the mel range the models saw."""
    window, column = np.nonzero(rows >= min_score)
    order = np.lexsort((-rows[window, column], window))
    window, column = window[order], column[order]
    begin = window * WINDOW_SECONDS
    return pd.DataFrame({
        "Selection": np.arange(1, len(window) + 1), "View": "Spectrogram 1", "Channel": 1,
        "Begin Time (s)": begin.astype(float), "End Time (s)": np.minimum(begin + WINDOW_SECONDS, seconds).round(3),
        "Low Freq (Hz)": float(low_hz), "High Freq (Hz)": float(high_hz),
        "Class": [classes[c] for c in column], "Scientific Name": [names[classes[c]][0] for c in column],
        "Common Name": [names[classes[c]][1] for c in column],
        "Score": rows[window, column].round(4)}, columns=RAVEN_COLUMNS)


def read_selection_table(path):
    return pd.read_csv(path, sep="\t", dtype={"Class": str, "Scientific Name": str, "Common Name": str},
                       keep_default_na=False)


def detections_csv(audio, out, paths):
    """One table of the detections of every file in `paths` that has a selection table in `out`: file (relative to
    `audio`), begin and end seconds, class, names, score, and begin_time / end_time where the file name gives
    its start (YYYYMMDD_HHMMSS)."""
    from datetime import timedelta
    parts = []
    for path in paths:
        table_path = table_path_of(audio, out, path)
        if not os.path.isfile(table_path):
            continue
        table = read_selection_table(table_path)
        start = start_time_of(path)
        parts.append(pd.DataFrame({
            "file": os.path.relpath(path, audio), "begin_s": table["Begin Time (s)"], "end_s": table["End Time (s)"],
            "class": table["Class"], "scientific_name": table["Scientific Name"],
            "common_name": table["Common Name"], "score": table["Score"],
            "begin_time": [str(start + timedelta(seconds=float(t))) if start else "" for t in table["Begin Time (s)"]],
            "end_time": [str(start + timedelta(seconds=float(t))) if start else "" for t in table["End Time (s)"]]}))
    columns = ["file", "begin_s", "end_s", "class", "scientific_name", "common_name", "score", "begin_time", "end_time"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def table_path_of(audio, out, path):
    """Where a file's selection table goes: out, mirroring audio's tree, <file name>.selections.txt."""
    return os.path.join(out, os.path.relpath(path, audio) + TABLE_SUFFIX)


def write_atomically(frame, path, **options):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frame.to_csv(path + ".tmp", index=False, **options)
    os.replace(path + ".tmp", path)


def detect(args, started):
    """--detections: every audio file under --audio scored in blocks; a Raven selection table per file in
    --detections (a file whose table exists is skipped unless --overwrite) and detections.csv of them all."""
    if not args.audio or not os.path.isdir(args.audio):
        raise InferError(f"--detections needs --audio FOLDER, a folder of recordings ({args.audio!r} is none)")
    if not 0 <= args.min_score <= 1:
        raise InferError(f"--min-score must be in [0, 1], not {args.min_score:g}")
    folder = args.ensemble or find_models_dir(args.kaggle_root)
    pp = post_processing_of(args, folder)
    networks, front_end, classes, _ = load_ensemble(folder, args.backend, args.threads, args.precision)
    print(f"post-processing: {pp.describe()}", flush=True)
    teacher = TeacherVote(args.teacher_model, args.teacher_mapping, classes, args.teacher_vote, args.threads) \
        if args.teacher_model else None
    if args.taxonomy and not os.path.isfile(args.taxonomy):
        raise InferError(f"--taxonomy {args.taxonomy} does not exist")
    taxonomy = args.taxonomy or os.path.join(args.ensemble or "", "taxonomy.csv")
    names = class_names(taxonomy, classes) if os.path.isfile(taxonomy) else {c: ("", "") for c in classes}
    low = min(n.mel_settings.f_min for n in networks)
    high = max(n.mel_settings.f_max for n in networks)
    paths = list_audio_tree(args.audio, skip=args.detections)
    todo = [p for p in paths if args.overwrite or not os.path.isfile(table_path_of(args.audio, args.detections, p))]
    until = np.cumsum([duration_of(p) for p in todo])  # seconds of audio up to the end of each file
    hours = (until[-1] if len(todo) else 0.0) / 3600
    print(f"{len(paths)} audio files under {args.audio}: {len(paths) - len(todo)} have their table already "
          f"(--overwrite redoes them), {len(todo)} to score ({hours:.2f} h); detections at score >= {args.min_score:g}",
          flush=True)
    from tqdm import tqdm
    skipped = 0
    with tqdm(total=hours, unit="h", desc="audio", mininterval=0.5 if sys.stderr.isatty() else 30,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h [{elapsed}<{remaining}]{postfix}") \
            as bar:
        done = [0.0]

        def decoded(seconds):
            done[0] += seconds
            bar.update(seconds / 3600)
        scored = score_files_in_blocks(todo, networks, front_end, teacher, pp, decoded=decoded)
        for i, (path, rows, seconds) in enumerate(scored):
            bar.set_postfix_str(f"file {i + 1}/{len(todo)}")
            bar.update(max(0.0, until[i] - done[0]) / 3600)  # a file that decodes short: the bar goes on
            done[0] = max(done[0], until[i])
            if rows is None:
                warn(f"{path}: unreadable ({type(seconds).__name__}: {(str(seconds).splitlines() or [''])[0]}); "
                     f"skipped")
                skipped += 1
                continue
            table = selection_table(rows, seconds, classes, names, args.min_score, low, high)
            write_atomically(table, table_path_of(args.audio, args.detections, path), sep="\t")
    found = detections_csv(args.audio, args.detections, paths)
    write_atomically(found, os.path.join(args.detections, "detections.csv"))
    print(f"wrote {args.detections}: {len(paths) - skipped} selection tables, {len(found)} detections in "
          f"detections.csv ({skipped} unreadable files skipped), {time.time() - started:.1f} s", flush=True)
    return found


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's examples and shows every default."""


def parse_args(argv):
    # the help texts of the flags other scripts share are flags.py's, spelled out: this file stays self-contained
    p = argparse.ArgumentParser(prog="infer.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--kaggle-root", default=kaggle_root, help="where attached datasets, models and the "
                   "competition are looked for")
    p.add_argument("--ensemble", default=None, help="exported ensemble folder (make ensemble, soup.py bundle): a "
                   "manifest.json and each model's .onnx, .ts and .json")
    p.add_argument("--audio", default=None, help="folder of soundscapes to score")
    p.add_argument("--out", default=out_file, help="the file or folder this script writes (under a temporary "
                   "name, then renamed)")
    p.add_argument("--sample-submission", help="its columns give the class order (default: "
                   "sample_submission.csv beside the audio folder, if there)")
    p.add_argument("--threads", type=int, default=threads, help="CPU threads, in all")
    p.add_argument("--backend", default="auto", choices=["auto", "openvino", "onnx", "torch"],
                   help="infer.py's engine for the exported networks: auto takes the fastest installed (openvino, "
                   "then onnx, then torch = TorchScript)")
    p.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16"],
                   help="OpenVINO's float precision. auto: bf16 on CPUs that compute it natively (AVX512-BF16, "
                   "AMX), else f32; f32: exact")
    p.add_argument("--budget-min", type=float, default=None, help="time budget in minutes, counted from the "
                   f"start of main (default: by the competition's year, {budget_min_by_year[2024]:g} for BirdCLEF "
                   f"2024, else {budget_min:g})")
    p.add_argument("--pp-weight", type=float, help="neighbour smoothing weight (the write-up's "
                   "post-processing); 0 disables")
    p.add_argument("--pp-kernel", help="an odd-length smoothing kernel over a file's windows instead, e.g. "
                   "0.1,0.2,0.4,0.2,0.1 (default: the ensemble's postprocessing.json, else the write-up's "
                   f"[{pp_weight:g}, 1, {pp_weight:g}])")
    p.add_argument("--pp-boost", type=float, help="each class's rows moved toward the file's maximum of that class "
                   f"by this share (default: the ensemble's, else {pp_boost:g}: off)")
    p.add_argument("--pp-tta", type=float, help="the share of the windows shifted by -2.5 and +2.5 s in each row; "
                   f"their cost is counted by the time budget, which drops them first (default: the ensemble's, else "
                   f"{pp_tta:g}: off)")
    p.add_argument("--teacher-model", help="the teacher: an ONNX file with Perch v2's signature (make's "
                   "TEACHER_MODEL; its runtime: onnxruntime)")
    p.add_argument("--teacher-mapping", help="the teacher's mapping of our classes to its outputs "
                   "(<teacher>.mapping.csv, written by make teacher)")
    p.add_argument("--teacher-vote", type=float, default=teacher_vote, help="with --teacher-model: its share of "
                   "each class it covers in the blend (make's TEACHER_VOTE); the classes it does not cover keep the "
                   "ensemble's")
    p.add_argument("--detections", metavar="OUT", help="field recordings: score every audio file under --audio, "
                   "recursively, and write a Raven selection table per file into OUT (mirroring the tree) and "
                   "OUT/detections.csv; a file whose table exists is skipped (an interrupted run resumes)")
    p.add_argument("--min-score", type=float, default=min_score, help="with --detections: a window and class "
                   "scored at least this is a detection")
    p.add_argument("--taxonomy", help="with --detections: the competition's taxonomy.csv, for scientific and "
                   "common names (default: taxonomy.csv in the ensemble folder, if there)")
    p.add_argument("--overwrite", action="store_true", help="with --detections: score files whose table exists too")
    return p.parse_args(argv)


def post_processing_of(args, folder):
    """The post-processing of a run: the ensemble's recorded one (read_post_processing), each part a flag gives
    replaced (--pp-weight or --pp-kernel, --pp-boost, --pp-tta)."""
    pp = read_post_processing(folder)
    if args.pp_weight is not None:
        pp = dataclasses.replace(pp, kernel=(args.pp_weight, 1.0, args.pp_weight))
    if args.pp_kernel is not None:
        try:
            pp = dataclasses.replace(pp, kernel=tuple(float(w) for w in args.pp_kernel.split(",")))
        except ValueError:
            raise InferError(f"--pp-kernel must be numbers separated by commas, not {args.pp_kernel!r}") from None
    for name in ("boost", "tta"):
        if getattr(args, f"pp_{name}") is not None:
            pp = dataclasses.replace(pp, **{name: getattr(args, f"pp_{name}")})
    return pp.check()


def run(args, started):
    torch.set_num_threads(max(1, args.threads))
    if args.detections:
        return detect(args, started)
    audio = args.audio or find_audio_dir(args.kaggle_root)
    if audio is None:
        raise InferError(f"no {args.kaggle_root}/birdclef-*/test_soundscapes found; pass --audio DIR")
    models = args.ensemble or find_models_dir(args.kaggle_root)
    columns, sample_path = sample_submission_columns(audio, args.sample_submission)
    order = check_columns([str(c) for c in read_specs(models)[0]["classes"]], columns, sample_path)
    pp = post_processing_of(args, models)
    networks, front_end, classes, _ = load_ensemble(models, args.backend, args.threads, args.precision)
    print(f"post-processing: {pp.describe()}", flush=True)
    teacher = None
    if args.teacher_model:
        teacher = TeacherVote(args.teacher_model, args.teacher_mapping, classes, args.teacher_vote, args.threads)
        print(f"teacher {os.path.basename(args.teacher_model)}: covers {len(teacher.columns)} of {len(classes)} "
              f"classes, weight {args.teacher_vote:g} (dropped first if the time budget needs it)", flush=True)
    paths = list_audio(audio)
    if not paths:
        warn(f"no audio files in {audio}; writing a submission with no rows")
    budget = args.budget_min if args.budget_min is not None else default_budget_min(audio)
    print(f"time budget {budget:g} minutes", flush=True)
    predictions = predict_files(paths, networks, front_end, budget * 60, pp, started=started, teacher=teacher)
    frame = submission_frame(paths, predictions.probs, predictions.n_windows, classes)[["row_id"] + order]
    write_atomically(frame, args.out)
    scored = sum(p is not None for p in predictions.probs.values())
    with open(os.path.splitext(args.out)[0] + ".timing.json", "w") as f:  # for report.py; Kaggle ignores it
        json.dump(dict(files=len(paths), backend=networks[0].backend, seconds_per_soundscape={
            name: predictions.seconds[name] / max(1, scored) for name in predictions.used}), f, indent=1)
    print(f"wrote {args.out}: {len(frame)} rows, {len(paths)} files, models {', '.join(predictions.used)}, "
          f"{time.time() - started:.1f} s", flush=True)
    return frame


def main(argv=None):
    """Run with argv (a list of flags); None means the command line, or no flags inside a notebook kernel.
    Bad input: one line on stderr and SystemExit(2). Returns the submission frame."""
    started = time.time()
    if argv is None:
        argv = [] if in_notebook() else sys.argv[1:]
    args = parse_args(argv)
    try:
        return run(args, started)
    except InferError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
