"""docs/kaggle-training.md's cells, run as a Kaggle GPU notebook runs them, on a small demo with Kaggle's paths
(/kaggle/input, /kaggle/working under a temporary root): a first session interrupted after its first epochs, its
work saved as a version's output, a second session that restores it and finishes the cycle."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd

from helpers import ROOT

import demo_data

DOC = os.path.join(ROOT, "docs", "kaggle-training.md")


def cells():
    """The doc's notebook cells: its ```bash blocks that open with %%bash, without that line."""
    blocks = re.findall(r"```bash\n(.*?)```", open(DOC).read(), re.S)
    return [b.split("\n", 1)[1] for b in blocks if b.startswith("%%bash\n")]


def as_here(cell, root, data):
    """A cell with /kaggle under `root`, its GPU settings for this CPU box (the only line changed)."""
    cell = cell.replace("/kaggle/", f"{root}/")
    return re.sub(r'^CYCLE=".*"$', f'CYCLE="DATA={data} THREADS=2"', cell, flags=re.M)


def interrupt_session(sid):
    """SIGINT to every process group of session `sid` but the cell's shell, as the cell's timer does when the
    session's time is up: timeout runs make in a group of its own and signals it, the cell goes on."""
    groups = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and int(fields[2]) != sid:  # after ")": state, ppid, pgrp, session
            groups.add(int(fields[2]))
    for group in groups:
        try:
            os.killpg(group, signal.SIGINT)
        except ProcessLookupError:
            pass


def session(root, data, env, interrupt_when=None):
    """Every cell in order, as a new session runs them; interrupt_when: a path whose appearance ends the session
    (the cycle cell gets the SIGINT that its timeout sends). Returns the output."""
    out = ""
    for cell in cells():
        process = subprocess.Popen(["bash", "-c", as_here(cell, root, data)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        if interrupt_when and "make ensemble" in cell:
            began = time.time()
            while not os.path.exists(interrupt_when) and process.poll() is None and time.time() - began < 600:
                time.sleep(0.2)
            assert process.poll() is None, process.communicate()[0][-3000:]  # still running when interrupted
            interrupt_session(process.pid)
        text, _ = process.communicate(timeout=900)
        assert interrupt_when or process.returncode == 0, text[-3000:]
        out += text
    return out


def test_the_kaggle_training_cells_resume_in_the_next_session(tmp_path):
    root = tmp_path / "kaggle"
    data = str(root / "input" / "birdclef-2026")
    demo_data.make_demo(data, demo_seed=4, per_species=2, n_unlabeled=2, n_test=1, soundscape_s=10, layout="2026")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for name in tracked:  # the repository uploaded as a dataset
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(str(root / "input" / "bird-cycle-code" / name)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), root / "input" / "bird-cycle-code" / name)
    models = str(tmp_path / "models.csv")  # two of make demo's models: one finishes, one is interrupted
    table = pd.read_csv(os.path.join(ROOT, "models-demo.csv"), comment="#")
    table[table["id"].isin([1, 3])].to_csv(models, index=False)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    first = dict(env, MODELS=models, EPOCHS="2", PRETRAINED="none", TRAIN_ARGS="--preset demo", ROUNDS="1")
    work = root / "working" / "work"
    os.makedirs(root / "working")  # Kaggle's, there when a session starts

    out = session(root, data, first, interrupt_when=str(work / "round1" / "model3" / "last.pt"))
    assert "stopped before the end" in out
    assert (work / "round1" / "model1" / "soup.json").exists() and not (work / "round1" / "model3" / "soup.json").exists()
    done_before = os.path.getmtime(work / "round1" / "model1" / "train_done.json")

    # Save Version: the output becomes a dataset; the next session starts with an empty /kaggle/working
    shutil.copytree(work, root / "input" / "bird-cycle-work" / "work", symlinks=True)
    shutil.rmtree(root / "working")
    os.makedirs(root / "working")
    out = session(root, data, env)  # no setting given: the first session's are recalled
    assert "resuming the cycle of the previous session" in out
    assert "resuming" in out and "round1/model3 at epoch 2" in out
    assert "EPOCHS=2 (recorded)" in out and "precision: float32" in out
    assert os.path.getmtime(work / "round1" / "model1" / "train_done.json") == done_before  # not trained again
    assert "train.py --model 1 --round 1 " not in out and "train.py --model 3 --round 1 " in out
    assert json.load(open(work / "ensemble" / "manifest.json"))["models"] == ["model1", "model3"]
    # KEEP_EPOCHS=soup: each model keeps only its soup's epochs
    for r, i in ((1, 1), (1, 3)):
        kept = json.load(open(work / f"round{r}" / f"model{i}" / "soup.json"))["kept_epochs"]
        assert sorted(os.listdir(work / f"round{r}" / f"model{i}" / "epochs")) == [f"epoch_{e:03d}.pt" for e in kept]
