"""The Kaggle path: infer.py pasted into a notebook cell under a real Jupyter kernel, what it finds under a fake
/kaggle/input, the errors it stops with before scoring, every installed backend alone, and `make kaggle`'s
folder running its own KERNEL.md recipe."""
import os
import re
import shutil
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

import infer
from helpers import ROOT, one_line_error, run_alone, run_infer_here


def make_kaggle_root(root, demo_dir, ensemble):
    """root/birdclef-2024 and birdclef-2025 (the newest: 2 demo test soundscapes and a sample submission whose
    columns are the classes in reverse order), and the ensemble attached as a Kaggle Model version."""
    classes = list(pd.read_csv(os.path.join(demo_dir, "sample_submission.csv"), nrows=0).columns[1:])
    for year, files in (("2024", []), ("2025", infer.list_audio(os.path.join(demo_dir, "test_soundscapes")))):
        audio = root / f"birdclef-{year}" / "test_soundscapes"
        audio.mkdir(parents=True)
        for path in files:
            shutil.copy(path, audio)
        pd.DataFrame(columns=["row_id"] + classes[::-1]).to_csv(audio.parent / "sample_submission.csv", index=False)
    model = root / "birdclef-ensemble" / "pytorch" / "default" / "1"
    shutil.copytree(ensemble, model)
    return root


@pytest.fixture()
def kaggle_root(tmp_path, demo_dir, tiny_ensemble):
    return make_kaggle_root(tmp_path / "input", demo_dir, tiny_ensemble)


def check_submission(path, root):
    """A submission of birdclef-2025's test soundscapes in its sample submission's column order."""
    sub = pd.read_csv(path)
    competition = root / "birdclef-2025"
    assert list(sub.columns) == list(pd.read_csv(competition / "sample_submission.csv").columns)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(competition / "test_soundscapes"))
    assert sorted({r.rsplit("_", 1)[0] for r in sub["row_id"]}) == stems
    values = sub.iloc[:, 1:].values
    assert len(sub) > 0 and np.isfinite(values).all() and 0 <= values.min() and values.max() <= 1
    return sub


def run_notebook(cells, folder, root):
    """Execute the cells in a fresh Jupyter kernel (ipykernel) with folder as its working directory."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    os.environ["BIRDCLEF_KAGGLE_ROOT"] = str(root)  # the kernel inherits it; as /kaggle/input on Kaggle
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        del os.environ["BIRDCLEF_KAGGLE_ROOT"]
    return notebook


def test_pasted_into_a_notebook_cell(kaggle_root, tmp_path):
    """The whole file verbatim in one cell: the kernel's argv (-f kernel.json) never reaches argparse."""
    with open(os.path.join(ROOT, "infer.py")) as f:
        source = f.read()
    folder = tmp_path / "working"
    folder.mkdir()
    notebook = run_notebook([source, 'frame = main(["--out", "second.csv", "--pp-weight", "0"])\n'
                                     'print("rows", len(frame))'], folder, kaggle_root)
    first = check_submission(folder / "submission.csv", kaggle_root)
    second = check_submission(folder / "second.csv", kaggle_root)
    assert list(first["row_id"]) == list(second["row_id"])
    assert not np.allclose(first.iloc[:, 1:].values, second.iloc[:, 1:].values)  # --pp-weight 0 took effect
    printed = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    assert f"rows {len(second)}" in printed


def test_kaggle_models_layout_and_newest_competition_are_found(kaggle_root):
    (kaggle_root / "birdclef-2026-preview").mkdir()  # no test_soundscapes: not a candidate
    assert infer.find_models_dir(str(kaggle_root)) == str(kaggle_root / "birdclef-ensemble/pytorch/default/1")
    assert infer.find_audio_dir(str(kaggle_root)) == str(kaggle_root / "birdclef-2025" / "test_soundscapes")
    (kaggle_root / "birdclef-2026" / "test_soundscapes").mkdir(parents=True)
    assert infer.find_audio_dir(str(kaggle_root)) == str(kaggle_root / "birdclef-2026" / "test_soundscapes")


def test_a_stray_manifest_is_ignored_in_a_notebook_cell(kaggle_root, tmp_path):
    """Another attached dataset's manifest.json is not an ensemble of ours: infer.py pasted into a cell of a real
    kernel finds ours and scores."""
    (kaggle_root / "another-dataset").mkdir()
    (kaggle_root / "another-dataset" / "manifest.json").write_text('{"models": ["not ours"]}')
    assert infer.find_models_dir(str(kaggle_root)) == str(kaggle_root / "birdclef-ensemble/pytorch/default/1")
    with open(os.path.join(ROOT, "infer.py")) as f:
        source = f.read()
    folder = tmp_path / "working"
    folder.mkdir()
    run_notebook([source], folder, kaggle_root)
    check_submission(folder / "submission.csv", kaggle_root)


def test_budget_follows_the_competition_year(kaggle_root, tiny_ensemble, tmp_path):
    assert infer.default_budget_min("/kaggle/input/birdclef-2024/test_soundscapes") == 110
    assert infer.default_budget_min("/kaggle/input/birdclef-2025/test_soundscapes") == 80
    assert infer.default_budget_min("/kaggle/input/birdclef-2026/test_soundscapes") == 80
    assert infer.default_budget_min(str(tmp_path / "my_recordings")) == 80
    audio = str(kaggle_root / "birdclef-2024" / "test_soundscapes")
    for given, expected in ((None, "110"), ("7", "7")):  # --budget-min still wins
        result = run_alone(tmp_path, "--ensemble", tiny_ensemble, "--audio", audio, "--out", str(tmp_path / "s.csv"),
                           "--backend", "torch", *(["--budget-min", given] if given else []))
        assert result.returncode == 0 and f"time budget {expected} minutes" in result.stdout, result.stderr


def test_several_ensembles_stop_with_one_line(kaggle_root, tiny_ensemble, tmp_path, capsys):
    shutil.copytree(tiny_ensemble, kaggle_root / "older-ensemble")
    result = run_infer_here("--kaggle-root", str(kaggle_root), "--out", str(tmp_path / "sub.csv"), capsys=capsys)
    assert one_line_error(result), result.stderr
    assert "older-ensemble" in result.stderr and "pytorch/default/1" in result.stderr
    assert "--ensemble" in result.stderr and not (tmp_path / "sub.csv").exists()


def test_class_mismatch_stops_before_scoring(kaggle_root, tmp_path, capsys):
    sample = kaggle_root / "birdclef-2025" / "sample_submission.csv"
    columns = list(pd.read_csv(sample, nrows=0).columns)
    pd.DataFrame(columns=columns[:-1] + ["newbird"]).to_csv(sample, index=False)
    result = run_infer_here("--kaggle-root", str(kaggle_root), "--out", str(tmp_path / "sub.csv"), capsys=capsys)
    assert one_line_error(result), result.stderr
    assert "newbird" in result.stderr and columns[-1] in result.stderr
    assert "models (" not in result.stdout and not (tmp_path / "sub.csv").exists()  # nothing loaded or scored


def test_exported_folder_holds_no_pt2(tiny_ensemble):
    files = os.listdir(tiny_ensemble)
    assert not [f for f in files if f.endswith(".pt2")]
    for spec in infer.read_specs(tiny_ensemble):
        assert spec["format"] == infer.EXPORT_FORMAT and spec["mel_settings"]["n_fft"] == 2048
        assert spec["torchscript"] in files and spec["onnx"] in files


def test_every_backend_alone_writes_the_same_submission(kaggle_root, tiny_ensemble, tmp_path):
    backends = infer.available_backends(tiny_ensemble, infer.read_specs(tiny_ensemble))
    subs = {}
    for backend in backends:
        out = tmp_path / f"{backend}.csv"
        result = run_alone(tmp_path, "--kaggle-root", str(kaggle_root), "--out", str(out), "--backend", backend,
                           "--threads", "2", "--precision", "f32")
        assert result.returncode == 0, result.stderr
        subs[backend] = check_submission(out, kaggle_root)
    for backend, sub in subs.items():
        assert list(sub["row_id"]) == list(subs["torch"]["row_id"])
        assert np.abs(sub.iloc[:, 1:].values - subs["torch"].iloc[:, 1:].values).max() < 1e-3, backend


def test_make_kaggle_folder_runs_its_own_recipe(tmp_path, demo_dir, tiny_ensemble):
    work = tmp_path / "work"
    shutil.copytree(tiny_ensemble, work / "ensemble")
    result = subprocess.run(["make", "--no-print-directory", "-o", f"{work}/ensemble/manifest.json", "kaggle",
                             f"WORK={work}", "KAGGLE_WHEELS=", f"PY={sys.executable}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = work / "kaggle"
    assert sorted(os.listdir(folder)) == ["KERNEL.md", "ensemble", "infer.py"]
    root = tmp_path / "input"
    make_kaggle_root(root, demo_dir, tiny_ensemble)
    shutil.rmtree(root / "birdclef-ensemble")
    shutil.copytree(folder, root / "my-upload")  # the folder, uploaded as a Kaggle Dataset
    # other attached datasets: one ships a manifest.json of its own, one an infer.py (sorted before ours)
    (root / "another-dataset").mkdir()
    (root / "another-dataset" / "manifest.json").write_text('{"name": "some dataset", "files": 3}')
    (root / "a-decoy").mkdir()
    (root / "a-decoy" / "infer.py").write_text('raise RuntimeError("the wrong infer.py ran")')
    cells = re.findall(r"```python\n(.*?)```", (folder / "KERNEL.md").read_text(), flags=re.S)
    assert len(cells) == 2 and "--no-index" in cells[0]
    working = tmp_path / "working"
    working.mkdir()
    notebook = run_notebook(cells, working, root)
    check_submission(working / "submission.csv", root)
    printed = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    assert "time budget 80 minutes" in printed  # birdclef-2025 is the newest attached
