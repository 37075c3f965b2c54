"""One meaning per flag across the scripts: a flag that several scripts take has one help text everywhere, and
infer.py (self-contained) spells flags.py's texts out exactly; the small tools print --help without torch."""
import argparse
import importlib
import os
import subprocess
import sys
from collections import defaultdict

import pytest

import flags
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
SCRIPTS = ["prep", "train", "soup", "pseudo", "infer", "kaggle", "report", "teacher", "demo_data", "ablate",
           "decide", "gpu", "score_demo", "train_speed", "infer_speed", "scale", "teacher_blend", "speech",
           "speech_speed", "timing", "site_score", "field_speed"]


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
    assert set(found["--ensemble"]) == {"infer", "pseudo", "kaggle", "timing", "site_score"}


def test_help_of_a_shared_flag_cannot_be_given_twice():
    with pytest.raises(ValueError):
        flags.add_flag(argparse.ArgumentParser(), "--threads", help="my own")


SMALL_TOOLS = ["report", "kaggle", "timing", "site_score"]


@pytest.mark.parametrize("name", SMALL_TOOLS)
def test_small_tools_print_help_without_importing_torch(name):
    script = os.path.join(ROOT, f"{name}.py")
    probe = ("import runpy, sys, time\n"
             "began = time.time()\n"
             f"sys.argv = [{script!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({script!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "sys.stderr.write(f'torch={\"torch\" in sys.modules} seconds={time.time() - began:.2f}')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "torch=False" in result.stderr, result.stderr[-500:]


def test_infer_keeps_the_same_help_style_as_flags():
    import infer
    assert [c.__name__ for c in infer.HelpFormatter.__mro__] == [c.__name__ for c in flags.HelpFormatter.__mro__]


def test_the_ensemble_has_one_flag(tiny_ensemble, cache_dir, tmp_path):
    """--ensemble is an exported ensemble folder; --models (a models table) is not taken by the scripts that read
    ensembles: argparse stops them, naming the flag they need."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "pseudo.py"), "--models", tiny_ensemble, "--cache",
                             cache_dir, "--out", str(tmp_path / "pseudo.npz")], capture_output=True, text=True)
    assert result.returncode == 2 and "--ensemble" in result.stderr and not (tmp_path / "pseudo.npz").exists()
