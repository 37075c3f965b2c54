"""Read a BirdCLEF dataset folder and write the training cache; or generate the embedded demo dataset.

    python prep.py --data /kaggle/input/birdclef-2024 --out work/cache --threads 4
    python prep.py --data data/bc25 --out work/cache --extra xc_extra/extra.csv
    python prep.py demo --out data/demo --seed 0

Input layouts: BirdCLEF 2024 (train_metadata.csv, train_audio/, unlabeled_soundscapes/, sample_submission.csv)
and 2025/2026 (train.csv, taxonomy.csv, train_audio/, train_soundscapes/ used as unlabeled).

Output (the cache folder, see common.CachePaths): train_audio.npy (first 5 s of every training file, 32 kHz mono
float16, zero-padded), train_rows.csv, classes.txt, unlabeled.csv (every unlabeled soundscape: path, duration,
number of 5-s windows), unlabeled_windows.npy/.csv (a random subset of unlabeled 5-s windows, the audio that
rounds 2 and 3 mix into training samples) and bad_files.csv (files skipped, with the reason). The cache is built
under a temporary name and renamed when complete, so an interrupted run leaves no half cache.
"""
import argparse
import math
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from tqdm import tqdm

from common import (LABEL_COLUMNS, SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS, CachePaths, HelpFormatter, UserError,
                    first_five_seconds, list_audio, parse_label_list, read_audio, run_main, swap_in, windows_of)

# defaults
threads = os.cpu_count() or 2
max_unlabeled_windows = 20000   # 20k windows of float16 = 6.4 GB on disk (memory-mapped, not loaded)
seed = 42

REQUIRED_COLUMNS = ("primary_label", "filename")


def read_csv(path, what, **options):
    if not os.path.isfile(path):
        raise UserError(f"missing {what}: {path}")
    try:
        return pd.read_csv(path, **options)
    except Exception as err:  # pandas raises many kinds of parse errors
        raise UserError(f"cannot read {what} {path}: {err}")


def read_metadata(path, audio_root, source):
    """A metadata CSV -> rows with absolute audio paths and the cache's columns."""
    meta = read_csv(path, "metadata CSV", dtype={c: str for c in LABEL_COLUMNS})  # "0123" stays "0123"
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise UserError(f"{path} lacks required column(s): {', '.join(missing)}")
    rows = pd.DataFrame({
        "filename": meta["filename"].astype(str),
        "primary_label": meta["primary_label"].astype(str),
        "secondary_labels": meta["secondary_labels"].fillna("[]") if "secondary_labels" in meta else "[]",
        "source": source,
        "rating": meta["rating"] if "rating" in meta else np.nan,
    })
    rows["path"] = [f if os.path.isabs(f) else os.path.join(audio_root, f) for f in rows["filename"]]
    return rows


def find_layout(data):
    """Locate the metadata, audio and unlabeled folders of a 2024 or 2025/2026 layout dataset."""
    if not os.path.isdir(data):
        raise UserError(f"dataset folder not found: {data}")
    for meta_name, unlabeled_name in (("train_metadata.csv", "unlabeled_soundscapes"),
                                      ("train.csv", "train_soundscapes")):
        if os.path.isfile(os.path.join(data, meta_name)):
            break
    else:
        raise UserError(f"{data} has neither train_metadata.csv (2024 layout) nor train.csv (2025 layout)")
    audio_root = os.path.join(data, "train_audio")
    if not os.path.isdir(audio_root):
        raise UserError(f"missing folder: {audio_root}")
    return os.path.join(data, meta_name), audio_root, os.path.join(data, unlabeled_name)


def class_list(data, rows):
    """Columns of sample_submission.csv; else taxonomy.csv's primary_label; else the sorted labels."""
    sample = os.path.join(data, "sample_submission.csv")
    if os.path.isfile(sample):
        return [c for c in pd.read_csv(sample, nrows=0).columns if c != "row_id"]
    taxonomy = os.path.join(data, "taxonomy.csv")
    if os.path.isfile(taxonomy):
        return list(read_csv(taxonomy, "taxonomy", dtype={"primary_label": str})["primary_label"])
    return sorted(set(rows["primary_label"]))


def check_labels(rows, classes):
    """Primary labels must be classes (else stop); secondary labels outside the class list are dropped."""
    known = set(classes)
    unknown = sorted(set(rows["primary_label"]) - known)
    if unknown:
        raise UserError(f"{len(unknown)} primary label(s) are not classes of the dataset: {', '.join(unknown[:5])}")
    dropped = 0
    cleaned = []
    for text in rows["secondary_labels"]:
        labels = parse_label_list(text)
        kept = [s for s in labels if s in known]
        dropped += len(labels) - len(kept)
        cleaned.append(str(kept))
    if dropped:
        print(f"note: dropped {dropped} secondary label(s) that are not classes", file=sys.stderr)
    rows["secondary_labels"] = cleaned
    return rows


def decode_first_five_seconds(path):
    try:
        return first_five_seconds(read_audio(path, max_seconds=WINDOW_SECONDS)), None
    except Exception as err:  # corrupt / empty / truncated / unreadable: skipped and listed
        return None, f"{type(err).__name__}: {err}".replace("\n", " ")


def write_training_audio(rows, out_path, n_threads):
    """Decode the first 5 s of every row into a float16 memmap; return the good rows and the bad ones."""
    audio = np.lib.format.open_memmap(out_path + ".all", mode="w+", dtype=np.float16,
                                      shape=(len(rows), WINDOW_SAMPLES))
    good, bad = [], []
    with ThreadPoolExecutor(n_threads) as pool:
        results = pool.map(decode_first_five_seconds, rows["path"])
        for i, (wave, reason) in enumerate(tqdm(results, total=len(rows), desc="train audio", unit="file")):
            if wave is None:
                bad.append((rows["path"].iloc[i], reason))
            else:
                audio[len(good)] = wave
                good.append(i)
    audio.flush()
    del audio
    if bad:  # the good rows were written densely: drop the unused tail in place, no second array on disk
        shrink_npy_rows(out_path + ".all", len(good))
    os.replace(out_path + ".all", out_path)
    return rows.iloc[good].reset_index(drop=True), bad


def shrink_npy_rows(path, n_rows):
    """Keep the first n_rows of a C-order .npy array in place: rewrite the header's shape (padded to its old
    length, as numpy pads it) and truncate the file. No copy, so neither memory nor disk grows."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
        if fortran_order:
            raise ValueError(f"{path}: not a C-order array")
        header = repr(dict(descr=np.lib.format.dtype_to_descr(dtype), fortran_order=False,
                           shape=(n_rows,) + tuple(shape[1:])))
        prefix = 10 if version == (1, 0) else 12  # magic, version, header length field
        padded = header.ljust(offset - prefix - 1) + "\n"
        f.seek(prefix)
        f.write(padded.encode("latin1"))
        f.truncate(offset + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def soundscape_info(path):
    import soundfile as sf
    try:
        info = sf.info(path)
        if info.frames <= 0:
            return None, "empty (no audio frames)"
        duration = info.frames / info.samplerate
        return (duration, max(1, math.ceil(duration / WINDOW_SECONDS - 1e-9))), None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}".replace("\n", " ")


def index_unlabeled(folder, n_threads):
    """Every unlabeled soundscape with its duration and number of 5-s windows (the last may be partial)."""
    paths = list_audio(folder)
    records, bad = [], []
    with ThreadPoolExecutor(n_threads) as pool:
        for path, (info, reason) in zip(paths, tqdm(pool.map(soundscape_info, paths), total=len(paths),
                                                   desc="unlabeled index", unit="file")):
            if info is None:
                bad.append((path, reason))
            else:
                records.append((path, round(info[0], 3), info[1]))
    return pd.DataFrame(records, columns=["path", "duration_s", "n_windows"]), bad


def write_unlabeled_windows(unlabeled, audio_path, table_path, cap, rng, n_threads):
    """Cache the audio of a random subset of unlabeled windows (all of them when fewer than `cap`)."""
    all_windows = [(p, w) for p, n in zip(unlabeled["path"], unlabeled["n_windows"]) for w in range(n)]
    chosen = sorted(rng.choice(len(all_windows), size=min(cap, len(all_windows)), replace=False).tolist())
    by_file = {}
    for k in chosen:
        path, w = all_windows[k]
        by_file.setdefault(path, []).append(w)
    out = np.lib.format.open_memmap(audio_path, mode="w+", dtype=np.float16, shape=(len(chosen), WINDOW_SAMPLES))

    def load(item):
        path, windows = item
        try:
            return windows_of(read_audio(path), max(windows) + 1)[windows], None
        except Exception as err:
            return None, f"{type(err).__name__}: {err}".replace("\n", " ")

    table, bad, row = [], [], 0
    with ThreadPoolExecutor(n_threads) as pool:
        for (path, windows), (waves, reason) in zip(by_file.items(), tqdm(
                pool.map(load, by_file.items()), total=len(by_file), desc="unlabeled windows", unit="file")):
            if waves is None:
                bad.append((path, reason))
                continue
            out[row:row + len(windows)] = waves
            table += [(path, (w + 1) * WINDOW_SECONDS) for w in windows]
            row += len(windows)
    out.flush()
    del out
    if row < len(chosen):  # drop the rows of files that failed to decode (in place: memory stays flat)
        shrink_npy_rows(audio_path, row)
    pd.DataFrame(table, columns=["path", "end_second"]).to_csv(table_path, index=False)
    return bad


def prepare(data, out, extra=None, n_threads=threads, window_cap=max_unlabeled_windows, seed=seed):
    meta_path, audio_root, unlabeled_folder = find_layout(data)
    rows = read_metadata(meta_path, audio_root, "base")
    classes = class_list(data, rows)
    if extra:
        rows = pd.concat([rows, read_metadata(extra, os.path.dirname(os.path.abspath(extra)), "extra")],
                         ignore_index=True)
    rows = check_labels(rows, classes)

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    paths = CachePaths(tmp)
    rows, bad = write_training_audio(rows, paths.audio, n_threads)
    if len(rows) == 0:
        shutil.rmtree(tmp)
        raise UserError("no training file could be decoded (see the reasons above)")
    rows.drop(columns=["path"]).to_csv(paths.rows, index=False)
    with open(paths.classes, "w") as f:
        f.write("\n".join(classes) + "\n")
    unlabeled, bad_unlabeled = index_unlabeled(unlabeled_folder, n_threads)
    unlabeled.to_csv(paths.unlabeled, index=False)
    bad += bad_unlabeled
    bad += write_unlabeled_windows(unlabeled, paths.unlabeled_audio, paths.unlabeled_windows, window_cap,
                                   np.random.default_rng(seed), n_threads)
    pd.DataFrame(bad, columns=["path", "reason"]).to_csv(paths.bad_files, index=False)
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)

    swap_in(tmp, out)
    print(f"cache {out}: {len(rows)} training files, {len(classes)} classes, {len(unlabeled)} unlabeled "
          f"soundscapes ({unlabeled['n_windows'].sum() if len(unlabeled) else 0} windows), {len(bad)} skipped")


# ----------------------------------------------------------------------------------------------------------
# the embedded demo dataset: synthetic species, Xeno-canto-like train files, target-site soundscapes

DEMO_SPECIES = [  # name, call kind, low Hz, high Hz, note seconds, notes per phrase, note gap seconds
    ("amecho", "sweep_up", 2500, 5000, 0.12, 4, 0.08),
    ("bkwtit", "sweep_down", 2500, 5000, 0.12, 4, 0.08),      # confusable with amecho (direction)
    ("cobwar", "trill", 4000, 4300, 0.025, 24, 0.02),
    ("dunlin", "trill", 4100, 4400, 0.04, 12, 0.045),         # confusable with cobwar (rhythm)
    ("eurwre", "harmonic", 1200, 1250, 0.35, 3, 0.15),
    ("fieldf", "harmonic", 1450, 1500, 0.35, 3, 0.15),        # confusable with eurwre (pitch)
    ("grewoo", "whistle", 1800, 2600, 0.6, 2, 0.25),
    ("hoopoe", "pulse", 600, 700, 0.08, 3, 0.25),
    ("indrob", "buzz", 6000, 7500, 0.5, 1, 0.0),
    ("junbab", "sweep_up", 6500, 8500, 0.05, 8, 0.05),
    ("kingfi", "whistle", 7000, 7600, 0.3, 3, 0.1),
    ("lesrav", "vibrato", 3000, 3300, 0.8, 1, 0.0),
]


def render_phrase(rng, kind, low, high, note_s, n_notes, gap_s, sr=SAMPLE_RATE):
    """One rendition of a species' call phrase, with per-rendition jitter of pitch, timing and note count."""
    pitch = rng.uniform(0.96, 1.04)
    tempo = rng.uniform(0.9, 1.1)
    n_notes = max(1, n_notes + int(rng.integers(-1, 2)))
    notes = []
    for k in range(n_notes):
        n = max(8, int(note_s * tempo * sr))
        t = np.arange(n) / sr
        u = t / t[-1]
        if kind == "sweep_up":
            freq = low + (high - low) * u
        elif kind == "sweep_down":
            freq = high - (high - low) * u
        elif kind == "whistle":  # two-note whistle alternating low/high
            freq = np.full(n, low if k % 2 == 0 else high)
        elif kind == "vibrato":
            freq = 0.5 * (low + high) + 0.5 * (high - low) * np.sin(2 * np.pi * 9 * t)
        else:
            freq = np.full(n, rng.uniform(low, high))
        phase = 2 * np.pi * np.cumsum(freq * pitch) / sr
        if kind == "harmonic":
            tone = sum(np.sin(h * phase) / h for h in range(1, 5))
        elif kind == "buzz":
            tone = rng.standard_normal(n) * (1 + np.sin(phase)) * 0.5
            tone = np.convolve(tone, np.hanning(9), mode="same")
        elif kind == "pulse":
            tone = np.sin(phase) * np.sin(2 * np.pi * 0.5 * u) ** 2
        else:
            tone = np.sin(phase)
        envelope = np.minimum(1.0, np.minimum(u, 1 - u) * 8)
        notes.append(tone * envelope)
        notes.append(np.zeros(int(gap_s * tempo * sr)))
    phrase = np.concatenate(notes)
    if kind == "buzz":  # band-limit the noise around the species' band via a crude mix with a carrier
        carrier = np.sin(2 * np.pi * rng.uniform(low, high) * np.arange(len(phrase)) / sr)
        phrase = phrase * carrier
    return (phrase / (np.abs(phrase).max() + 1e-9)).astype(np.float32)


def coloured_noise(rng, n, exponent):
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit std."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return (noise / (noise.std() + 1e-9)).astype(np.float32)


def place(track, phrase, start, gain):
    """Add a phrase into track at sample `start` (clipped at the end); return the [start, end) placed."""
    end = min(len(track), start + len(phrase))
    if end > start:
        track[start:end] += gain * phrase[:end - start]
    return start, end


def demo_train_recording(rng, species_id, others, duration_s):
    """A Xeno-canto-like focal recording: one primary species, maybe a secondary one, light noise."""
    sr = SAMPLE_RATE
    n = int(duration_s * sr)
    # recording levels vary widely between uploads; the focal bird is far above the recording's own noise
    level = 10 ** rng.uniform(np.log10(0.03), np.log10(0.6))
    track = coloured_noise(rng, n, rng.uniform(0.0, 1.0)) * level * rng.uniform(0.01, 0.04)
    # the primary calls in the first 5 s most of the time, but not always
    late_start = duration_s > 8 and rng.random() < 0.15
    t = rng.uniform(5.5, min(duration_s - 1, 8.0)) if late_start else rng.uniform(0.0, 2.5)
    while t < duration_s - 0.3:
        phrase = render_phrase(rng, *DEMO_SPECIES[species_id][1:])
        place(track, phrase, int(t * sr), level * rng.uniform(0.6, 1.0))
        t += len(phrase) / sr + rng.uniform(0.5, 3.0)
    secondary = []
    if rng.random() < 0.25:
        other = int(rng.choice(others))
        secondary.append(DEMO_SPECIES[other][0])
        t = rng.uniform(0.0, max(0.1, duration_s - 1))
        place(track, render_phrase(rng, *DEMO_SPECIES[other][1:]), int(t * sr), level * rng.uniform(0.2, 0.6))
    return track, secondary


def reverb(rng, x, sr=SAMPLE_RATE):
    """Convolve with a random exponentially decaying noise impulse response (the site's echo)."""
    rt = rng.uniform(0.2, 0.6)
    t = np.arange(int(rt * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt)
    ir[0] = 3.0
    from scipy.signal import fftconvolve
    y = fftconvolve(x, ir / np.abs(ir).sum() * 4, mode="full")[:len(x)]
    return y.astype(np.float32)


def demo_soundscape(rng, duration_s, species_weights):
    """A target-site soundscape: loud coloured noise, insect bands, wind, rain, reverberant distant calls.

    Returns the audio and, per 5-s window, the set of species calling in it.
    """
    sr = SAMPLE_RATE
    n = int(duration_s * sr)
    t = np.arange(n) / sr
    track = coloured_noise(rng, n, rng.uniform(1.0, 2.0)) * rng.uniform(0.01, 0.04)
    for _ in range(rng.integers(1, 4)):  # insects: tonal bands pulsing at tens of Hz, in the birds' range
        f0 = rng.uniform(2500, 9000)
        pulse = (np.sin(2 * np.pi * rng.uniform(15, 60) * t) > rng.uniform(-0.5, 0.5)).astype(np.float32)
        slow = np.clip(np.sin(2 * np.pi * t / rng.uniform(8, 30) + rng.uniform(0, 6.3)) + 0.3, 0, 1)
        track += np.sin(2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 3 * t)) * pulse * slow * rng.uniform(0.005, 0.03)
    if rng.random() < 0.6:  # wind: low-frequency noise gusts
        gust = np.clip(np.sin(2 * np.pi * t / rng.uniform(3, 9) + rng.uniform(0, 6.3)), 0, 1) ** 2
        track += coloured_noise(rng, n, 2.5) * gust * rng.uniform(0.02, 0.1)
    if rng.random() < 0.4:  # rain: sparse clicks
        clicks = np.zeros(n, dtype=np.float32)
        idx = rng.integers(0, n, int(duration_s * rng.uniform(20, 80)))
        clicks[idx] = rng.uniform(-1, 1, len(idx))
        track += np.convolve(clicks, np.hanning(16), mode="same") * rng.uniform(0.1, 0.3)
    calls = np.zeros(n, dtype=np.float32)
    n_windows = int(math.ceil(duration_s / WINDOW_SECONDS))
    present = [set() for _ in range(n_windows)]
    n_species = rng.integers(1, 5)
    for s in rng.choice(len(DEMO_SPECIES), size=n_species, replace=False, p=species_weights):
        t0 = rng.uniform(0, duration_s)
        for _ in range(rng.integers(1, 6)):  # a bout of a few phrases
            if t0 > duration_s - 0.3:
                break
            phrase = render_phrase(rng, *DEMO_SPECIES[s][1:])
            start, end = place(calls, phrase, int(t0 * sr), rng.uniform(0.08, 0.5))
            for w in range(start // WINDOW_SAMPLES, (end - 1) // WINDOW_SAMPLES + 1):
                overlap = min(end, (w + 1) * WINDOW_SAMPLES) - max(start, w * WINDOW_SAMPLES)
                if overlap >= 0.2 * sr:
                    present[w].add(DEMO_SPECIES[s][0])
            t0 += len(phrase) / sr + rng.uniform(0.3, 4.0)
    track += reverb(rng, calls)
    return np.clip(track, -1, 1), present


def write_ogg(path, audio, sr=SAMPLE_RATE):
    """Write Ogg Vorbis in 1-s blocks: libsndfile's vorbis encoder can crash on one large stereo write."""
    import soundfile as sf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with sf.SoundFile(path, "w", sr, channels, format="OGG", subtype="VORBIS") as f:
        for start in range(0, len(audio), sr):
            f.write(audio[start:start + sr])


def _demo_train_file(job):
    """Render and write one train recording; its randomness depends only on (seed, species, index)."""
    from scipy.signal import resample_poly
    tmp, demo_seed, s, k = job
    rng = np.random.default_rng([demo_seed, 0, s, k])
    name = DEMO_SPECIES[s][0]
    others = [o for o in range(len(DEMO_SPECIES)) if o != s]
    duration = rng.uniform(2, 5) if rng.random() < 0.15 else float(np.clip(rng.lognormal(2.3, 0.6), 5, 60))
    audio, secondary = demo_train_recording(rng, s, others, duration)
    audio = np.clip(audio, -1, 1)
    rate = SAMPLE_RATE
    if rng.random() < 0.1:  # a few recordings at 48 kHz stereo, as real uploads are
        audio = resample_poly(audio, 3, 2).astype(np.float32)
        audio = np.stack([audio, audio * 0.8], axis=1)
        rate = 48000
    filename = f"{name}/XC{demo_seed:02d}{s:02d}{k:03d}.ogg"
    write_ogg(os.path.join(tmp, "train_audio", filename), audio, rate)
    return (name, str(secondary), "['call']", filename, round(float(rng.uniform(2.5, 5)), 1), "demo", "demo-license")


def _demo_soundscape_file(job):
    """Render and write one soundscape; returns its test-label rows."""
    tmp, demo_seed, folder, prefix, kind, k, seconds, weights = job
    rng = np.random.default_rng([demo_seed, kind, k])
    audio, present = demo_soundscape(rng, seconds, weights)
    stem = f"{prefix}{demo_seed:02d}{k:04d}"
    write_ogg(os.path.join(tmp, folder, f"{stem}.ogg"), audio)
    return [[f"{stem}_{(w + 1) * WINDOW_SECONDS}"] + [int(s[0] in species) for s in DEMO_SPECIES]
            for w, species in enumerate(present)]


def make_demo(out, demo_seed=0, per_species=30, n_unlabeled=60, n_test=60, soundscape_s=60, processes=None):
    """Write the demo dataset (BirdCLEF 2024 layout) to `out` and its test labels beside it.

    Files are rendered in parallel; each one's randomness comes from (seed, file), so the result does not
    depend on the number of processes.
    """
    from multiprocessing import get_context
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    names = [s[0] for s in DEMO_SPECIES]
    # the target site favours some species over others
    weights = np.random.default_rng([demo_seed, 1]).dirichlet(np.full(len(names), 2.0))
    train_jobs = [(tmp, demo_seed, s, k) for s in range(len(names)) for k in range(per_species)]
    soundscape_jobs = [(tmp, demo_seed, "unlabeled_soundscapes", "U", 2, k, soundscape_s, weights)
                       for k in range(n_unlabeled)]
    test_jobs = [(tmp, demo_seed, "test_soundscapes", "T", 3, k, soundscape_s, weights) for k in range(n_test)]
    for folder in ("unlabeled_soundscapes", "test_soundscapes"):
        os.makedirs(os.path.join(tmp, folder), exist_ok=True)
    with get_context("fork").Pool(processes or os.cpu_count() or 1) as pool:
        meta = list(tqdm(pool.imap(_demo_train_file, train_jobs), total=len(train_jobs), desc="demo train audio",
                         unit="file"))
        list(tqdm(pool.imap(_demo_soundscape_file, soundscape_jobs), total=len(soundscape_jobs),
                  desc="demo unlabeled soundscapes", unit="file"))
        labels = [row for rows in tqdm(pool.imap(_demo_soundscape_file, test_jobs), total=len(test_jobs),
                                       desc="demo test soundscapes", unit="file") for row in rows]
    pd.DataFrame(meta, columns=["primary_label", "secondary_labels", "type", "filename", "rating", "author",
                                "license"]).to_csv(os.path.join(tmp, "train_metadata.csv"), index=False)
    pd.DataFrame([[f"soundscape_0_{(w + 1) * 5}"] + [1.0 / len(names)] * len(names) for w in range(3)],
                 columns=["row_id"] + names).to_csv(os.path.join(tmp, "sample_submission.csv"), index=False)
    # test labels live next to the dataset, never inside it
    labels_path = out.rstrip("/") + "-test-labels.csv"
    pd.DataFrame(labels, columns=["row_id"] + names).to_csv(labels_path + ".tmp", index=False)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    os.replace(labels_path + ".tmp", labels_path)
    print(f"demo dataset {out}: {len(meta)} train files, {n_unlabeled} unlabeled and {n_test} test soundscapes; "
          f"test labels {labels_path}")


def demo_main(argv):
    parser = argparse.ArgumentParser(prog="prep.py demo", formatter_class=HelpFormatter,
                                     description="Generate the embedded demo dataset (BirdCLEF 2024 layout) and "
                                     "its test labels (<out>-test-labels.csv).")
    parser.add_argument("--out", default="data/demo", help="dataset folder to write")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the dataset is deterministic)")
    parser.add_argument("--per-species", type=int, default=30, help="train recordings per species")
    parser.add_argument("--unlabeled", type=int, default=60, help="unlabeled soundscapes")
    parser.add_argument("--test", type=int, default=60, help="test soundscapes")
    parser.add_argument("--soundscape-seconds", type=float, default=60, help="length of each soundscape")
    args = parser.parse_args(argv)
    make_demo(args.out, args.seed, args.per_species, args.unlabeled, args.test, args.soundscape_seconds)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "demo":
        return demo_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder in BirdCLEF 2024 or 2025/2026 layout")
    parser.add_argument("--out", required=True, help="cache folder to write (replaced atomically)")
    parser.add_argument("--extra", help="CSV of extra recordings (same columns; filename relative to the CSV)")
    parser.add_argument("--threads", type=int, default=threads, help="decoding threads")
    parser.add_argument("--max-unlabeled-windows", type=int, default=max_unlabeled_windows,
                        help="unlabeled 5-s windows cached for pseudo-label mixing")
    parser.add_argument("--seed", type=int, default=seed, help="seed of the unlabeled window subset")
    args = parser.parse_args()
    prepare(args.data, args.out, args.extra, args.threads, args.max_unlabeled_windows, args.seed)


if __name__ == "__main__":
    run_main(main)
