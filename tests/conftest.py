"""Shared fixtures, made once per session: a tiny demo dataset, its cache, a tiny exported ensemble, one souped
round, and the suite's one end-to-end cycle through make (the write-up's table on a 2026-style folder)."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import tables  # noqa: E402
import files  # noqa: E402
import export  # noqa: E402
import demo_data  # noqa: E402
import infer  # noqa: E402
import prep  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data") / "demo")
    demo_data.make_demo(out, demo_seed=1, per_species=3, n_unlabeled=3, n_test=2, soundscape_s=12)
    return out


@pytest.fixture(scope="session")
def cache_dir(demo_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("work") / "cache")
    prep.prepare(demo_dir, out, n_threads=2)
    return out


def export_tiny_ensemble(folder, classes, specs):
    """Random-weight models exported as soup.py does; specs: (name, n_mels, hop, height, width, value)."""
    names = []
    for name, n_mels, hop, h, w, value in specs:
        torch.manual_seed(len(names))
        model = common.MelModel(len(classes), h, w)
        export.export_artifact(model, common.MelSettings(n_mels=n_mels, hop_length=hop), classes, folder, name,
                               value=value)
        names.append(name)
    files.save_json(infer.ensemble_manifest(names), os.path.join(folder, "manifest.json"))
    return folder


@pytest.fixture(scope="session")
def tiny_ensemble(cache_dir, tmp_path_factory):
    classes = tables.load_classes(tables.CachePaths(cache_dir).classes)
    folder = str(tmp_path_factory.mktemp("ensemble"))
    return export_tiny_ensemble(folder, classes, [("modelA", 32, 1024, 32, 64, 0.8), ("modelB", 48, 512, 32, 32, 0.7)])


TINY_TRAINING = ["--models", os.path.join(ROOT, "models-demo.csv"), "--pretrained", "none", "--epochs", "2",
                 "--batch-size", "8", "--threads", "2", "--image-height", "32", "--image-width", "32", "--n-mels", "32",
                 "--max-train-files", "16", "--soup-start", "1", "--fold", "4"]


@pytest.fixture(scope="session")
def souped_round(cache_dir, tmp_path_factory):
    """WORK/round1 with model1 trained (2 tiny epochs), souped and exported, and the round's ensemble bundled."""
    import soup
    import train
    work = tmp_path_factory.mktemp("souped")
    model1 = str(work / "round1" / "model1")
    train.main(["--model", "1", "--cache", cache_dir, "--out-dir", model1, *TINY_TRAINING])
    soup.make_soup(model1, cache_dir, n_threads=2)
    soup.bundle(str(work / "round1" / "ensemble"), [model1])
    return work


# one round: every round is made by the same rules, and the pseudo-label round through make runs in decide's test
WRITEUP_CYCLE_ROUNDS = 1
TEACHER_NAMED = 8  # of the cycle's 12 classes, the ones the stand-in teacher knows by scientific name


@pytest.fixture(scope="session")
def writeup_cycle(tmp_path_factory):
    """The suite's one cycle through make, shared by the tests that read its outputs: make ensemble with models.csv
    (the write-up's six models) for 2 epochs and WRITEUP_CYCLE_ROUNDS rounds from a weights file, on a tiny dataset
    in the layout Kaggle ships for 2026 (train.csv, taxonomy.csv, an empty test_soundscapes/), with a teacher of
    Perch v2's signature (a stand-in ONNX file that knows 8 of the classes by name): its labels as round 1's pseudo
    labels, its embeddings distilled (DISTILL=0.1), its vote at inference (TEACHER_VOTE=0.5). Its output is
    written to a log file as a user's `make ensemble ... > log 2>&1` writes it. {data, work, weights,
    teacher_model, log}: paths; {out}: the log."""
    import timm
    from helpers import perch_labels, perch_stand_in
    root = tmp_path_factory.mktemp("writeup-cycle")
    data, work, log = str(root / "birdclef-2026"), str(root / "work"), str(root / "make.log")
    demo_data.make_demo(data, demo_seed=2, per_species=1, n_unlabeled=2, n_test=1, soundscape_s=10, layout="2026")
    taxonomy = pd.read_csv(os.path.join(data, "taxonomy.csv"))  # scientific names, 8 of them the teacher's
    taxonomy["scientific_name"] = [f"Demus {c}" for c in taxonomy["primary_label"]]
    taxonomy.to_csv(os.path.join(data, "taxonomy.csv"), index=False)
    teacher_model = perch_stand_in(root / "perch_v2.onnx")
    teacher_labels = perch_labels(root / "labels.csv", list(taxonomy["scientific_name"][:TEACHER_NAMED]))
    weights = str(root / "b0.pth")  # stands in for make weights' file: the same architecture, no download
    torch.save(timm.create_model("tf_efficientnet_b0.ns_jft_in1k", pretrained=False).state_dict(), weights)
    with open(log, "w") as f:
        code = subprocess.run(["make", "--no-print-directory", "-C", ROOT, f"PY={sys.executable}", "ensemble",
                               f"DATA={data}", f"WORK={work}", "EPOCHS=2", f"ROUNDS={WRITEUP_CYCLE_ROUNDS}",
                               f"PRETRAINED={weights}", "THREADS=1", "-j2", f"TEACHER={work}/teacher.npz",
                               f"TEACHER_MODEL={teacher_model}", f"TEACHER_LABELS={teacher_labels}", "DISTILL=0.1",
                               "TEACHER_VOTE=0.5"], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
    with open(log, newline="") as f:
        out = f.read()
    assert code == 0, out[-3000:]
    return dict(data=data, work=work, weights=weights, teacher_model=teacher_model, log=log, out=out)
