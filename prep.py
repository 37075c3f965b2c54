"""Read a BirdCLEF dataset folder and write the training cache (demo_data.py generates the demo dataset).

    python prep.py --data /kaggle/input/birdclef-2024 --out work/cache --threads 4
    python prep.py --data data/bc25 --out work/cache --extra xc_extra/extra.csv

Input layouts: BirdCLEF 2024 (train_metadata.csv, train_audio/, unlabeled_soundscapes/, sample_submission.csv)
and 2025/2026 (train.csv, taxonomy.csv, train_audio/, train_soundscapes/ used as unlabeled).

Output (the cache folder, see tables.CachePaths): train_audio.npy (first 5 s of every training file, 32 kHz mono
float16, zero-padded; --window-seconds W: the first W s), train_rows.csv, classes.txt, unlabeled.csv (every
unlabeled soundscape: path, duration, number of 5-s windows), unlabeled_windows.npy/.csv (a random subset of unlabeled 5-s windows, the audio that
rounds 2 and 3 mix into training samples) and bad_files.csv (files skipped, with the reason). The cache is built
under a temporary name and renamed when complete, so an interrupted run leaves no half cache.

Spoken openings (sound archives' recordings, such as 2025's CSA, begin with an announcement): speech.py's
detector (Silero VAD, installed by make) listens to the training files' openings. --speech auto looks at the
files of the sound archives' collections (where the metadata has a collection column: CSA, and any collection
flagged far more often than Xeno-canto's), --speech on at every file. A file that opens with an announcement (2.5 s
of speech at least) gets its window from where the speech ends (the first 5 s of the animal), one that is speech
throughout is left out (bad_files.csv), and speech.csv lists them with the second the speech ends, to listen to a
few. A class whose files are flagged far more often than the rest keeps its first 5 s: the detector hears its
call, not a voice (a line names it).

The site's labelled soundscapes (BirdCLEF+ 2026's train_soundscapes_labels.csv, in any layout's dataset folder):
read as Kaggle writes them (rows written twice merged, ";"-separated labels, HH:MM:SS windows; only listed windows
are labelled), split by file into held-out files (--site-holdout of them, scored after every round by site_score.py)
and training files, whose labelled windows are cached (site_labels.csv, site_windows.npy) and trained on by every
round. Neither is ever pseudo-labelled: the held-out files' windows and the labelled windows stay out of the
unlabeled window cache.
"""
import argparse
import math
import os
import re
import shutil
import sys

import numpy as np
import pandas as pd

from common import SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS, list_audio, read_audio, windows_of
from tables import WINDOWS, LABEL_COLUMNS, CachePaths, longest_window, parse_label_list, read_models_table, split_labels
from flags import HelpFormatter, add_flag
from progress import progress
from errors import UserError, run_main
from files import NpyRowWriter, keep_npy_rows, npy_header, read_npy_rows, swap_in, write_npy_rows
from threads import ordered_map
import disk
import speech

# defaults
threads = os.cpu_count() or 2
max_unlabeled_windows = 20000   # 20k windows of float16 = 6.4 GB on disk (memory-mapped, not loaded)
GB_PER_10K_WINDOWS = 10000 * WINDOW_SAMPLES * 2 / 1e9  # 3.2
seed = 42
site_holdout = 0.25             # share of the labelled soundscape files held out to score each round on the site
SITE_LABELS_FILE = "train_soundscapes_labels.csv"

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
    if "collection" in meta:  # XC, iNat, CSA (2025 on): which files a sound archive's announcement may open
        rows["collection"] = meta["collection"]
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


def describe(err):
    """One line naming an exception: its type and message (decoder messages can span lines)."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")


def decode_opening(path, seconds=WINDOW_SECONDS):
    """The first `seconds` of a file (zero-padded), or (None, reason)."""
    try:
        return opening(read_audio(path, max_seconds=seconds), seconds), None
    except Exception as err:  # corrupt / empty / truncated / unreadable: skipped and listed
        return None, describe(err)


def opening(audio, seconds=WINDOW_SECONDS):
    """The first `seconds` of a waveform, zero-padded at the end when it is shorter (5 s: first_five_seconds)."""
    return windows_of(audio[:seconds * SAMPLE_RATE], seconds // WINDOW_SECONDS).reshape(-1)


def after_opening_speech(detector, batch, scan_seconds=speech.scan_seconds, seconds=WINDOW_SECONDS):
    """batch: [(path, first 5 s or more)]. A file whose first 5 s hold speech is read again, 15 s of it first and up to
    scan_seconds where the speech goes on, for the speech that opens it; an announcement (speech of at least
    speech.min_announcement_seconds) gives the 5 s (or `seconds`) from where it ends. Returns [(window after the
    speech or None, speech end seconds or None)]: end None for a file with no announcement, window None for one that is speech
    throughout (under speech.min_left_seconds after it, or speech to the end of what was read)."""
    if not batch:  # the last batch of a count that the batch size divides
        return []
    probs = detector.probabilities(np.stack([wave[:WINDOW_SAMPLES] for _, wave in batch]))
    out = []
    for (path, wave), p in zip(batch, probs):
        if speech.opening_speech_end(p) is None:
            out.append((None, None))
            continue
        audio = read_audio(path, max_seconds=scan_seconds)
        later = read_audio(path, max_seconds=scan_seconds + seconds) if seconds > WINDOW_SECONDS else audio
        for look in (3 * WINDOW_SECONDS, scan_seconds):  # most announcements end well inside 15 s: look there first
            end = speech.opening_speech_end(detector.probabilities(audio[None, :int(look * SAMPLE_RATE)])[0],
                                            min_seconds=speech.min_announcement_seconds)
            if end is None or end < min(look, len(audio) / SAMPLE_RATE) - speech.bridge_seconds:
                break
        if end is None:  # speech too short for an announcement (a call), or a burst at the 5-s look's edge
            out.append((None, None))
            continue
        left = len(audio) / SAMPLE_RATE - end
        out.append((None if left < speech.min_left_seconds else opening(later[int(end * SAMPLE_RATE):], seconds),
                    end))
    return out


def write_training_audio(rows, out_path, n_threads, detector=None, seconds=WINDOW_SECONDS):
    """Decode the first 5 s (or `seconds`) of every row into a float16 .npy; return the good rows, the bad ones and,
    with a speech detector, the files whose opening is an announcement: a DataFrame of row (in the good rows),
    speech_end_seconds and after_row, the row of out_path + ".after" that holds the 5 s after the speech (-1: speech
    throughout). cut_spoken_openings applies what is decided about them.

    Rows are written in order as they decode; a file that fails leaves no gap, and the unused tail is cut off
    in place at the end: no second array on disk, no array in memory."""
    audio = NpyRowWriter(out_path + ".all", len(rows), (seconds * SAMPLE_RATE,))
    after = NpyRowWriter(out_path + ".after", len(rows), (seconds * SAMPLE_RATE,)) if detector else None
    good, bad, spoken, pending = [], [], [], []

    def flush():
        if not pending:  # a count of files that the batch size divides, or none readable
            return
        waves = after_opening_speech(detector, [(rows["path"].iloc[i], w) for i, w in pending],
                                     seconds=seconds) if detector \
            else [(None, None)] * len(pending)
        for (i, wave), (after_speech, end) in zip(pending, waves):
            if end is not None:
                spoken.append((len(good), end, after.written if after_speech is not None else -1))
                if after_speech is not None:
                    after.write(after_speech[None])
            audio.write(wave[None])
            good.append(i)
        pending.clear()

    results = ordered_map(lambda path: decode_opening(path, seconds), rows["path"], n_threads)
    for i, (wave, reason) in enumerate(progress(results, total=len(rows), desc="train audio", unit="file")):
        if wave is None:
            bad.append((rows["path"].iloc[i], reason))
        else:
            pending.append((i, wave))
        if len(pending) == speech.BATCH:
            flush()
    flush()
    audio.close()
    os.replace(out_path + ".all", out_path)
    if after:
        after.close()
    return (rows.iloc[good].reset_index(drop=True), bad,
            pd.DataFrame(spoken, columns=["row", "speech_end_seconds", "after_row"]))


def spoken_openings_to_cut(rows, spoken, choice):
    """Which announcements (write_training_audio's `spoken`) have the window moved past them: those of the files
    looked at (--speech on: every file; auto: the sound archives' collections, speech.ARCHIVES and any collection
    flagged far more often than Xeno-canto's), less those of a class flagged far above the rest of the files
    looked at (the detector hears that animal: its files keep their first 5 s). Returns a bool per row of `spoken`,
    and prints a line for each choice made."""
    flagged = np.zeros(len(rows), dtype=bool)
    flagged[spoken["row"].to_numpy(dtype=int)] = True
    looked = np.ones(len(rows), dtype=bool)
    if choice == "auto":
        collection = rows["collection"].fillna("").astype(str).to_numpy()
        reference = "XC" if (collection == "XC").any() else None
        archives = sorted({c for c in speech.ARCHIVES if (collection == c).any()}
                          | set(speech.far_above(collection, flagged, reference)))
        looked = np.isin(collection, archives)
        print(f"speech: the {looked.sum()} files of the sound archives' collections ({', '.join(archives) or 'none'})"
              f" are looked at, the other {len(rows) - looked.sum()} keep their first 5 s (--speech on: every file)")
    labels = rows["primary_label"].astype(str).to_numpy()
    voice_like = speech.far_above(labels[looked], flagged[looked])
    for label, (k, n, share) in voice_like.items():
        print(f"speech: class {label} keeps its first 5 s: {k} of its {n} files flagged, against {share:.1%} of "
              f"the rest: the detector hears its call, not a voice")
    rows_cut = looked & ~np.isin(labels, list(voice_like))
    return rows_cut[spoken["row"].to_numpy(dtype=int)]


def cut_spoken_openings(audio_path, spoken):
    """The windows of the announcements to cut (`spoken`: row, after_row) become the 5 s after the speech (from
    audio_path + ".after", removed after); a file that is speech throughout loses its row. Returns a bool per row
    of audio_path: kept."""
    after_path = audio_path + ".after"
    with open(audio_path, "rb") as f:
        keep = np.ones(npy_header(f)[0][0], dtype=bool)
    for row, after_row in zip(spoken["row"], spoken["after_row"]):
        if after_row < 0:
            keep[row] = False
        else:
            write_npy_rows(audio_path, int(row), read_npy_rows(after_path, int(after_row), int(after_row) + 1))
    if os.path.exists(after_path):
        os.remove(after_path)
    keep_npy_rows(audio_path, keep)
    return keep


def speech_detector(choice, rows):
    """--speech: on (silero-vad must be installed), off, or auto: on where silero-vad is installed and the
    metadata has a collection to say which files are a sound archive's (else a note says why it is off)."""
    if choice == "off":
        return None
    if choice == "auto" and "collection" not in rows:
        print("speech: not looked for: the metadata has no collection column to say which files are a sound "
              "archive's (--speech on looks at every file)")
        return None
    try:
        return speech.SpeechDetector()
    except ImportError:
        if choice == "on":
            raise UserError("--speech on needs silero-vad: pip install -r requirements-speech.txt (or --speech off)")
        print("note: speech in the recordings' openings is not looked for: silero-vad is not installed "
              "(pip install -r requirements-speech.txt)", file=sys.stderr)
        return None


def soundscape_info(path):
    import soundfile as sf
    try:
        info = sf.info(path)
        if info.frames <= 0:
            return None, "empty (no audio frames)"
        duration = info.frames / info.samplerate
        return (duration, max(1, math.ceil(duration / WINDOW_SECONDS - 1e-9))), None
    except Exception as err:
        return None, describe(err)


def index_unlabeled(folder, n_threads):
    """Every unlabeled soundscape with its duration and number of 5-s windows (the last may be partial)."""
    paths = list_audio(folder)
    records, bad = [], []
    for (info, reason), path in zip(progress(ordered_map(soundscape_info, paths, n_threads), total=len(paths),
                                             desc="unlabeled index", unit="file"), paths):
        if info is None:
            bad.append((path, reason))
        else:
            records.append((path, round(info[0], 3), info[1]))
    return pd.DataFrame(records, columns=["path", "duration_s", "n_windows"]), bad


def read_windows(item):
    """(path, [window index, ...]) -> ((waves, the indices decoded), None), or (None, reason). The file is decoded
    only as far as its last window (and 1 s more, so that resampling sees no edge there)."""
    path, windows = item
    try:
        needed = (max(windows) + 1) * WINDOW_SECONDS
        audio = read_audio(path, max_seconds=needed + 1)
        kept = [w for w in windows if w * WINDOW_SAMPLES < len(audio)]  # a damaged file: what decoded
        return (windows_of(audio, max(windows) + 1)[kept], kept), None
    except Exception as err:
        return None, describe(err)


def write_unlabeled_windows(unlabeled, audio_path, table_path, cap, rng, n_threads, labelled=None, run=1):
    """Cache the audio of a random subset of unlabeled windows (all of them when fewer than `cap`), leaving out
    the `labelled` ones ({path: {window index, ...}, or None for every window of the file}: the site's labelled
    windows are never pseudo-labelled). run > 1 (a table with windows of run x 5 s): they are drawn in runs of
    that many consecutive windows of a file (windows run x j to run x j + run - 1), which W-s models mix in whole.

    Memory holds the chosen windows' indices, never a list of every window; each file is decoded only as far
    as its last chosen window.
    """
    labelled = labelled or {}
    windows = unlabeled["n_windows"].to_numpy(dtype=np.int64)
    counts = -(-windows // run)  # runs of each file (windows at run 1); a file's last run may be shorter
    starts = np.concatenate([[0], np.cumsum(counts)])  # run k of the whole set is in file i: starts[i] <= k
    skipped = sorted({int(starts[i]) + w // run for i, path in enumerate(unlabeled["path"]) if path in labelled
                      for w in (range(windows[i]) if labelled[path] is None else labelled[path])
                      if w < windows[i]})
    total, cap = int(starts[-1]), cap // run
    if skipped:  # draw enough to leave the labelled ones out and still fill the cap
        drawn = rng.choice(total, size=min(cap + len(skipped), total), replace=False)
        chosen = np.sort(drawn[~np.isin(drawn, skipped)][:cap])
        total -= len(skipped)
    else:
        chosen = np.sort(rng.choice(total, size=min(cap, total), replace=False)) if total else np.zeros(0, np.int64)
    files = np.searchsorted(starts, chosen, side="right") - 1
    by_file = {}
    for k, i in zip(chosen.tolist(), files.tolist()):
        first = (k - int(starts[i])) * run
        by_file.setdefault(unlabeled["path"].iloc[i], []).extend(range(first, min(first + run, windows[i])))
    n_runs, chosen = len(chosen), [w for ws in by_file.values() for w in ws]
    what = "windows" if run == 1 else f"runs of up to {run} windows, {len(chosen):,} windows"
    print(f"unlabeled window cache: {n_runs:,} of {total:,} {what}, "
          f"{len(chosen) * WINDOW_SAMPLES * 2 / 1e9:.1f} GB on disk", flush=True)
    out = NpyRowWriter(audio_path, len(chosen), (WINDOW_SAMPLES,))

    table, bad = [], []
    for (loaded, reason), path in zip(progress(ordered_map(read_windows, by_file.items(), n_threads),
                                               total=len(by_file), desc="unlabeled windows", unit="file"), by_file):
        if loaded is None:  # its rows are not written: the ones after it close the gap, the tail is cut at the end
            bad.append((path, reason))
            continue
        waves, kept = loaded
        out.write(waves)
        table += [(path, (w + 1) * WINDOW_SECONDS) for w in kept]
    out.close()
    pd.DataFrame(table, columns=["path", "end_second"]).to_csv(table_path, index=False)
    return bad


SITE_TIME = re.compile(r"(?:(\d+):([0-5]?\d):)?(\d+(?:\.\d*)?)")  # HH:MM:SS (Kaggle's) or seconds


def seconds_of(text):
    """A site label's time, "HH:MM:SS" (as Kaggle writes it) or plain seconds -> seconds; None for anything else
    (a word, a negative or empty time, MM:SS, seconds of 60 or more after a colon)."""
    match = SITE_TIME.fullmatch(str(text).strip())
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    if hours is not None and float(seconds) >= 60:
        return None
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


def skipped_line(what, items, why):
    """What the site's labels lose for one reason: how many, and the first."""
    return f"{len(items)} {what} skipped ({why}), the first: {items[0]}"


def site_windows_of_soundscape_labels(path, folder, classes):
    """Kaggle's train_soundscapes_labels.csv -> one row per labelled 5-s window: path (in the soundscape `folder`),
    end_second, labels (";"-separated classes). Rows written twice are merged, their labels united; a label that
    is not a class is dropped, with one warning line. A row whose start or end is not HH:MM:SS or seconds, or
    whose end is not after its start, is skipped, and so is a file missing from the folder: one warning line for
    each reason, counting them and naming the first. A UserError (one line) when rows were given and none is left."""
    table = read_csv(path, "site labels", dtype=str, keep_default_na=False)
    missing = [c for c in ("filename", "start", "end", "primary_label") if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks required column(s): {', '.join(missing)}")
    known, unknown, windows, malformed = set(classes), set(), {}, []
    for line, (filename, start, end, labels) in enumerate(zip(table["filename"], table["start"], table["end"],
                                                              table["primary_label"]), start=2):
        start_s, end_s = seconds_of(start), seconds_of(end)
        if start_s is None or end_s is None or end_s <= start_s or not str(filename).strip():
            malformed.append(f"line {line} ({filename},{start},{end})")
            continue
        merged = windows.setdefault((os.path.join(folder, filename), int(round(end_s))), [])
        for label in split_labels(labels):
            if label not in known:
                unknown.add(label)
            elif label not in merged:
                merged.append(label)
    if unknown:
        print(f"warning: {path}: {len(unknown)} label(s) are not classes of the dataset and were dropped: "
              f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}", file=sys.stderr)
    site = pd.DataFrame([(p, e, ";".join(labels)) for (p, e), labels in sorted(windows.items())],
                        columns=["path", "end_second", "labels"])
    absent = sorted(p for p in set(site["path"]) if not os.path.isfile(p))
    site = site[~site["path"].isin(absent)].reset_index(drop=True)
    skipped = [skipped_line(what, items, why) for what, items, why in (
        ("row(s)", malformed, "a start or end that is not HH:MM:SS or seconds, or an end not after its start"),
        ("labelled file(s)", [os.path.basename(p) for p in absent], f"not in {folder}")) if items]
    if site.empty and len(table):
        raise UserError(f"{path}: no usable row: {'; '.join(skipped)}. Fix it, or prep without it "
                        f"(PREP_ARGS=\"--site-labels off\")")
    for line in skipped:
        print(f"warning: {path}: {line}", file=sys.stderr)
    return site


def split_site_files(site, share, rng):
    """The split of each labelled window, by file: `share` of the files (at least one, and never all of them when
    there are two or more) "valid", held out to score rounds on the site; the others "train"."""
    files = sorted(set(site["path"]))
    n_valid = min(max(1, int(round(share * len(files)))), len(files) - 1) if share > 0 and len(files) > 1 else 0
    valid = set(rng.permutation(files)[:n_valid].tolist())
    return np.where(site["path"].isin(valid), "valid", "train")


def window_index(end_second):
    """The 5-s window of a soundscape that ends at end_second (Kaggle's row_id suffix): 5 -> 0, 10 -> 1."""
    return max(0, int(math.ceil(end_second / WINDOW_SECONDS)) - 1)


def write_site_windows(site, paths, n_threads, run=1):
    """Cache the audio of the site's training windows (site_windows.npy, in site_labels.csv order; with run > 1,
    each with run - 1 windows of the file on either side, zeros past its ends: what a W-s model's clips of it
    read) and write site_labels.csv; a file that does not decode loses its windows, and is listed with the
    reason."""
    train = site[site["split"] == "train"]
    by_file = {}
    for path, end_second in zip(train["path"], train["end_second"]):
        by_file.setdefault(path, []).append(window_index(end_second))
    out = NpyRowWriter(paths.site_audio, len(train), ((2 * run - 1) * WINDOW_SAMPLES,))
    if run > 1:  # the windows around each: read, then each labelled one's span cut out
        spans = {path: [w + j for w in windows for j in range(-run + 1, run) if w + j >= 0]
                 for path, windows in by_file.items()}
        loaded_spans = ordered_map(read_windows, spans.items(), n_threads)
    else:
        loaded_spans = ordered_map(read_windows, by_file.items(), n_threads)
    written, bad = set(), []
    for (loaded, reason), path in zip(progress(loaded_spans, total=len(by_file), desc="site windows", unit="file"),
                                      by_file):
        if loaded is None:
            bad.append((path, reason))
            continue
        waves, kept = loaded
        if run > 1:
            got = dict(zip(kept, waves))
            zeros = np.zeros(WINDOW_SAMPLES, waves.dtype)
            kept = [w for w in by_file[path] if w in got]
            waves = np.stack([np.concatenate([got.get(w + j, zeros) for j in range(-run + 1, run)]) for w in kept]) \
                if kept else np.zeros((0, (2 * run - 1) * WINDOW_SAMPLES), np.float32)
        out.write(waves)
        written.update((path, w) for w in kept)
    out.close()
    keep = [split == "valid" or (path, window_index(end)) in written
            for path, end, split in zip(site["path"], site["end_second"], site["split"])]
    site = site[keep].reset_index(drop=True)
    site.to_csv(paths.site_labels, index=False)
    return site, bad


def labelled_windows(site):
    """{path: {window index, ...} or None (all)} of the windows the unlabeled cache leaves out: each window of a held-out file
    (scored on the site, never trained on) and each labelled window of a training file (trained on as labelled)."""
    skip = {}
    for path, end_second, split in zip(site["path"], site["end_second"], site["split"]):
        skip.setdefault(path, set()).add(window_index(end_second))
    for path in set(site.loc[site["split"] == "valid", "path"]):
        skip[path] = None  # every window of the file
    return skip


def prepare(data, out, extra=None, n_threads=threads, window_cap=max_unlabeled_windows, seed=seed,
            site_labels="on", holdout=site_holdout, speech_check="auto", window_seconds=WINDOW_SECONDS):
    meta_path, audio_root, unlabeled_folder = find_layout(data)
    rows = read_metadata(meta_path, audio_root, "base")
    classes = class_list(data, rows)
    if extra:
        rows = pd.concat([rows, read_metadata(extra, os.path.dirname(os.path.abspath(extra)), "extra")],
                         ignore_index=True)
    rows = check_labels(rows, classes)
    site_path = os.path.join(data, SITE_LABELS_FILE)
    site = None
    if site_labels == "on" and os.path.isfile(site_path):
        site = site_windows_of_soundscape_labels(site_path, unlabeled_folder, classes)
        site["split"] = split_site_files(site, holdout, np.random.default_rng([seed, 1]))

    unlabeled, bad_unlabeled = index_unlabeled(unlabeled_folder, n_threads)
    disk.check_cache(os.path.dirname(os.path.abspath(out)), len(rows),
                     min(window_cap, int(unlabeled["n_windows"].sum())),  # at most: labelled windows stay out
                     0 if site is None else int((site["split"] == "train").sum()), window_seconds)

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    paths = CachePaths(tmp)
    detector = speech_detector(speech_check, rows)
    rows, bad, spoken = write_training_audio(rows, paths.audio, n_threads, detector, window_seconds)
    if detector:
        spoken = spoken[spoken_openings_to_cut(rows, spoken, speech_check)]
    spoken = spoken.assign(path=rows["path"].to_numpy()[spoken["row"].to_numpy(dtype=int)],
                           kept=spoken["after_row"] >= 0)
    bad += [(path, f"speech almost throughout (to {end:.1f} s; speech.py)")
            for path, end, kept in zip(spoken["path"], spoken["speech_end_seconds"], spoken["kept"]) if not kept]
    rows = rows[cut_spoken_openings(paths.audio, spoken)].reset_index(drop=True)
    if len(rows) == 0:
        shutil.rmtree(tmp)
        raise UserError("no training file could be decoded (see the reasons above)")
    # the collection only says where to listen: train_rows.csv, and the runs' digest of it, stay as they were
    rows.drop(columns=["path", "collection"], errors="ignore").to_csv(paths.rows, index=False)
    with open(paths.classes, "w") as f:
        f.write("\n".join(classes) + "\n")
    unlabeled.to_csv(paths.unlabeled_files, index=False)
    bad += bad_unlabeled
    if site is not None:
        site, bad_site = write_site_windows(site, paths, n_threads, window_seconds // WINDOW_SECONDS)
        bad += bad_site
    bad += write_unlabeled_windows(unlabeled, paths.unlabeled_audio, paths.unlabeled_rows, window_cap,
                                   np.random.default_rng(seed), n_threads,
                                   labelled_windows(site) if site is not None else None,
                                   window_seconds // WINDOW_SECONDS)
    pd.DataFrame(bad, columns=["path", "reason"]).to_csv(paths.bad_files, index=False)
    pd.DataFrame(spoken, columns=["path", "speech_end_seconds", "kept"]).to_csv(paths.speech, index=False)
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)

    swap_in(tmp, out)
    print(f"cache {out}: {len(rows)} training files, {len(classes)} classes, {len(unlabeled)} unlabeled "
          f"soundscapes ({unlabeled['n_windows'].sum() if len(unlabeled) else 0} windows), {len(bad)} skipped")
    if len(spoken):
        print(f"speech: {len(spoken)} training file(s) open with an announcement (median "
              f"{spoken['speech_end_seconds'].median():.1f} s), {int(spoken['kept'].sum())} trained on from where it "
              f"ends, {int((~spoken['kept']).sum())} left out (speech almost throughout); {out}/speech.csv")
    if site is not None:
        split = site.groupby("split")["path"]
        print(f"site labels {site_path}: {split.nunique().get('train', 0)} file(s) ({split.size().get('train', 0)} "
              f"windows) trained on, {split.nunique().get('valid', 0)} file(s) ({split.size().get('valid', 0)} "
              f"labelled windows) held out to score each round; "
              f"{len(set(split_labels(';'.join(site['labels']))))} classes with a positive")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(parser, "--data", required=True)
    add_flag(parser, "--out", required=True)
    parser.add_argument("--extra", help="CSV of extra recordings (same columns; filename relative to the CSV)")
    add_flag(parser, "--threads", default=threads)
    parser.add_argument("--max-unlabeled-windows", type=int, default=max_unlabeled_windows,
                        help=f"unlabeled 5-s windows cached for pseudo-label mixing (a random subset; each 10,000 "
                        f"cost {GB_PER_10K_WINDOWS:.1f} GB of disk and set the cost of a pseudo-label round; a "
                        f"number above the site's total caches every window)")
    add_flag(parser, "--seed", default=seed)
    parser.add_argument("--window-seconds", type=int, default=WINDOW_SECONDS, choices=WINDOWS,
                        help="the models table's longest window (make passes it): the training files' openings are "
                        "cached this long, unlabeled windows in runs of this many seconds, and the site's labelled "
                        "windows with the audio around them that clips of it hold")
    parser.add_argument("--site-labels", default="on", choices=["on", "off"], help=f"read the site's labelled "
                        f"soundscapes ({SITE_LABELS_FILE}, where the dataset has it): train on them, score rounds on "
                        f"a held-out share; off: they are unlabeled soundscapes like the rest")
    parser.add_argument("--site-holdout", type=float, default=site_holdout, help="share of the labelled soundscape "
                        "files held out (by file) to score each round on the site; 0: every one trains")
    parser.add_argument("--speech", default="auto", choices=["auto", "on", "off"], help="look for an announcement "
                        "in training files' openings (speech.py, Silero VAD) and take their 5-s window from where it "
                        "ends; auto: the files of sound archives' collections (the metadata's collection: CSA, and "
                        "any flagged far more often than XC), where silero-vad is installed (make installs it); on: "
                        "every file. The soundscapes are not looked at: nobody speaks on the site's recorders")
    parser.epilog = ("Flags after -- are train.py's, as make passes them (the models table, EPOCHS, PRETRAINED, "
                     "TRAIN_ARGS): checked (train.py --check) before anything is read, so that a wrong one stops "
                     "before prep's hours, not after them.")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if not 0 <= args.site_holdout < 1:
        parser.error(f"--site-holdout is a share, 0 to below 1, not {args.site_holdout:g}")
    if split < len(argv):  # in this process: prep has loaded what train.py's check needs
        import train
        checked = train.parse_args(["--check", *argv[split + 1:]])
        train.check_run(checked)
        longest = longest_window(read_models_table(checked.models))
        if longest > args.window_seconds:
            parser.error(f"{checked.models} has {longest}-s windows: cache them with --window-seconds {longest}")
    prepare(args.data, args.out, args.extra, args.threads, args.max_unlabeled_windows, args.seed, args.site_labels,
            args.site_holdout, args.speech, args.window_seconds)


if __name__ == "__main__":
    run_main(main)
