"""One meaning per flag across the scripts: a flag that several scripts take has one help text everywhere, and
infer.py (self-contained) spells flags.py's texts out exactly; the old spelling --models of the ensemble still
works for one release, with a note."""
import argparse
import importlib
import os
import subprocess
import sys
from collections import defaultdict

import pytest

import flags
from helpers import ROOT, run_alone

sys.path.insert(0, os.path.join(ROOT, "bench"))
SCRIPTS = ["prep", "train", "soup", "pseudo", "infer", "kaggle", "report", "teacher", "demo_data", "ablate",
           "decide", "gpu", "score_demo", "train_speed", "infer_speed", "scale", "teacher_blend", "speech",
           "speech_speed"]


class Parsed(Exception):
    """Raised in place of parsing: carries the script's finished parser."""


def visible_flags(monkeypatch):
    """{flag: {script: help}} of every script's --help (hidden old spellings left out)."""
    def capture(parser, *args, **kwargs):
        raise Parsed(parser)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    found = defaultdict(dict)
    for name in SCRIPTS:
        module = importlib.import_module(name)
        monkeypatch.setattr(sys, "argv", [f"{name}.py"])
        with pytest.raises(Parsed) as parsed:
            module.main()
        for action in parsed.value.args[0]._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and action.help != argparse.SUPPRESS:
                    found[option][name] = action.help
    return found


def test_shared_flags_mean_the_same_everywhere(monkeypatch):
    found = visible_flags(monkeypatch)
    shared = {flag: helps for flag, helps in found.items() if len(helps) > 1}
    assert len(shared) >= 15  # --threads, --out, --ensemble, --models, --cache, ...
    differing = {flag: helps for flag, helps in shared.items() if len(set(helps.values())) > 1}
    assert not differing, differing
    for flag, helps in shared.items():
        assert flag in flags.SHARED, f"{flag} is taken by {sorted(helps)}: define it once in flags.py"
        assert set(helps.values()) == {flags.SHARED[flag]["help"]}
    for flag, help_text in found["--ensemble"].items():  # the ensemble and the models table: two flags
        assert "ensemble" in help_text
    assert all("table" in h for h in found["--models"].values())
    assert set(found["--models"]) >= {"train", "ablate", "gpu"}
    assert set(found["--ensemble"]) == {"infer", "pseudo", "kaggle"}


def test_help_of_a_shared_flag_cannot_be_given_twice():
    with pytest.raises(ValueError):
        flags.add_flag(argparse.ArgumentParser(), "--threads", help="my own")


def test_old_models_flag_of_infer_still_works_with_a_note(tiny_ensemble, demo_dir, tmp_path):
    audio = os.path.join(demo_dir, "test_soundscapes")
    result = run_alone(tmp_path, "--models", tiny_ensemble, "--audio", audio, "--out", str(tmp_path / "s.csv"),
                       "--backend", "torch")
    assert result.returncode == 0, result.stderr
    assert "--models is now --ensemble" in result.stderr and (tmp_path / "s.csv").exists()


def test_old_models_flag_of_pseudo_and_kaggle_still_works_with_a_note(tiny_ensemble, cache_dir, tmp_path):
    out = tmp_path / "pseudo.npz"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "pseudo.py"), "--models", tiny_ensemble, "--cache",
                             cache_dir, "--out", str(out), "--threads", "2", "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--models is now --ensemble" in result.stderr and out.exists()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "kaggle.py"), "--models", tiny_ensemble, "--out",
                             str(tmp_path / "kaggle"), "--wheels", "none"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--models is now --ensemble" in result.stderr and (tmp_path / "kaggle" / "KERNEL.md").exists()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "pseudo.py"), "--cache", cache_dir, "--out",
                             str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and "--ensemble" in result.stderr
