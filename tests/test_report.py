"""report.py on a tiny cycle: a finished model, a half-trained one, a round that never started, pseudo labels."""
import json
import os
import shutil
import sys

import pytest

import pseudo
import report
from errors import UserError
from helpers import run_alone

@pytest.fixture(scope="module")
def tiny_cycle(cache_dir, demo_dir, souped_round, tmp_path_factory):
    """WORK with round 1: model1 finished and bundled, model2 trained but not souped; round 2: model1 has one
    epoch of two (an interrupted run), model2 never started; pseudo1.npz from the round-1 ensemble."""
    work = tmp_path_factory.mktemp("cycle")
    shutil.copytree(souped_round, work, dirs_exist_ok=True)
    model1 = str(work / "round1" / "model1")
    shutil.copytree(model1, work / "round1" / "model2")
    os.remove(work / "round1" / "model2" / "soup.json")
    pseudo.pseudo_label(str(work / "round1" / "ensemble"), cache_dir, str(work / "pseudo1.npz"), "floor", 2)
    half = work / "round2" / "model1"
    half.mkdir(parents=True)
    lines = open(os.path.join(model1, "metrics.csv")).read().splitlines()
    (half / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")  # header and epoch 1
    shutil.copy(os.path.join(model1, "config.json"), half / "config.json")
    out = work / "submission.csv"  # an infer.py run leaves its timing beside its submission
    result = run_alone(work, "--ensemble", str(work / "round1" / "ensemble"), "--audio",
                       os.path.join(demo_dir, "test_soundscapes"), "--out", str(out), "--backend", "torch")
    assert result.returncode == 0, result.stderr
    return work


def test_report_names_every_model_and_round(tiny_cycle, tmp_path):
    page_path = report.write_report(str(tiny_cycle), str(tmp_path / "report"))
    page = open(page_path).read()
    for text in ("Round 1", "Round 2", "model1", "model2", "pseudo1", "soup of epochs 1, 2"):
        assert text in page, text
    assert "trained, no soup yet" in page and "training: 1 of 2 epochs" in page and "missing" in page
    assert "per-class floor (median) before normalization" in page
    timing = json.loads((tiny_cycle / "submission.timing.json").read_text())
    seconds = timing["seconds_per_soundscape"]["model1"]
    assert "submission.timing.json" in page and f"{seconds:.3f}" in page and seconds > 0
    for image in ("round1_model1.png", "round1_model2.png", "round2_model1.png", "pseudo1_hist.png"):
        path = tmp_path / "report" / image
        assert path.exists() and path.stat().st_size > 1000 and f'src="{image}"' in page
    assert not os.path.exists(tmp_path / "report.tmp")


def test_report_without_matplotlib_says_how_to_install(tiny_cycle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(UserError, match="pip install matplotlib"):
        report.write_report(str(tiny_cycle), str(tmp_path / "report"))


def test_report_lists_the_recordings_that_open_with_speech(tmp_path):
    (tmp_path / "cache").mkdir()
    rows = ["path,speech_end_seconds,kept"] + [f"train_audio/csa/CSA{i}.ogg,{4 + i / 2},{i != 3}" for i in range(8)]
    (tmp_path / "cache" / "speech.csv").write_text("\n".join(rows) + "\n")
    page = open(report.write_report(str(tmp_path), str(tmp_path / "report"))).read()
    assert "8 training file(s) open with speech" in page and "7 trained on from where it ends, 1 left out" in page
    assert "CSA0.ogg" in page and "CSA4.ogg" in page and "CSA5.ogg" not in page  # the first 5
    assert "left out: speech almost throughout" in page
