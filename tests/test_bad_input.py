"""Bad input on the user's road: prep's batched loops at every count, the site's label times parsed strictly, the
steps that need a finished ensemble in a WORK without one, and the inputs of later steps checked before prep."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers import ROOT, one_line_error

import prep  # noqa: E402
import speech  # noqa: E402
import teacher  # noqa: E402
from common import SAMPLE_RATE  # noqa: E402
from errors import UserError  # noqa: E402
from files import NpyRowWriter  # noqa: E402
from tables import CachePaths  # noqa: E402


class CountingDetector:
    """The speech detector's interface: no speech anywhere; it fails, as np.stack does, on an empty batch."""

    def __init__(self):
        self.calls = []

    def probabilities(self, waves):
        assert len(waves), "an empty batch reached the detector"
        self.calls.append(len(waves))
        return np.zeros((len(waves), 10), np.float32)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """257 one-second recordings that decode and 256 that do not."""
    root = tmp_path_factory.mktemp("recordings")
    good, bad = [], []
    tone = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 0.05)).astype(np.float32)
    for i in range(257):
        good.append(str(root / f"good{i}.wav"))
        sf.write(good[-1], tone * (1 + i % 7), SAMPLE_RATE, subtype="PCM_16")
    for i in range(256):
        bad.append(str(root / f"bad{i}.ogg"))
        with open(bad[-1], "wb") as f:
            f.write(b"OggS not really")
    return good, bad


@pytest.mark.parametrize("n_good,n_bad", [(0, 0), (1, 0), (255, 0), (256, 0), (257, 0), (0, 256), (256, 1)])
def test_the_speech_checks_batches_take_every_count(recordings, tmp_path, n_good, n_bad):
    good, bad = recordings
    rows = pd.DataFrame({"path": good[:n_good] + bad[:n_bad]})
    detector = CountingDetector()
    kept, skipped, spoken = prep.write_training_audio(rows, str(tmp_path / "audio.npy"), 2, detector)
    assert len(kept) == n_good and len(skipped) == n_bad and spoken.empty
    assert sum(detector.calls) == n_good and all(0 < n <= speech.BATCH for n in detector.calls)
    assert len(detector.calls) == -(-n_good // speech.BATCH)
    assert np.load(tmp_path / "audio.npy").shape == (n_good, prep.WINDOW_SAMPLES)
    assert prep.after_opening_speech(detector, []) == []


def test_the_teachers_batches_take_a_cache_set_with_no_windows(cache_dir, tmp_path):
    """score_cache with an empty site set: embeddings of every set at the teacher's width, none of them lost."""
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    paths = CachePaths(str(cache))
    NpyRowWriter(paths.site_audio, 0, (prep.WINDOW_SAMPLES,)).close()
    shutil.copy(paths.unlabeled_rows, paths.site_labels)

    def fake_teacher(waves):
        return np.full((len(waves), 3), 0.5, np.float32), np.ones((len(waves), 6), np.float32)
    fake_teacher.name = "fake"
    table = pd.read_csv(paths.unlabeled_rows)
    mapping = pd.DataFrame({"teacher_index": [0, 1, -1]})
    probs, n = teacher.score_cache(fake_teacher, str(cache), table, mapping, 4, str(tmp_path / "t.npz"))
    saved = np.load(tmp_path / "t.embeddings.npz")
    assert saved["site"].shape == (0, 6) and saved["train"].shape[1] == 6 and len(probs) == len(table)
    assert n == len(saved["train"]) + len(table)


def write_site_labels(folder, rows):
    path = folder / "train_soundscapes_labels.csv"
    pd.DataFrame(rows, columns=["filename", "start", "end", "primary_label"]).to_csv(path, index=False)
    return str(path)


def test_site_label_times_are_parsed_strictly():
    assert prep.seconds_of("00:01:05") == 65 and prep.seconds_of("01:00:00") == 3600
    assert prep.seconds_of("15") == 15 and prep.seconds_of(" 7.5 ") == 7.5
    for bad in ("abc", "", "-5", "1:05", "00:61:00", "00:00:75", "5s", "nan", "00:00:05:00"):
        assert prep.seconds_of(bad) is None, bad


def test_malformed_site_rows_and_missing_files_are_skipped_with_one_line_each(tmp_path, capsys):
    folder = tmp_path / "train_soundscapes"
    folder.mkdir()
    (folder / "a.ogg").write_bytes(b"")
    labels = write_site_labels(tmp_path, [("a.ogg", "00:00:00", "00:00:05", "x"), ("a.ogg", "abc", "00:00:10", "x"),
                                          ("a.ogg", "00:00:15", "00:00:10", "y"), ("a.ogg", "10", "15", "y"),
                                          ("a.ogg", "00:00:20", "00:00:20", "x"),
                                          ("gone.ogg", "0", "5", "x"), ("lost.ogg", "0", "5", "x")])
    site = prep.site_windows_of_soundscape_labels(labels, str(folder), ["x", "y"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert list(site["end_second"]) == [5, 15] and list(site["labels"]) == ["x", "y"]
    assert len(err) == 2
    assert "3 row(s) skipped" in err[0] and "the first: line 3 (a.ogg,abc,00:00:10)" in err[0]
    assert "2 labelled file(s) skipped" in err[1] and "the first: gone.ogg" in err[1]


def test_site_labels_with_nothing_usable_are_refused_in_one_line(tmp_path, demo_dir, capsys):
    folder = tmp_path / "train_soundscapes"
    folder.mkdir()
    (folder / "a.ogg").write_bytes(b"")
    bad_times = write_site_labels(tmp_path, [("a.ogg", "abc", "00:00:05", "x"), ("a.ogg", "10", "5", "x")])
    with pytest.raises(UserError, match="no usable row"):
        prep.site_windows_of_soundscape_labels(bad_times, str(folder), ["x"])
    absent = write_site_labels(tmp_path, [("gone.ogg", "0", "5", "x")])
    with pytest.raises(UserError, match="no usable row"):
        prep.site_windows_of_soundscape_labels(absent, str(folder), ["x"])
    data = tmp_path / "data"  # through prep.py as make runs it: one line, exit 2, no cache
    shutil.copytree(demo_dir, data)
    soundscape = sorted(os.listdir(data / "unlabeled_soundscapes"))[0]
    write_site_labels(data, [(soundscape, "00:00:10", "00:00:05", "x")])
    from helpers import run_here
    capsys.readouterr()
    done = run_here(prep.main, "--data", str(data), "--out", str(tmp_path / "cache"), capsys=capsys)
    assert one_line_error(done) and "no usable row" in done.stderr, done.stderr[-800:]
    assert not os.path.exists(tmp_path / "cache" / "train_rows.csv")


def make(*args):
    return subprocess.run(["make", "--no-print-directory", "-C", ROOT, f"PY={sys.executable}", *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def make_error_lines(result):
    """stderr's lines, less make's own closing line for a failed recipe ("make: *** [...] Error 2", "make[1]: ...")."""
    closing = re.compile(r"make(\[\d+\])?: \*\*\* \[")
    return [line for line in result.stderr.splitlines() if line.strip() and not closing.match(line)]


@pytest.mark.parametrize("goal", ["kaggle", "timing", "submission"])
def test_steps_that_read_an_ensemble_stop_in_one_line_in_a_work_without_one(tmp_path, goal):
    work = tmp_path / "work"
    result = make(goal, f"WORK={work}", f"DATA={tmp_path}/no-such-data")
    lines = make_error_lines(result)
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "no trained ensemble in" in lines[0] and "run make ensemble" in lines[0]
    assert not work.exists()  # nothing started, nothing recorded


def test_what_later_steps_read_is_checked_before_prep(tmp_path, demo_dir, capsys):
    """make's plan hands prep.py training's flags after --, and prep.py checks them before it reads anything: a
    table lacking a column stops in one line, no cache written (prep.py's main in this process, with the flags make
    gives it). The pseudo-label settings stop make itself, in one line."""
    from helpers import run_here
    work, data = tmp_path / "work", f"DATA={demo_dir}"
    plan = make("prep", f"WORK={work}", data, "TRAIN_ARGS=--preset demo", "-n")
    command = plan.stdout.replace("\\\n\t", "")  # the recipe's continued lines as one
    assert plan.returncode == 0 and "prep.py" in command and "-- --models models.csv --epochs 50" in command and "--preset demo" in command
    lacking = tmp_path / "lacking.csv"
    pd.read_csv(os.path.join(ROOT, "models.csv"), comment="#").drop(columns=["ampExpMax"]).to_csv(lacking, index=False)
    for flags, message in ((["--models", str(lacking)], "lacks column(s): ampExpMax"),
                           (["--models", os.path.join(ROOT, "models.csv"), "--preset", "nope"], "invalid choice")):
        done = run_here(prep.main, "--data", demo_dir, "--out", str(tmp_path / "cache"), "--", *flags, capsys=capsys)
        assert one_line_error(done) and message in done.stderr, done.stderr
        assert not os.path.exists(tmp_path / "cache")  # prep never started
    for k, (variables, message) in enumerate([
            (["PL_MEMBERS=model1,model9"], "PL_MEMBERS=model1,model9 names model(s) not in models.csv: model9"),
            (["PL_NORM=max"], 'PL_NORM must be floor, minmax or none, not "max"')]):
        result = make("prep", f"WORK={work}{k}", data, *variables)  # a WORK each: a run records its settings
        lines = make_error_lines(result)
        assert result.returncode != 0 and len(lines) == 1 and message in lines[0], (variables, result.stderr)
        assert not os.path.exists(f"{work}{k}/cache"), variables


def test_the_check_reads_every_row_and_flag_as_training_would(tmp_path, capsys):
    """train.py --check (prep.py runs it on the flags after --, as make passes them), in this process: one line for
    each wrong input."""
    import train
    from helpers import run_here
    table = pd.read_csv(os.path.join(ROOT, "models.csv"), comment="#")
    table["n_mels"] = table["n_mels"].astype(str)
    table.loc[2, "n_mels"] = "many"
    table.to_csv(tmp_path / "wrong.csv", index=False)
    twice = pd.read_csv(os.path.join(ROOT, "models.csv"), comment="#")
    twice.loc[1, "id"] = 1
    twice.to_csv(tmp_path / "twice.csv", index=False)
    models = os.path.join(ROOT, "models.csv")
    cases = [(["--models", str(tmp_path / "wrong.csv")], "n_mels must be a whole number, not 'many' (row 3)"),
             (["--models", models, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
             (["--models", str(tmp_path / "twice.csv")], "model id 1 is given twice"),
             (["--models", str(tmp_path / "none.csv")], "file not found"),
             (["--models", models, "--fold", "9"], "fold must be 0..4 or all"),
             (["--models", models, "--epochs", "many"], "--epochs: invalid int value: 'many'"),
             (["--models", models, "--pretrained", str(tmp_path / "none.pth")],
              "pretrained weights file or folder not found")]
    # the optional columns: an unknown head, a window that is not 5, 10, 15 or 20, an unknown backbone (named with
    # timm's closest), one whose features the heads cannot pool; weights: a folder without a backbone's file, one
    # file for two backbones
    for column, value, message in (("head", "attention", "head must be one of gem5, plain, sed"),
                                   ("window_seconds", "7", "window_seconds must be one of 5, 10, 15, 20"),
                                   ("backbone", "regnety_08", "backbone 'regnety_08' is no timm model (closest: "),
                                   ("backbone", "vit_tiny_patch16_224", "backbone vit_tiny_patch16_224 does not take "
                                                                        "a 128x128 mel image")):
        odd = pd.read_csv(os.path.join(ROOT, "models.csv"), comment="#")
        odd[column] = ""
        odd.loc[2, column] = value
        odd.to_csv(tmp_path / f"{column}-{value}.csv", index=False)
        cases.append((["--models", str(tmp_path / f"{column}-{value}.csv")], message))
    two = pd.read_csv(os.path.join(ROOT, "models.csv"), comment="#").assign(backbone="")
    two.loc[2, "backbone"] = "regnety_002"
    two.to_csv(tmp_path / "two.csv", index=False)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "tf_efficientnet_b0.ns_jft_in1k.pth").write_bytes(b"")
    cases += [(["--models", str(tmp_path / "two.csv"), "--pretrained", str(tmp_path / "weights")],
               f"no weights for backbone regnety_002 in {tmp_path / 'weights'}: "
               f"{tmp_path / 'weights' / 'regnety_002.pth'} is missing"),
              (["--models", str(tmp_path / "two.csv"), "--pretrained",
                str(tmp_path / "weights" / "tf_efficientnet_b0.ns_jft_in1k.pth")], "pass the folder make weights")]
    for args, message in cases:
        done = run_here(train.main, "--check", *args, capsys=capsys)
        assert one_line_error(done) and message in done.stderr, (args, done.stderr)
    done = run_here(train.main, "--check", "--models", models, "--pretrained", "none", capsys=capsys)
    assert done.returncode == 0 and "checked: the 6 models of" in done.stdout


def test_prep_with_the_speech_check_on_a_count_the_batch_divides(demo_dir, tmp_path, monkeypatch):
    """prep as make runs it (--speech on) on a folder whose readable recordings fill the last batch exactly."""
    try:
        speech.SpeechDetector()
    except ImportError:
        pytest.skip("silero-vad is not installed (make test installs it)")
    n_files = len(pd.read_csv(os.path.join(demo_dir, "train_metadata.csv")))
    monkeypatch.setattr(speech, "BATCH", n_files // 2)  # 2 full batches, then an empty one: the crash at 256
    assert n_files % speech.BATCH == 0
    prep.prepare(demo_dir, str(tmp_path / "cache"), n_threads=2, speech_check="on")
    assert len(pd.read_csv(CachePaths(str(tmp_path / "cache")).rows)) >= n_files - 2
