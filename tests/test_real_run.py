"""The road a competitor takes: the write-up's whole table through make on a downloaded-2026-style folder (the
suite's shared cycle), its log as a file, then the steps after it (kaggle, submission, timing) that must reuse the
run's settings and never plan training again."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT

import demo_data
from conftest import TEACHER_NAMED, WRITEUP_CYCLE_ROUNDS


def make(*args, dry_run=False):
    """make in the repository with this test's Python; (return code, stdout, stderr)."""
    result = subprocess.run(["make", *(["-n"] if dry_run else []), "--no-print-directory", "-C", ROOT,
                             f"PY={sys.executable}", *args], capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def settings_files(work):
    """{path: (content, mtime)} of everything make keeps in WORK/.settings."""
    found = {}
    for folder, _, names in os.walk(os.path.join(work, ".settings")):
        for name in names:
            path = os.path.join(folder, name)
            with open(path) as f:
                found[path] = (f.read(), os.stat(path).st_mtime_ns)
    return found


def settings_shown(text):
    """The four lines of settings a cycle goal prints, as one."""
    lines = text.splitlines()
    first = [i for i, line in enumerate(lines) if line.startswith("settings of")][0]
    return " ".join(lines[first:first + 4])


def plans_no_work(plan):
    return not any(step in plan for step in ("prep.py", "train.py", "soup.py", "pseudo.py"))


@pytest.fixture(scope="module")
def real_run(writeup_cycle):
    """The suite's shared cycle (conftest.writeup_cycle): the write-up's whole table through make."""
    return writeup_cycle


def test_the_write_ups_whole_table_runs_to_its_ensemble(real_run):
    import json
    manifest = json.load(open(os.path.join(real_run["work"], "ensemble", "manifest.json")))
    assert manifest["models"] == [f"model{i}" for i in range(1, 7)]
    rounds = range(1, WRITEUP_CYCLE_ROUNDS + 1)
    assert all(os.path.exists(os.path.join(real_run["work"], f"round{r}", "model5", "soup.json")) for r in rounds)
    assert "dataset bc24+ without extra recordings" in real_run["out"]  # model 5, on the competition's data
    line = settings_shown(real_run["out"])
    assert f"DATA={real_run['data']} (given)" in line and "MODELS=models.csv (default)" in line
    assert "EPOCHS=2 (given)" in line and "DISTILL=0.1 (given)" in line and "TEACHER_VOTE=0.5 (given)" in line


def test_a_teacher_of_perch_v2s_signature_labels_and_is_distilled_in_every_round(real_run):
    """make ensemble TEACHER=... TEACHER_MODEL=... DISTILL=0.1: the teacher ran over the cache (its coverage
    line), and every model of every round learnt its embeddings (metrics.csv's distillation loss per epoch)."""
    assert f"perch_v2.onnx covers {TEACHER_NAMED} of 12 classes ({TEACHER_NAMED} exact)" in real_run["out"]
    for r in range(1, WRITEUP_CYCLE_ROUNDS + 1):
        for model in range(1, 7):
            metrics = pd.read_csv(os.path.join(real_run["work"], f"round{r}", f"model{model}", "metrics.csv"))
            assert list(metrics["epoch"]) == [1, 2] and metrics["distill_loss"].between(0, 2).all()


def test_the_cycles_log_reads_top_to_bottom_in_a_file(real_run):
    """make ensemble > log: no carriage returns and no redrawn bars; each training epoch's progress is a line or
    two (one at its start, one at its end with the loss), each line short enough to read."""
    root = os.path.dirname(real_run["work"])  # the test's own long temporary paths do not count
    log = real_run["out"].replace(root, "/data").replace(sys.executable, "python")
    lines = log.split("\n")
    assert "\r" not in log
    assert max(len(line) for line in lines) <= 320, max(lines, key=len)
    for model in range(1, 7):
        for epoch in (1, 2):
            bar = [line for line in lines if f"model {model} epoch {epoch}/2" in line]
            assert 1 <= len(bar) <= 2 * WRITEUP_CYCLE_ROUNDS + 2, bar  # each round's, a start and an end line
            assert any("loss=" in line and "100%" in line for line in bar)
    assert len(lines) < 1500


def test_later_calls_reuse_the_runs_settings_and_plan_no_training(real_run):
    work = real_run["work"]
    before = settings_files(work)
    assert any(p.endswith(os.path.join("run", "PRETRAINED")) for p in before)
    code, plan, err = make("kaggle", f"WORK={work}", dry_run=True)
    assert code == 0, err
    assert plans_no_work(plan) and "kaggle.py" in plan
    line = settings_shown(plan)
    assert f"DATA={real_run['data']} (recorded)" in line and f"PRETRAINED={real_run['weights']} (recorded)" in line

    # submission: the downloaded folder's test_soundscapes/ is empty (hidden): one line, before anything runs
    code, out, err = make("submission", f"WORK={work}")
    errors = [s for s in err.splitlines() if s.strip()]
    assert code != 0 and len(errors) == 1 and "holds no audio" in errors[0] and "hides the test set" in errors[0]
    assert not os.path.exists(os.path.join(work, "submission.csv"))
    hidden = demo_data.hidden_tests_path(real_run["data"])  # as if Kaggle's test set were there
    for name in os.listdir(hidden):
        os.link(os.path.join(hidden, name), os.path.join(real_run["data"], "test_soundscapes", name))
    try:
        code, plan, err = make("submission", f"WORK={work}", dry_run=True)
        assert code == 0, err
        assert plans_no_work(plan) and "infer.py" in plan
        # the real thing: the kaggle folder and the submission, and still no training
        code, out, err = make("kaggle", "submission", f"WORK={work}", "KAGGLE_WHEELS=none")
        assert code == 0, err[-3000:]
        assert plans_no_work(out)
        rows = pd.read_csv(os.path.join(work, "submission.csv"))
        assert len(rows) == 2 and list(rows.columns[1:]) == [s[0] for s in demo_data.DEMO_SPECIES]
        assert os.path.exists(os.path.join(work, "kaggle", "KERNEL.md"))
        # the teacher's vote (TEACHER_VOTE=0.5): the covered classes move, the rest and the columns stay
        assert f"covers {TEACHER_NAMED} of 12 classes, weight 0.5" in out
        without = os.path.join(work, "without-vote.csv")
        done = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--ensemble",
                               os.path.join(work, "ensemble"), "--audio",
                               os.path.join(real_run["data"], "test_soundscapes"), "--out", without, "--threads",
                               "1"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        plain = pd.read_csv(without)
        covered = list(rows.columns[1:TEACHER_NAMED + 1])
        assert list(plain.columns) == list(rows.columns) and list(plain["row_id"]) == list(rows["row_id"])
        assert not np.allclose(plain[covered].values, rows[covered].values, atol=1e-4)
        assert np.allclose(plain[rows.columns[TEACHER_NAMED + 1:]].values, rows[rows.columns[TEACHER_NAMED + 1:]].values,
                           atol=1e-5)
        # the upload holds the teacher's vote, and its notebook cell scores with it
        upload = os.path.join(work, "kaggle")
        assert sorted(os.listdir(os.path.join(upload, "teacher"))) == ["mapping.csv", "perch_v2.onnx", "weight.txt"]
        kaggle_input = os.path.join(os.path.dirname(work), "kaggle-input")
        shutil.copytree(upload, os.path.join(kaggle_input, "my-upload"))
        shutil.copytree(real_run["data"], os.path.join(kaggle_input, "birdclef-2026"))
        cell = re.findall(r"```python\n(.*?)```", open(os.path.join(upload, "KERNEL.md")).read(), flags=re.S)[1]
        notebook = os.path.join(os.path.dirname(work), "notebook")
        os.makedirs(notebook)
        done = subprocess.run([sys.executable, "-c", cell], cwd=notebook, capture_output=True, text=True,
                              env=dict(os.environ, BIRDCLEF_KAGGLE_ROOT=kaggle_input, PYTHONPATH=""))
        assert done.returncode == 0 and "weight 0.5" in done.stdout, done.stderr[-2000:]
        in_notebook = pd.read_csv(os.path.join(notebook, "submission.csv"))
        assert list(in_notebook.columns) == list(rows.columns)
        assert np.allclose(in_notebook.iloc[:, 1:].values, rows.iloc[:, 1:].values, atol=1e-3)
    finally:
        for name in os.listdir(hidden):
            os.remove(os.path.join(real_run["data"], "test_soundscapes", name))
    assert settings_files(work) == before  # contents and dates: nothing rewritten

    # a changed setting is planned again and, under -n, written nowhere
    code, plan, err = make("ensemble", f"WORK={work}", "EPOCHS=3", dry_run=True)
    assert code == 0 and plan.count("train.py") == 6 * WRITEUP_CYCLE_ROUNDS and "prep.py" not in plan
    assert settings_files(work) == before


def test_timing_projects_the_hidden_test_set(real_run):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "timing.py"), "--ensemble",
                             os.path.join(real_run["work"], "ensemble"), "--data", real_run["data"], "--files", "2",
                             "--threads", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    verdict = result.stdout.strip().splitlines()[-1]
    assert "2026: 700 x 60 s" in verdict and "of infer.py's 80" in verdict and "fits" in verdict
    result = subprocess.run([sys.executable, os.path.join(ROOT, "timing.py"), "--ensemble",
                             os.path.join(real_run["work"], "ensemble"), "--data", real_run["data"], "--files", "2",
                             "--threads", "1", "--budget-min", "0.01"], capture_output=True, text=True)
    assert result.returncode == 1 and "does not fit; infer.py would drop" in result.stdout


def test_projection_drops_the_least_valuable_models_first():
    import timing
    seconds = {"a": 2.0, "b": 4.0, "c": 3.0}  # network seconds over 100 s of audio; 1 s more of decoding and mels
    total, kept, kept_min = timing.project(60, 10, 100, seconds, ["a", "b", "c"], 1000, 2.2, 1.0)
    assert total == pytest.approx((60 + 10 / 100 * 1000) / 60)
    assert kept == ["a", "b"] and kept_min == pytest.approx((60 + 7 / 100 * 1000) / 60)
    assert timing.project(60, 10, 100, seconds, ["a", "b", "c"], 1000, 2.2, 0.5)[1] == ["a", "b", "c"]
    assert timing.spread(list("abcdefghij"), 3) == ["a", "e", "j"] and timing.spread(["a"], 3) == ["a"]
