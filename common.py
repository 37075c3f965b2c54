"""What training is made of: the dataset (prep's cache, folds, a model's split, the training samples with
pseudo-label mixing), the model (networks.py, re-exported here) and the losses.

    from common import build_model, load_split, TrainingSet
    model = build_model(config)                       # (B, 1, n_mels, frames) mel -> (B, classes) logits

infer.py stays self-contained: it holds the audio reader and the mel front end, which this file imports from it
(and re-exports for the training scripts), so the mel that trained a model is the mel that scores it. Files,
metrics, devices, weights, the networks, the export and the tables on disk live in small modules of their own
(files.py, metrics.py, devices.py, weights.py, networks.py, export.py, tables.py).
"""
import os
import sys

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

# one decoder, one mel front end and one set of audio constants for training and inference:
# infer.py must stay self-contained, so it holds them and training imports them
from infer import (SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS, EXPORT_FORMAT, MelFrontEnd,  # noqa: F401
                   MelImage, MelSettings, NORMALIZATIONS, PowerSpectrogram, list_audio, mel_filterbank, read_audio,
                   windows_of)
from errors import UserError
from tables import HEADS, CachePaths, window_seconds_of, load_classes, parse_label_list, read_rows, read_site_labels, split_labels
from threads import ordered_map
from networks import (AveragePool, GeM, MelModel, SEDHead, build_model, check_backbone,  # noqa: F401
                      feature_channels, sed_logits)
from weights import BACKBONE  # noqa: F401


# ----------------------------------------------------------------------------------------------------------
# audio


def first_five_seconds(audio):
    """The first 5-s window of a waveform, zero-padded at the end when the recording is shorter."""
    return windows_of(audio, 1)[0]


# ----------------------------------------------------------------------------------------------------------
# labels and folds of the training cache written by prep.py


def target_matrix(rows, classes):
    """Multi-hot targets: 1.0 for the primary and every secondary species of each row."""
    return labels_matrix([[primary] + parse_label_list(secondary)
                          for primary, secondary in zip(rows["primary_label"], rows["secondary_labels"])], classes)


def assign_folds(primary_labels, n_folds, seed):
    """Stratified fold of each row, reproducible from (n_folds, seed) alone; -1 (never validation) for the only
    row of a label, so that every class trains in every model.

    Rows of each label are shuffled with the seed and dealt round-robin, starting each label where the last
    one stopped so that small classes do not all land in fold 0. Dealt so, a label with 2 or more rows keeps
    at least one outside any single fold.
    """
    labels = np.asarray(primary_labels).astype(str)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (start + np.arange(len(idx))) % n_folds if len(idx) > 1 else -1
        start = (start + len(idx)) % n_folds
    return folds


# ----------------------------------------------------------------------------------------------------------
# a model's split of the cache, and its predictions over it (train.py validates with them, soup.py scores the soup)


def predict(model, mel, waves, device, batch=64, amp=False, rows=None):
    """Sigmoid probabilities of model over the (N, samples) waveforms `waves` (an array or the cache's memmap),
    or over its `rows` only, read a batch at a time (validation never copies its whole set)."""
    model.eval()
    out = []
    rows = np.arange(len(waves)) if rows is None else np.asarray(rows)
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            x = torch.as_tensor(np.asarray(waves[rows[start:start + batch]], dtype=np.float32)).to(device)
            images = mel(x)  # float32 outside autocast: fp16 power overflows (as in training)
            with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                                enabled=amp):  # CPU autocast computes in bfloat16
                out.append(torch.sigmoid(model(images).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.n_classes), np.float32)


class RowView:
    """An (N, samples) array read by rows, as a memmap is (an array of rows, a slice, or one row), through
    read(rows array) -> (len(rows), samples); shape and dtype set by the subclass."""

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows)
        return self.read(rows[None])[0] if rows.ndim == 0 else self.read(rows)


class StackedRows(RowView):
    """Two (N, samples) arrays read as one, rows of `first` then rows of `second` (the training recordings' first
    5 s and the site's labelled windows, both float16 memmaps): indexed by an array of rows, it reads each part
    from its own array; nothing is copied until then."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.shape = (len(first) + len(second),) + tuple(first.shape[1:])
        self.dtype = first.dtype

    def read(self, rows):
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        below = rows < len(self.first)
        out[below] = self.first[rows[below]]
        out[~below] = self.second[rows[~below] - len(self.first)]
        return out


def site_repeats(n_recordings, n_windows, share):
    """How many times each labelled site window is dealt in an epoch so that they make about `share` of its
    samples (at least once: a labelled window always trains)."""
    return max(1, int(round(share * n_recordings / max(1, n_windows) / (1 - share))))


def labels_matrix(label_lists, classes):
    """Multi-hot targets of lists of labels (labels that are not classes are left out)."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(label_lists), len(classes)), dtype=np.float32)
    for r, labels in enumerate(label_lists):
        y[r, [index[label] for label in labels if label in index]] = 1.0
    return y


class Spans(RowView):
    """Spans of `length` samples of a float16 (N, S) cache array (a memmap) as rows: span j starts at sample
    starts[j] of the array read flat, so a span longer than what is left of a row goes on into the next rows (the
    unlabeled cache's consecutive windows of one file). Indexed by an array of span numbers it reads those spans;
    nothing is copied before."""

    def __init__(self, array, starts, length, valid=None):
        self.array, self.flat = array, array.reshape(-1)
        self.starts, self.length = np.asarray(starts, np.int64), int(length)
        # samples of each span read from the array; the rest are zeros (a clip of a run shorter than the window)
        self.valid = np.full(len(self.starts), self.length) if valid is None else np.asarray(valid, np.int64)
        self.shape, self.dtype = (len(self.starts), self.length), array.dtype

    def read(self, rows):
        out = np.zeros((len(rows), self.length), dtype=self.dtype)
        for i, (start, valid) in enumerate(zip(self.starts[rows], self.valid[rows])):
            out[i, :valid] = self.flat[start:start + valid]
        return out


def openings(audio, seconds, path="the cache"):
    """The first `seconds` of each row of prep's (N, S) training audio: the array itself where S is that long, else
    Spans; a cache of shorter openings is a UserError (prep caches the models table's longest window)."""
    samples = int(seconds * SAMPLE_RATE)
    if audio.shape[1] == samples:
        return audio
    if audio.shape[1] < samples:
        raise UserError(f"{path} holds {audio.shape[1] / SAMPLE_RATE:g}-s openings; a {seconds}-s model needs "
                        f"{seconds} s: make prep again with the table (make does, the table's longest window is its "
                        f"setting; prep.py --window-seconds {seconds})")
    return Spans(audio, np.arange(len(audio), dtype=np.int64) * audio.shape[1], samples)


class SiteClips:
    """The site's labelled training windows as samples of a W-s model. prep caches each window with (k - 1) windows
    of context on each side (k: the table's longest window over 5 s; (K, (2k - 1) x 5 s) site_audio). A 5-s model
    reads each window itself; a W-s model reads W-s clips that hold it, one per offset in 2.5-s steps (entries), with
    the target the labels of the file's labelled windows that lie at least half inside the clip.

    audio: the entries' audio (rows); window: the labelled window (site row) of each entry; targets: (entries,
    classes); dealt(repeats, rng): the entries of an epoch's stacked site rows (5 s: each window once, to deal
    `repeats` times; W > 5: each window `repeats` times, each at an offset drawn once)."""

    def __init__(self, site_audio, site, classes, seconds):
        width = site_audio.shape[1] // WINDOW_SAMPLES
        cached, self.k = (width + 1) // 2, seconds // WINDOW_SECONDS
        if self.k > cached:
            raise UserError(f"the cache's site windows hold {cached * WINDOW_SECONDS} s around each; a {seconds}-s "
                            f"model needs {seconds}: make prep again with the table")
        self.offsets = 2 * self.k - 1   # clip starts 0, 2.5, ... (k - 1) x 5 s before the window's start
        self.window = np.repeat(np.arange(len(site)), self.offsets)
        half = np.tile(np.arange(self.offsets), len(site))
        starts = self.window * site_audio.shape[1] + (cached - 1) * WINDOW_SAMPLES - half * (WINDOW_SAMPLES // 2)
        self.source = site_audio
        self.audio = site_audio if width == 1 else Spans(site_audio, starts, self.k * WINDOW_SAMPLES)
        labels = [split_labels(t) for t in site["labels"]]
        if self.k == 1:
            self.targets = labels_matrix(labels, classes)
            return
        ends = site["end_second"].to_numpy(dtype=float)
        clip_start = ends[self.window] - WINDOW_SECONDS - half * WINDOW_SECONDS / 2
        by_file = site.groupby("path").indices
        merged = []
        for entry, row in enumerate(self.window):
            others = by_file[site["path"].iloc[row]]
            overlap = np.minimum(ends[others], clip_start[entry] + seconds) - \
                np.maximum(ends[others] - WINDOW_SECONDS, clip_start[entry])
            merged.append([label for o in others[overlap >= WINDOW_SECONDS / 2] for label in labels[o]])
        self.targets = labels_matrix(merged, classes)

    def dealt(self, repeats, rng):
        if self.k == 1:
            return np.arange(len(self.window))
        n_windows = len(self.window) // self.offsets
        return np.concatenate([np.arange(n_windows) * self.offsets + rng.integers(self.offsets, size=n_windows)
                               for _ in range(repeats)])

    def rows(self, entries):
        """The audio of these entries as rows: the cache's array itself where they are all of its rows in order."""
        if self.audio is self.source and np.array_equal(entries, np.arange(len(self.source))):
            return self.source
        if isinstance(self.audio, Spans):
            return Spans(self.source, self.audio.starts[entries], self.audio.length)
        return Spans(self.source, np.asarray(entries) * self.source.shape[1], self.source.shape[1])


def load_split(cache_dir, config, max_train_files=None, site_share=0.0, site_mix_chance=0.0):
    """Training rows, validation rows (the model's fold of the competition data; none for fold 'all'), audio
    memmap, targets. A class's only recording always trains (assign_folds puts it in no fold). Where the cache
    holds the site's labelled training windows they train too, never in a fold's validation, in two ways that
    may be combined: site_share > 0 puts them after the recordings in `audio` and `targets`, each dealt
    site_repeats times, to make about that share of an epoch's samples; site_mix_chance > 0 returns them as
    `site`, windows that each sample is mixed with at that chance (as pseudo-labelled windows are)."""
    paths = CachePaths(cache_dir)
    for f in (paths.audio, paths.rows, paths.classes):
        if not os.path.isfile(f):
            raise UserError(f"file not found: {f} (run make prep first)")
    for name, value in (("site share", site_share), ("site mix chance", site_mix_chance)):
        if not 0 <= value < 1:
            raise UserError(f"the {name} is a fraction from 0 up to 1, not {value:g}")
    rows = read_rows(paths.rows)
    classes = load_classes(paths.classes)
    audio = np.load(paths.audio, mmap_mode="r")
    targets = target_matrix(rows, classes)
    if config["dataset"] == "bc24+" and not rows["source"].eq("extra").any():
        # the write-up's model 5 added Xeno-canto files of the competition's species; without them it is the
        # competition data alone, so the write-up's whole table runs on what a competitor downloads
        print(f"note: dataset bc24+ without extra recordings ({paths.rows} has none): training on the "
              f"competition's; add yours with make prep PREP_ARGS=\"--extra FILE\"", file=sys.stderr, flush=True)
    usable = np.flatnonzero(rows["source"].eq("base") | (config["dataset"] == "bc24+"))
    if config["fold"] == "all":
        valid = np.zeros(0, dtype=np.int64)
    else:
        folds = np.full(len(rows), -1)
        folds[usable] = assign_folds(rows["primary_label"].values[usable], int(config["n_folds"]),
                                     int(config["seed"]))
        valid = np.flatnonzero((folds == int(config["fold"])) & rows["source"].eq("base").values)
    train = np.setdiff1d(usable, valid)
    if max_train_files:
        train = np.random.default_rng(int(config["seed"])).permutation(train)[:max_train_files]
    seconds = window_seconds_of(config)
    audio = openings(audio, seconds, paths.audio)
    site = read_site_labels(paths.site_labels)
    site = site[site["split"] == "train"].reset_index(drop=True)
    repeats, site_windows, site_rows = 0, None, np.zeros(0, np.int64)
    if (site_share > 0 or site_mix_chance > 0) and len(site) and os.path.isfile(paths.site_audio):
        site_clips = SiteClips(np.load(paths.site_audio, mmap_mode="r"), site, classes, seconds)
        if site_mix_chance > 0:
            site_windows = MixWindows(site_clips.audio, np.arange(len(site_clips.window)), site_clips.targets,
                                      site_clips.window)
        if site_share > 0:
            first = len(audio)
            repeats = site_repeats(len(train), len(site), site_share)
            # each labelled window dealt `repeats` times, each time in a clip at an offset drawn once (W > 5 s)
            dealt = site_clips.dealt(repeats, np.random.default_rng([int(config["seed"]), 5]))
            audio = StackedRows(audio, site_clips.rows(dealt))
            targets = np.concatenate([targets, site_clips.targets[dealt]])
            site_rows = site_clips.window[dealt]
            dealt_times = repeats if seconds == WINDOW_SECONDS else 1  # W > 5 s: dealt already holds the repeats
            train = np.concatenate([train, np.tile(first + np.arange(len(dealt)), dealt_times)])
    return dict(rows=rows, classes=classes, audio=audio, targets=targets, train=np.sort(train), valid=valid,
                site_windows=len(site) if repeats or site_windows else 0, site_repeats=repeats, site=site_windows,
                site_mix_chance=site_mix_chance if site_windows else 0.0, site_rows=site_rows)


def split_summary(data, config):
    """One line: classes, those without validation positives, training and validation rows."""
    no_positives = int((data["targets"][data["valid"]].sum(0) == 0).sum())
    untrained = int((data["targets"][data["train"]].sum(0) == 0).sum())
    alone = (f"the site's {data['site_windows']} labelled windows among them, each {data['site_repeats']}x"
             if data.get("site_repeats") else "")
    mixed = (f"{'' if alone else 'and '}the site's {data['site_windows']} labelled windows{' also' if alone else ''}"
             f" mixed into {100 * data['site_mix_chance']:g} % of the samples" if data.get("site") is not None else "")
    site = f" ({'; '.join(part for part in (alone, mixed) if part)})" if alone or mixed else ""
    return (f"model {config['id']} fold {config['fold']}: {len(data['classes'])} classes ({no_positives} without "
            f"validation positives, {untrained} without training rows), {len(data['train'])} training rows{site}, "
            f"{len(data['valid'])} validation rows")


# ----------------------------------------------------------------------------------------------------------
# model


def mel_settings_of(config):
    """The MelSettings of a train.py config: n_mels and hop from the models table, the rest from the recipe."""
    extra = {k: type(getattr(MelSettings(), k))(config[k]) for k in ("n_fft", "f_min", "f_max", "normalize")
             if config.get(k) is not None}
    return MelSettings(n_mels=int(config["n_mels"]), hop_length=int(config["hop_length"]), **extra)


def per_output(logits, targets):
    """(B, K, classes) logits of K outputs (the sed head's two) take the (B, classes) targets each."""
    return targets.unsqueeze(1).expand_as(logits) if logits.dim() == 3 and targets.dim() == 2 else targets


def bce_loss(logits, targets):
    """BCE-with-logits on soft targets in [0, 1] (the mean over the outputs of a (B, K, classes) logits tensor)."""
    return F.binary_cross_entropy_with_logits(logits.float(), per_output(logits, targets))


def bce_focal_loss(logits, targets, gamma=2.0):
    """Mean of BCE-with-logits and focal loss (gamma 2) on soft targets in [0, 1] (the mean over the outputs of a
    (B, K, classes) logits tensor)."""
    logits, targets = logits.float(), per_output(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * targets + (1 - p) * (1 - targets)
    focal = bce * (1 - p_true) ** gamma
    return 0.5 * (bce.mean() + focal.mean())


LOSSES = {"bce-focal": bce_focal_loss, "bce": bce_loss}


def distillation_loss(projected, teacher_embedding):
    """Mean of 1 - cosine similarity between the CNN's projected features and the teacher's embedding."""
    return (1 - F.cosine_similarity(projected.float(), teacher_embedding.float(), dim=1, eps=1e-6)).mean()


# ----------------------------------------------------------------------------------------------------------
# training data: cached first-5-s waveforms, optionally mixed with pseudo-labelled soundscape windows


def mix_pseudo(wave, target, window, pseudo_target, gain_wave, gain_window):
    """The write-up's pseudo-label mixing: gain_wave * wave + gain_window * window, target = max(target, pseudo)."""
    return gain_wave * wave + gain_window * window, np.maximum(target, pseudo_target)


class MixWindows:
    """Windows that training samples are mixed with, and their targets: audio (M, samples) array (a memmap, or
    Spans: W-s clips), index (rows of audio that take part), targets (len(index), n_classes) float32, and
    source_rows (the row of the cache's table of windows each stands for, the first of a clip: its teacher
    embedding's; default index)."""

    def __init__(self, audio, index, targets, source_rows=None):
        self.audio, self.index, self.targets = audio, np.asarray(index), np.asarray(targets, np.float32)
        self.source_rows = self.index if source_rows is None else np.asarray(source_rows)
        self.embeddings = None  # with distillation: (len(index), D) the teacher's embeddings of the windows

    def __len__(self):
        return len(self.index)


class PseudoWindows(MixWindows):
    """Cached unlabeled 5-s windows (prep.py) joined with one round's pseudo labels (pseudo.py), raised to `power`.

    audio: (M, WINDOW_SAMPLES) float16 memmap; targets: (M, n_classes) float32. A model of W > 5 s mixes in W-s
    clips instead: every run of W / 5 consecutive cached windows of one file that are all labelled (prep caches
    unlabeled windows in such runs for the table's longest window), its target the max of their labels; a shorter
    run (a short soundscape's) is one clip, zero-padded.
    """

    def __init__(self, cache_dir, pseudo_path, classes, power=1.0, seconds=WINDOW_SECONDS):
        paths = CachePaths(cache_dir)
        table = pd.read_csv(paths.unlabeled_rows)
        labels = np.load(pseudo_path, allow_pickle=False)
        if list(labels["classes"]) != list(classes):
            raise UserError(f"{pseudo_path}: pseudo-label classes differ from the cache's class list")
        row_of = {(p, int(e)): i for i, (p, e) in enumerate(zip(labels["paths"], labels["end_seconds"]))}
        rows = [row_of.get((p, int(e)), -1) for p, e in zip(table["path"], table["end_second"])]
        keep = np.flatnonzero(np.asarray(rows) >= 0)
        if len(keep) == 0:
            raise UserError(f"{pseudo_path} labels none of the cached unlabeled windows")
        # index: rows of the audio cache that have a pseudo label
        probs = labels["probs"][np.asarray(rows)[keep]]
        if power != 1:  # sharpened (power above 1: the confident windows count more)
            probs = np.power(np.clip(probs, 0, 1), power).astype(probs.dtype)
        audio = np.load(paths.unlabeled_audio, mmap_mode="r")
        k = seconds // WINDOW_SECONDS
        if k == 1:
            return super().__init__(audio, keep, probs)
        labelled = np.full(len(table), -1)
        labelled[keep] = np.arange(len(keep))
        path_code = pd.factorize(table["path"])[0]
        ends = table["end_second"].to_numpy(dtype=np.int64)
        goes_on = np.zeros(len(table), dtype=bool)  # row i + 1 is the next window of row i's file, labelled too
        goes_on[:-1] = (path_code[1:] == path_code[:-1]) & (ends[1:] == ends[:-1] + WINDOW_SECONDS) & \
            (labelled[1:] >= 0)
        length, reach = (labelled >= 0).astype(np.int64), labelled >= 0  # windows of the run from row i, up to k
        for j in range(1, k):
            reach = reach & np.r_[goes_on[j - 1:], np.zeros(j - 1, dtype=bool)]
            length += reach
        run_start = (labelled >= 0) & ~np.r_[False, goes_on[:-1]]
        # a clip of k windows from each row that has them; a run shorter than k (a short soundscape) is one clip,
        # zero-padded as inference pads a short file
        starts = np.flatnonzero((length == k) | (run_start & (length < k)))
        clip_probs = np.max([np.where((length[starts] > j)[:, None], probs[labelled[np.minimum(starts + j,
                                                                                               len(table) - 1)]], 0)
                             for j in range(k)], axis=0)
        super().__init__(Spans(audio, starts * WINDOW_SAMPLES, k * WINDOW_SAMPLES, length[starts] * WINDOW_SAMPLES),
                         np.arange(len(starts)),
                         clip_probs, source_rows=starts)


def n_batches(n_rows, batch_size):
    """Global batches in an epoch of n_rows: the full ones, and a partial last one of 2 rows or more (BatchNorm
    trains on 2 at least); the same for any number of processes."""
    full, rest = divmod(n_rows, batch_size)
    return max(1, full + (rest >= 2))


class TrainingSet:
    """Batches of (waveform, target) from the cache. Row i: first 5 s of recording i, its multi-hot target.

    With `pseudo` given, each sample is mixed with a random pseudo-labelled window with chance
    `pseudo_mix_chance`, each part scaled by 10**uniform(*amp_exp_range) (the write-up's ampExpMin, ampExpMax); with
    `site` (MixWindows of the site's labelled windows), then with one of those with chance `site_mix_chance`,
    alike. Randomness comes from (seed, epoch, batch), so an epoch is the same after a resume.

    With `embeddings` (a teacher's, one row per row of `audio`; the mixed-in windows carry theirs), a batch's
    targets are the labels followed by the sample's target embedding: a mixed sample's is the sum of its parts'
    embeddings with the mix's gains (mixup then mixes them as it mixes the labels).
    """

    def __init__(self, audio, targets, rows, pseudo=None, pseudo_mix_chance=0.0, amp_exp_range=(-0.5, 0.1),
                 seed=0, site=None, site_mix_chance=0.0, embeddings=None):
        self.audio, self.targets, self.rows, self.embeddings = audio, targets, np.asarray(rows), embeddings
        self.pseudo, self.pseudo_mix_chance, self.amp_exp_range, self.seed = pseudo, pseudo_mix_chance, \
            amp_exp_range, seed
        self.site, self.site_mix_chance = site, site_mix_chance

    def mixes(self):
        """[(windows, chance)]: what samples are mixed with, in order: pseudo-labelled windows, site windows."""
        return [(w, c) for w, c in ((self.pseudo, self.pseudo_mix_chance), (self.site, self.site_mix_chance))
                if w is not None and len(w) and c > 0]

    def __len__(self):
        return len(self.rows)

    def batch(self, rows, rng):
        order = np.argsort(rows)  # sorted reads from the memmap, then back to the batch's order
        waves = np.empty((len(rows), self.audio.shape[1]), dtype=np.float32)
        waves[order] = self.audio[np.asarray(rows)[order]]
        targets = self.targets[rows].copy()
        embeddings = None if self.embeddings is None else np.asarray(self.embeddings[rows], np.float32)
        lo, hi = self.amp_exp_range
        for windows, chance in self.mixes():
            for i in np.flatnonzero(rng.random(len(rows)) < chance):
                j = rng.integers(len(windows))
                gains = 10.0 ** rng.uniform(lo, hi, size=2)
                waves[i], targets[i] = mix_pseudo(waves[i], targets[i],
                                                  windows.audio[windows.index[j]].astype(np.float32),
                                                  windows.targets[j], gains[0], gains[1])
                if embeddings is not None:
                    embeddings[i] = gains[0] * embeddings[i] + gains[1] * windows.embeddings[j]
        if embeddings is not None:
            targets = np.concatenate([targets, embeddings], axis=1)
        return torch.from_numpy(waves), torch.from_numpy(targets)

    def epoch_plan(self, epoch, batch_size, rank=0, world_size=1):
        """[(rows, seed)] of this rank's batches in an epoch. batch_size is the global batch: under torchrun each
        of the world_size ranks takes its share of every global batch, so N processes take the steps of one
        with the same samples. A last partial batch trains too (n_batches); under torchrun, one too short to give
        each process 2 rows is topped up from the epoch's first rows, as torch's DistributedSampler pads."""
        order = np.random.default_rng((self.seed, epoch)).permutation(self.rows)
        share = batch_size // world_size
        plan = []
        for b in range(n_batches(len(order), batch_size)):
            rows = order[b * batch_size:(b + 1) * batch_size]
            if len(rows) < 2 * world_size:
                rows = np.concatenate([rows, order[:2 * world_size - len(rows)]])
            plan.append((rows[rank::world_size][:share], (self.seed, epoch, b, rank)))
        return plan

    def build(self, plan, pin=False):
        """One planned batch: (waves, targets) tensors, in pinned memory when asked (copies to a GPU overlap)."""
        rows, seed = plan
        waves, targets = self.batch(rows, np.random.default_rng(seed))
        return (waves.pin_memory(), targets.pin_memory()) if pin else (waves, targets)

    def epoch(self, epoch, batch_size, rank=0, world_size=1, workers=0, pin=False):
        """Yield this rank's batches of an epoch, in order. workers > 0 builds them ahead on that many threads
        (faster than worker processes here, bench/train_speed.py, and safe in a process that has OpenVINO or ONNX
        Runtime threads, where fork is not); each batch's randomness comes from its own seed, so an epoch is the
        same whatever the number of workers, and after a resume."""
        plans = self.epoch_plan(epoch, batch_size, rank, world_size)
        if workers <= 0:
            for plan in plans:
                yield self.build(plan, pin)
            return
        yield from ordered_map(lambda plan: self.build(plan, pin), plans, workers, ahead=2 * workers)
