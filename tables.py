"""The project's tables on disk: the files of prep.py's cache (the interface between prep and the training
scripts), its label columns, and the models table.

    CachePaths("work/cache").rows                # work/cache/train_rows.csv
    read_models_table("models.csv").loc[4]       # the write-up's model 4: seed, folds, mel settings, image size
"""
import ast
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from errors import UserError


def parse_label_list(text):
    """'["a", "b"]' -> ['a', 'b']; empty, NaN or "['']" -> []."""
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"secondary_labels value is not a Python list literal: {text!r}")
    labels = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return [label for label in labels if label.strip()]  # BirdCLEF 2025 writes "['']" for none


@dataclass(frozen=True)
class CachePaths:
    """File names inside a prep cache folder (the interface between prep.py and the training scripts). Each set of
    windows has its audio (X_audio, .npy, one window per row) and a table of its rows (rows, unlabeled_rows,
    site_labels: .csv, row i describes audio row i)."""
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
    def unlabeled_files(self):  # path, duration_s, n_windows of every unlabeled soundscape
        return os.path.join(self.root, "unlabeled.csv")

    @property
    def unlabeled_audio(self):  # (M, WINDOW_SAMPLES) float16: a random subset of unlabeled 5-s windows
        return os.path.join(self.root, "unlabeled_windows.npy")

    @property
    def unlabeled_rows(self):  # path, end_second of each row of unlabeled_audio (as rows is of audio)
        return os.path.join(self.root, "unlabeled_windows.csv")

    @property
    def speech(self):  # training files whose opening is speech: path, speech_end_seconds, kept (False: left out)
        return os.path.join(self.root, "speech.csv")

    @property
    def site_labels(self):  # the site's labelled windows: path, end_second, labels (";"-separated), split
        return os.path.join(self.root, "site_labels.csv")  # ("train": trained on; "valid": held out, scored)

    @property
    def site_audio(self):  # (K, WINDOW_SAMPLES) float16: the labelled windows of split "train", in site_labels order
        return os.path.join(self.root, "site_windows.npy")

    @property
    def bad_files(self):
        return os.path.join(self.root, "bad_files.csv")


LABEL_COLUMNS = {"filename": str, "primary_label": str, "secondary_labels": str}


def read_rows(path):
    """prep.py's train_rows.csv; labels stay strings ("0123" stays "0123", iNat ids are not numbers)."""
    rows = pd.read_csv(path, dtype=LABEL_COLUMNS, keep_default_na=False, na_values={"rating": [""]})
    return rows


def split_labels(text):
    """The site labels' ";"-separated list: "a;b" -> ["a", "b"]; empty or NaN -> []."""
    if not isinstance(text, str):
        return []
    return [label.strip() for label in text.split(";") if label.strip()]


def read_site_labels(path):
    """prep.py's site_labels.csv (labels stay strings); an empty table when the cache has none."""
    if not os.path.isfile(path):
        return pd.DataFrame(columns=["path", "end_second", "labels", "split"])
    return pd.read_csv(path, dtype={"path": str, "labels": str, "split": str}, keep_default_na=False)


def load_classes(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


# the models table's columns (the write-up's names) and their types; fold is a number or "all"
MODEL_COLUMNS = dict(id=int, seed=int, n_folds=int, fold=str, dataset=str, n_mels=int, hop_length=int,
                     image_height=int, image_width=int, pseudoLabelChance=float, ampExpMin=float, ampExpMax=float)
# optional columns (the podiums' models since 2025); a table without them, or a row that leaves one empty, has the
# write-up's: its EfficientNet-B0, the recipe's head (--head; the write-up's gem5), 5-s windows
OPTIONAL_COLUMNS = dict(backbone=str, head=str, window_seconds=int, n_fft=int, f_min=float, f_max=float)
# of those, the ones that are also the recipe's flags (train.py --head, --n-fft ...): a row's value wins over the flag
ROW_OVER_RECIPE = ("head", "n_fft", "f_min", "f_max")
WRITEUP_BACKBONE = "tf_efficientnet_b0.ns_jft_in1k"   # the write-up's tf_efficientnet_b0_ns
HEADS = ("gem5", "plain", "sed")
WINDOWS = (5, 10, 15, 20)   # a model's window in seconds: what it trains on and scores at a time


def kebab(name):
    """A table column as a command-line flag: pseudoLabelChance -> pseudo-label-chance, n_mels -> n-mels."""
    return re.sub(r"(?<=[a-z])([A-Z])", r"-\1", name).replace("_", "-").lower()


def read_models_table(path):
    """models.csv -> DataFrame indexed by model id, checked for the write-up's columns."""
    table = read_table(path)
    missing = [c for c in MODEL_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks column(s): {', '.join(missing)}")
    unknown = [c for c in table.columns if c not in MODEL_COLUMNS and c not in OPTIONAL_COLUMNS]
    if unknown:
        raise UserError(f"{path} has unknown column(s): {', '.join(unknown)} (known: "
                        f"{', '.join(list(MODEL_COLUMNS) + list(OPTIONAL_COLUMNS))})")
    for column in OPTIONAL_COLUMNS:  # empty cells: the write-up's choice (the recipe's)
        if column in table.columns:
            table[column] = table[column].map(lambda v: "" if pd.isna(v) else str(v).strip())
            if column in ("n_fft", "f_min", "f_max"):
                given = table[column] != ""
                values = pd.to_numeric(table.loc[given, column], errors="coerce")
                if values.isna().any() or (values < 0).any():
                    row = int(np.flatnonzero(given.to_numpy())[int(np.flatnonzero(values.isna() | (values < 0))[0])])
                    raise UserError(f"{path}: {column} must be a number of 0 or more (or empty: the recipe's), not "
                                    f"{table[column].iloc[row]!r} (row {row + 1})")
    for column, kind in MODEL_COLUMNS.items():
        if kind is str:
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        wrong = values.isna() | ((values != values.round()) if kind is int else False)
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise UserError(f"{path}: {column} must be {'a whole number' if kind is int else 'a number'}, not "
                            f"{table[column].iloc[row]!r} (row {row + 1})")
    if table["id"].duplicated().any():
        raise UserError(f"{path}: model id {table['id'][table['id'].duplicated()].iloc[0]} is given twice")
    for row, (head, window) in enumerate(zip(table.get("head", [""] * len(table)),
                                             table.get("window_seconds", [""] * len(table)))):
        if head and head not in HEADS:
            raise UserError(f"{path}: head must be one of {', '.join(HEADS)} (or empty: the recipe's), not {head!r} "
                            f"(row {row + 1})")
        if window and (not re.fullmatch(r"\d+(\.0*)?", window) or int(float(window)) not in WINDOWS):
            raise UserError(f"{path}: window_seconds must be one of {', '.join(map(str, WINDOWS))} (or empty: 5), "
                            f"not {window!r} (row {row + 1})")
    if "window_seconds" in table.columns:
        table["window_seconds"] = [int(float(w)) if w else "" for w in table["window_seconds"]]
    return table.set_index("id", drop=False)


def backbones_of(table):
    """The distinct backbones a models table names, in order (a row without one: the write-up's)."""
    names = [b or WRITEUP_BACKBONE for b in table.get("backbone", pd.Series([""] * len(table)))]
    return list(dict.fromkeys(names))


def window_seconds_of(config):
    """A config's (or table row's) window in seconds: 5, the write-up's, where it says none."""
    value = config.get("window_seconds")
    return 5 if value is None or (isinstance(value, float) and np.isnan(value)) or value == "" else int(value)


def longest_window(table):
    """The longest window (seconds) of a models table's rows: what prep's cache must hold; 5 without the column."""
    return max(window_seconds_of(row) for _, row in table.iterrows()) if len(table) else 5


def read_table(path):
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    return pd.read_csv(path, comment="#", skipinitialspace=True)


