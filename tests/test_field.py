"""Field recordings: infer.py --detections over a folder tree (Raven selection tables, detections.csv with the
recorders' start times, a damaged file skipped, a rerun that resumes), and block-wise scores equal to whole-file
scores."""
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import infer  # noqa: E402
import tables  # noqa: E402


def birdlike(seconds, rate, seed, channels=1):
    """Chirps over noise: windows that differ from one another."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.02 * rng.standard_normal(len(t))
    for start in rng.uniform(0, seconds, size=max(1, int(seconds // 3))):
        part = (t >= start) & (t < start + 0.4)
        audio[part] += 0.3 * np.sin(2 * np.pi * (2500 + 3000 * (t[part] - start)) * (t[part] - start))
    audio = audio.astype(np.float32)
    return np.stack([audio, 0.7 * audio], axis=1) if channels == 2 else audio


@pytest.mark.parametrize("rate,channels", [(32000, 1), (44100, 2)])
def test_block_wise_scores_equal_whole_file_scores(tiny_ensemble, tmp_path, rate, channels):
    path = str(tmp_path / f"long_{rate}.flac")
    sf.write(path, birdlike(47.3, rate, seed=rate, channels=channels), rate)
    networks, front_end, classes, _ = infer.load_ensemble(tiny_ensemble, "torch", 2)
    whole = infer.predict_files([path], networks, front_end, log=False).probs[path]
    in_blocks, seconds = infer.score_in_blocks(path, networks, front_end, block_s=10)
    assert in_blocks.shape == whole.shape == (10, len(classes)) and abs(seconds - 47.3) < 1e-3
    assert np.abs(in_blocks - whole).max() < 1e-5 and whole.std() > 0
    audio = np.concatenate(list(infer.audio_in_blocks(path, 10)[1]))
    assert np.abs(audio - infer.read_audio(path)).max() < 1e-5


@pytest.fixture(scope="module")
def recorders(tmp_path_factory):
    """A tree as recorders write it: a 130-s AudioMoth file at 48 kHz (three blocks), a short flac, a damaged ogg."""
    root = tmp_path_factory.mktemp("recorders")
    (root / "site A").mkdir()
    (root / "site B" / "deep").mkdir(parents=True)
    sf.write(str(root / "site A" / "20260401_060000.WAV"), birdlike(130, 48000, seed=1), 48000, subtype="PCM_16")
    sf.write(str(root / "site B" / "deep" / "short.FLAC"), birdlike(12, 32000, seed=2), 32000)
    (root / "site B" / "broken.ogg").write_bytes(b"OggS" + bytes(range(256)) * 4)
    (root / "notes.txt").write_text("not audio")
    return root


def test_detections_of_a_folder_tree_as_raven_tables_and_one_csv(tiny_ensemble, cache_dir, recorders, tmp_path,
                                                                  capsys):
    out = tmp_path / "detections"
    classes = tables.load_classes(tables.CachePaths(cache_dir).classes)
    taxonomy = tmp_path / "taxonomy.csv"
    pd.DataFrame({"primary_label": classes, "scientific_name": [f"Avis {c}" for c in classes],
                  "common_name": [f"Bird {c}" for c in classes]}).to_csv(taxonomy, index=False)
    args = ["--ensemble", tiny_ensemble, "--audio", str(recorders), "--detections", str(out), "--threads", "2",
            "--backend", "torch", "--taxonomy", str(taxonomy)]
    infer.main([*args, "--min-score", "0.3"])  # the code infer.py pasted alone runs (it imports nothing of ours)
    first = capsys.readouterr()
    named = [line for line in first.err.splitlines() if "broken.ogg" in line]
    assert len(named) == 1 and "skipped" in named[0]
    moth = out / "site A" / "20260401_060000.WAV.selections.txt"
    short = out / "site B" / "deep" / "short.FLAC.selections.txt"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        "site A/20260401_060000.WAV.selections.txt", "site B/deep/short.FLAC.selections.txt"]
    table = pd.read_csv(moth, sep="\t")
    assert list(table.columns) == infer.RAVEN_COLUMNS and len(table) > 0
    assert list(table["Selection"]) == list(range(1, len(table) + 1)) and (table["View"] == "Spectrogram 1").all()
    full = table["Begin Time (s)"] < 125
    assert (table["Begin Time (s)"] % 5 == 0).all() and (table["End Time (s)"] - table["Begin Time (s)"])[full].eq(5).all()
    assert table["Begin Time (s)"].max() <= 125 and (table["Score"] >= 0.3).all()
    assert (table.loc[table["Begin Time (s)"] == 125, "End Time (s)"] == 130).all()  # the last window ends with the file
    assert (table["Low Freq (Hz)"] == 20).all() and (table["High Freq (Hz)"] == 16000).all()
    assert (table["Scientific Name"] == "Avis " + table["Class"].astype(str)).all()
    # the scores are the submission's: the same ensemble, smoothing and windows as infer.py's whole-file path
    networks, front_end, _, _ = infer.load_ensemble(tiny_ensemble, "torch", 2)
    path = str(recorders / "site B" / "deep" / "short.FLAC")
    rows = infer.predict_files([path], networks, front_end, log=False).probs[path]
    short_table = pd.read_csv(short, sep="\t", dtype={"Class": str})
    expected = [(w, classes[c]) for w, c in zip(*np.nonzero(rows >= 0.3))]
    assert sorted(zip(short_table["Begin Time (s)"] // 5, short_table["Class"])) == sorted(expected)
    found = pd.read_csv(out / "detections.csv", dtype={"class": str}, keep_default_na=False)
    assert len(found) == len(table) + len(short_table)
    on_moth = found[found["file"] == os.path.join("site A", "20260401_060000.WAV")]
    assert (on_moth["begin_time"] == [str(pd.Timestamp("2026-04-01 06:00:00") + pd.Timedelta(seconds=s))
                                      for s in on_moth["begin_s"]]).all()
    assert (found.loc[found["file"].str.endswith("short.FLAC"), "begin_time"] == "").all()

    stamp = os.stat(moth).st_mtime_ns
    infer.main([*args, "--min-score", "0.3"])  # resumes: the done files are skipped (in this process: no start-up)
    printed = capsys.readouterr()
    assert "2 have their table already" in printed.out and "broken.ogg" in printed.err
    assert os.stat(moth).st_mtime_ns == stamp
    infer.main([*args, "--min-score", "0.6", "--overwrite"])
    assert "0 have their table already" in capsys.readouterr().out
    fewer = pd.read_csv(moth, sep="\t")
    assert set(zip(fewer["Begin Time (s)"], fewer["Class"])) == \
        set(zip(table.loc[table["Score"] >= 0.6, "Begin Time (s)"], table.loc[table["Score"] >= 0.6, "Class"]))


def test_recorders_start_times_are_read_from_their_names():
    assert str(infer.start_time_of("/x/20260401_060000.WAV")) == "2026-04-01 06:00:00"
    assert str(infer.start_time_of("SMM07257_20230415_193000.wav")) == "2023-04-15 19:30:00"
    assert str(infer.start_time_of("S4A01234_20230415_193000_extra.wav")) == "2023-04-15 19:30:00"
    for name in ("short.flac", "20261399_060000.wav", "X20260401_060000.wav", "2026040_060000.wav"):
        assert infer.start_time_of(name) is None, name


def test_detections_without_a_folder_is_one_line(tiny_ensemble, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        infer.main(["--ensemble", tiny_ensemble, "--detections", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--detections needs --audio FOLDER" in err[0]
