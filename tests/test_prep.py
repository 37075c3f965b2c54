"""prep.py: the cache of the demo data, the 2025 layout, bad input, atomic writes, folds."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import common
import tables
import errors
import prep
from common import WINDOW_SAMPLES, assign_folds, target_matrix
from tables import CachePaths
from helpers import one_line_error, run_here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_prep(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "prep.py"), *args], capture_output=True, text=True)


def test_demo_cache_contents(demo_dir, cache_dir):
    paths = CachePaths(cache_dir)
    meta = pd.read_csv(os.path.join(demo_dir, "train_metadata.csv"))
    rows = pd.read_csv(paths.rows)
    audio = np.load(paths.audio, mmap_mode="r")
    classes = tables.load_classes(paths.classes)
    assert classes == [c for c in pd.read_csv(os.path.join(demo_dir, "sample_submission.csv")).columns if c != "row_id"]
    assert audio.shape == (len(meta), WINDOW_SAMPLES) and audio.dtype == np.float16
    assert list(rows["filename"]) == list(meta["filename"]) and set(rows["source"]) == {"base"}
    # row i holds the first 5 s of file i, resampled to 32 kHz mono
    for i in (0, len(rows) // 2, len(rows) - 1):
        expected = common.first_five_seconds(common.read_audio(os.path.join(demo_dir, "train_audio", rows["filename"][i]),
                                                               max_seconds=5))
        assert np.abs(audio[i].astype(np.float32) - expected).max() < 2e-3
    # a recording shorter than 5 s is zero-padded
    durations = [sf.info(os.path.join(demo_dir, "train_audio", f)).duration for f in rows["filename"]]
    short = int(np.argmin(durations))
    assert durations[short] < 5
    n_audio = int(durations[short] * 32000)
    assert np.all(audio[short, n_audio + 10:] == 0) and np.any(audio[short, :n_audio] != 0)
    # targets: primary and secondary species
    y = target_matrix(rows, classes)
    for i, (primary, secondary) in enumerate(zip(rows["primary_label"], rows["secondary_labels"])):
        expected = {primary, *tables.parse_label_list(secondary)}
        assert {classes[c] for c in np.flatnonzero(y[i])} == expected
    # unlabeled index: every soundscape with its window count; the window cache matches the audio
    unlabeled = pd.read_csv(paths.unlabeled_files)
    assert len(unlabeled) == 3 and (unlabeled["n_windows"] == 3).all()
    windows = pd.read_csv(paths.unlabeled_rows)
    cached = np.load(paths.unlabeled_audio, mmap_mode="r")
    assert len(windows) == len(cached) == 9
    full = common.read_audio(windows["path"][4])
    end = int(windows["end_second"][4]) * 32000
    assert np.abs(cached[4].astype(np.float32) - full[end - WINDOW_SAMPLES:end]).max() < 2e-3
    assert len(pd.read_csv(paths.bad_files)) == 0


def test_folds_are_stratified_and_reproducible(cache_dir):
    rows = pd.read_csv(CachePaths(cache_dir).rows)
    a = assign_folds(rows["primary_label"], 3, 42)
    assert np.array_equal(a, assign_folds(rows["primary_label"], 3, 42))
    assert not np.array_equal(a, assign_folds(rows["primary_label"], 3, 70))
    for label in set(rows["primary_label"]):  # 3 files per species, 3 folds: one in each
        assert sorted(a[rows["primary_label"].values == label]) == [0, 1, 2]


def test_rerun_gives_identical_cache(demo_dir, cache_dir, tmp_path):
    out = str(tmp_path / "cache2")
    prep.prepare(demo_dir, out, n_threads=2)
    assert np.array_equal(np.load(CachePaths(out).audio), np.load(CachePaths(cache_dir).audio))
    pd.testing.assert_frame_equal(pd.read_csv(CachePaths(out).rows), pd.read_csv(CachePaths(cache_dir).rows))


def make_layout_2025(root, demo_dir):
    """A tiny 2025-layout dataset: train.csv, taxonomy.csv, train_soundscapes/ (no sample_submission)."""
    meta = pd.read_csv(os.path.join(demo_dir, "train_metadata.csv")).head(6)
    os.makedirs(os.path.join(root, "train_soundscapes"))
    for f in meta["filename"]:
        os.makedirs(os.path.join(root, "train_audio", os.path.dirname(f)), exist_ok=True)
        shutil.copy(os.path.join(demo_dir, "train_audio", f), os.path.join(root, "train_audio", f))
    meta[["primary_label", "secondary_labels", "filename", "rating"]].assign(collection="XC").to_csv(
        os.path.join(root, "train.csv"), index=False)
    taxonomy = sorted(set(meta["primary_label"])) + ["zzextra"]
    pd.DataFrame({"primary_label": taxonomy, "class_name": "Aves"}).to_csv(os.path.join(root, "taxonomy.csv"), index=False)
    soundscape = sorted(os.listdir(os.path.join(demo_dir, "unlabeled_soundscapes")))[0]
    shutil.copy(os.path.join(demo_dir, "unlabeled_soundscapes", soundscape), os.path.join(root, "train_soundscapes"))
    return meta, taxonomy


def test_layout_2025(demo_dir, tmp_path):
    meta, taxonomy = make_layout_2025(str(tmp_path / "bc25"), demo_dir)
    out = str(tmp_path / "cache")
    prep.prepare(str(tmp_path / "bc25"), out, n_threads=2)
    paths = CachePaths(out)
    assert tables.load_classes(paths.classes) == taxonomy
    assert np.load(paths.audio, mmap_mode="r").shape == (6, WINDOW_SAMPLES)
    assert len(pd.read_csv(paths.unlabeled_files)) == 1


def test_extra_recordings_are_marked(demo_dir, tmp_path):
    meta = pd.read_csv(os.path.join(demo_dir, "train_metadata.csv")).head(2)
    extra_dir = tmp_path / "xc"
    os.makedirs(extra_dir / "audio")
    for i, f in enumerate(meta["filename"]):
        shutil.copy(os.path.join(demo_dir, "train_audio", f), extra_dir / "audio" / f"x{i}.ogg")
    meta.assign(filename=["audio/x0.ogg", "audio/x1.ogg"]).to_csv(extra_dir / "extra.csv", index=False)
    out = str(tmp_path / "cache")
    prep.prepare(demo_dir, out, extra=str(extra_dir / "extra.csv"), n_threads=2)
    rows = pd.read_csv(CachePaths(out).rows)
    assert list(rows["source"].value_counts().sort_index()) == [len(rows) - 2, 2]


@pytest.fixture()
def damaged_dataset(demo_dir, tmp_path):
    """A copy of the demo data with a corrupt, an empty and a truncated train file and a corrupt soundscape."""
    root = str(tmp_path / "damaged")
    shutil.copytree(demo_dir, root)
    meta = pd.read_csv(os.path.join(root, "train_metadata.csv"))
    files = [os.path.join(root, "train_audio", f) for f in meta["filename"][:3]]
    with open(files[0], "wb") as f:
        f.write(b"OggS" + bytes(range(256)) * 20)          # corrupt
    open(files[1], "wb").close()                          # empty
    with open(files[2], "rb") as f:
        head = f.read(120)
    with open(files[2], "wb") as f:
        f.write(head)                                     # truncated inside the header
    soundscape = sorted(os.listdir(os.path.join(root, "unlabeled_soundscapes")))[0]
    with open(os.path.join(root, "unlabeled_soundscapes", soundscape), "wb") as f:
        f.write(b"not audio at all")
    return root, meta, files


def test_bad_files_are_skipped_and_listed(damaged_dataset, tmp_path):
    root, meta, files = damaged_dataset
    out = str(tmp_path / "cache")
    result = run_prep("--data", root, "--out", out, "--threads", "2")
    assert result.returncode == 0, result.stderr
    bad = pd.read_csv(CachePaths(out).bad_files)
    assert set(files) <= set(bad["path"]) and len(bad) == 4
    assert all(isinstance(r, str) and r for r in bad["reason"])
    rows = pd.read_csv(CachePaths(out).rows)
    assert len(rows) == len(meta) - 3 and not set(meta["filename"][:3]) & set(rows["filename"])
    assert len(pd.read_csv(CachePaths(out).unlabeled_files)) == 2


def test_training_file_damaged_partway_is_used_as_far_as_it_decodes(demo_dir, tmp_path):
    """A flac whose decoder loses sync at ~2 s: its first 5 s are what decodes, zero-padded, with one warning
    line; it is not listed as bad. A file that yields nothing still is."""
    import soundfile as sf
    root = str(tmp_path / "data")
    shutil.copytree(demo_dir, root)
    meta = pd.read_csv(os.path.join(root, "train_metadata.csv"))
    t = np.arange(32000 * 8) / 32000
    tone = (0.2 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)
    name = meta["filename"][0].rsplit(".", 1)[0] + ".flac"
    path = os.path.join(root, "train_audio", name)
    sf.write(path, tone, 32000)
    data = bytearray(open(path, "rb").read())
    start = len(data) // 4
    data[start:start + 64] = bytes(b ^ 0x5A for b in data[start:start + 64])
    open(path, "wb").write(bytes(data))
    meta.loc[0, "filename"] = name
    meta.to_csv(os.path.join(root, "train_metadata.csv"), index=False)
    out = str(tmp_path / "cache")
    result = run_prep("--data", root, "--out", out, "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stderr.splitlines() if "damaged" in line and name in line]) == 1
    bad = pd.read_csv(CachePaths(out).bad_files)
    assert path not in set(bad["path"])
    rows = pd.read_csv(CachePaths(out).rows)
    row = int(np.flatnonzero(rows["filename"] == name)[0])
    cached = np.load(CachePaths(out).audio, mmap_mode="r")[row].astype(np.float32)
    decoded = int(np.flatnonzero(np.abs(cached) > 1e-3).max()) + 1
    assert 32000 * 0.5 < decoded < 32000 * 4.5      # what decodes, then zeros
    assert np.allclose(cached[:decoded], tone[:decoded], atol=2e-3)   # float16 cache


def test_bad_input_stops_with_one_line(demo_dir, tmp_path, capsys):
    def prep_here(*args):  # no process of its own: one-line errors come before any work
        return run_here(prep.main, *args, capsys=capsys)

    out = str(tmp_path / "cache")
    assert one_line_error(prep_here("--data", str(tmp_path / "nowhere"), "--out", out))
    root = str(tmp_path / "copy")
    shutil.copytree(demo_dir, root)
    meta_path = os.path.join(root, "train_metadata.csv")
    meta = pd.read_csv(meta_path)
    meta.drop(columns=["filename"]).to_csv(meta_path, index=False)
    result = prep_here("--data", root, "--out", out)
    assert one_line_error(result) and "filename" in result.stderr
    meta.assign(primary_label=["notabird"] + list(meta["primary_label"][1:])).to_csv(meta_path, index=False)
    result = prep_here("--data", root, "--out", out)
    assert one_line_error(result) and "notabird" in result.stderr
    os.remove(meta_path)
    assert one_line_error(prep_here("--data", root, "--out", out))
    assert not os.path.exists(out)


def test_interrupted_run_leaves_old_cache_whole(demo_dir, cache_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "cache")
    shutil.copytree(cache_dir, out)
    before = np.load(CachePaths(out).audio)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(prep, "index_unlabeled", crash)  # dies after the training audio was written
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(demo_dir, out, n_threads=2)
    assert np.array_equal(np.load(CachePaths(out).audio), before)
    assert sorted(os.listdir(out)) == sorted(os.listdir(cache_dir))


@pytest.mark.parametrize("extension,rate,channels", [(".wav", 44100, 2), (".mp3", 22050, 1), (".flac", 16000, 1)])
def test_other_formats_and_rates_become_32k_mono(tmp_path, extension, rate, channels):
    t = np.arange(int(rate * 3.2)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path = str(tmp_path / f"rec{extension}")
    sf.write(path, data, rate)
    audio = common.read_audio(path)
    assert abs(len(audio) - int(3.2 * 32000)) < 64
    # the 440 Hz tone survives resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(audio[:32000]))
    assert abs(np.argmax(spectrum) - 440) <= 2
    first = common.first_five_seconds(common.read_audio(path, max_seconds=5))
    assert first.shape == (WINDOW_SAMPLES,) and np.all(first[int(3.3 * 32000):] == 0)


def flac_audio_start(data):
    """Offset of a FLAC file's first audio frame: after "fLaC" and its metadata blocks (1 bit last-block flag,
    7 bits type, 24 bits length each)."""
    at = 4
    while True:
        last, length = data[at] & 0x80, int.from_bytes(data[at + 1:at + 4], "big")
        at += 4 + length
        if last:
            return at


def test_a_bad_file_costs_no_second_array(damaged_dataset, cache_dir, tmp_path, monkeypatch):
    """Failed training files and soundscapes: the arrays shrink in place, never written twice or loaded whole."""
    root, meta, files = damaged_dataset
    unlabeled = os.path.join(root, "unlabeled_soundscapes")
    noise = np.random.default_rng(0).standard_normal(32000 * 20).astype(np.float32) * 0.1
    sf.write(os.path.join(unlabeled, "cut.flac"), noise, 32000)  # a header of 20 s, then no audio that decodes
    with open(os.path.join(unlabeled, "cut.flac"), "r+b") as f:
        f.truncate(flac_audio_start(f.read()))
    opened, real_writer = [], prep.NpyRowWriter

    def writer(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real_writer(path, *args, **kwargs)
    monkeypatch.setattr(prep, "NpyRowWriter", writer)
    monkeypatch.setattr(np, "save", lambda *a, **k: pytest.fail("np.save writes a second array"))
    out = str(tmp_path / "cache")
    prep.prepare(root, out, n_threads=2, window_cap=10**6)
    assert sorted(opened) == ["train_audio.npy.all", "unlabeled_windows.npy"]
    assert np.array_equal(np.load(CachePaths(out).audio), np.load(CachePaths(cache_dir).audio)[3:])
    windows = pd.read_csv(CachePaths(out).unlabeled_rows)
    cached = np.load(CachePaths(out).unlabeled_audio)
    assert len(cached) == len(windows) > 0 and "cut.flac" not in " ".join(windows["path"])
    assert "cut.flac" in " ".join(pd.read_csv(CachePaths(out).bad_files)["path"])
    last = len(windows) - 1
    audio = common.read_audio(windows["path"][last])
    end = int(windows["end_second"][last]) * 32000
    expected = common.windows_of(audio, end // WINDOW_SAMPLES)[-1]
    assert np.abs(cached[last].astype(np.float32) - expected).max() < 2e-3


def test_only_recording_of_a_class_always_trains():
    labels = np.array(["a"] * 7 + ["b"] * 2 + ["rare"] + ["c"] * 5)
    for seed in (42, 70):
        for n_folds in (5, 10):
            folds = assign_folds(labels, n_folds, seed)
            assert folds[labels == "rare"][0] == -1  # in no fold: never held out
            for fold in range(n_folds):  # every class keeps a training row, whichever fold is held out
                assert set(labels[folds != fold]) == set(labels)


def test_too_little_disk_is_one_line_before_writing(demo_dir, cache_dir, tmp_path, monkeypatch):
    import collections
    out = str(tmp_path / "cache")
    shutil.copytree(cache_dir, out)
    before = sorted(os.listdir(out))
    import disk
    n_train = len(pd.read_csv(os.path.join(demo_dir, "train_metadata.csv")))
    free = (n_train + 4.5) * disk.WINDOW_BYTES * disk.MARGIN  # the training files and 4 of the 9 windows fit
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: collections.namedtuple("u", "free")(free))
    with pytest.raises(errors.UserError, match=r"not enough disk for the cache: .*make CACHE=/path/cache\) or cache "
                       r"fewer unlabeled windows \(PREP_ARGS=\"--max-unlabeled-windows 4\"\)"):
        prep.prepare(demo_dir, out, n_threads=2)
    assert sorted(os.listdir(out)) == before  # the old cache is whole
    prep.prepare(demo_dir, out, n_threads=2, window_cap=4)  # the setting it names fits


def test_empty_secondaries_of_2025_are_not_dropped_labels(capsys):
    """BirdCLEF 2025 writes "['']" for a recording without secondary labels: no label, nothing dropped."""
    assert tables.parse_label_list("['']") == [] and tables.parse_label_list("[' ', 'a']") == ["a"]
    rows = pd.DataFrame(dict(filename=["a.ogg", "b.ogg", "c.ogg"], primary_label=["x", "y", "x"],
                             secondary_labels=["['']", "['y', 'nobird']", ""]))
    cleaned = prep.check_labels(rows, ["x", "y"])
    assert list(cleaned["secondary_labels"]) == ["[]", "['y']", "[]"]
    assert "dropped 1 secondary label(s)" in capsys.readouterr().err
