"""train.py on a small slice of the demo data: outputs, resume after a crash, no redo of a finished run."""
import json
import os
import time
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import steps
import train
from helpers import ROOT
from tables import CachePaths

TINY = ["--models", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models-demo.csv"),
        "--epochs", "2", "--batch-size", "8", "--threads", "2", "--image_height", "32", "--image_width", "32",
        "--n_mels", "32", "--max-train-files", "16", "--soup-start", "1", "--pretrained", "none", "--fold", "4"]


def run(cache_dir, out_dir, *extra):
    train.main(["--model", "1", "--cache", cache_dir, "--out-dir", out_dir, *TINY, *extra])


def test_two_epochs_write_weights_and_metrics(cache_dir, tmp_path, capsys):
    out = str(tmp_path / "m1")
    run(cache_dir, out)
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    assert list(metrics["epoch"]) == [1, 2]
    for column in ("train_loss", "valid_loss", "lrap", "cmap", "f1", "auc", "lr", "seconds"):
        assert column in metrics and metrics[column].notna().all()
    assert sorted(os.listdir(os.path.join(out, "epochs"))) == ["epoch_001.pt", "epoch_002.pt"]
    state = torch.load(os.path.join(out, "epochs", "epoch_002.pt"))
    assert "head.weight" in state and "pool.p" in state
    assert os.path.exists(os.path.join(out, "train_done.json")) and not os.path.exists(os.path.join(out, "last.pt"))
    # a finished run is not redone
    before = os.stat(os.path.join(out, "metrics.csv")).st_mtime_ns
    run(cache_dir, out)
    assert "already trained" in capsys.readouterr().out
    assert os.stat(os.path.join(out, "metrics.csv")).st_mtime_ns == before


def test_resume_after_crash_matches_uninterrupted_run(cache_dir, tmp_path, monkeypatch, capsys):
    reference = str(tmp_path / "reference")
    run(cache_dir, reference)
    crashed = str(tmp_path / "crashed")
    real_predict = train.predict
    calls = []

    def predict_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the validation of epoch 2: epoch 1 is complete on disk
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)
    monkeypatch.setattr(train, "predict", predict_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(cache_dir, crashed)
    assert os.path.exists(os.path.join(crashed, "last.pt"))
    assert not os.path.exists(os.path.join(crashed, "train_done.json"))
    monkeypatch.setattr(train, "predict", real_predict)
    moved = str(tmp_path / "moved")
    shutil.move(crashed, moved)  # a moved work folder resumes where it stopped
    crashed = moved
    run(cache_dir, crashed)
    assert "resuming" in capsys.readouterr().out
    assert list(pd.read_csv(os.path.join(crashed, "metrics.csv"))["epoch"]) == [1, 2]
    a = torch.load(os.path.join(reference, "epochs", "epoch_002.pt"))
    b = torch.load(os.path.join(crashed, "epochs", "epoch_002.pt"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_changed_inputs_train_again_and_keep_the_old_run(cache_dir, tmp_path, capsys):
    out = str(tmp_path / "m1")
    run(cache_dir, out)
    first = {f: open(os.path.join(out, "epochs", f), "rb").read() for f in os.listdir(os.path.join(out, "epochs"))}
    run(cache_dir, out, "--lr", "5e-4")
    assert f"moved it to {out}.replaced-1" in capsys.readouterr().out
    with open(os.path.join(out, "train_done.json")) as f:
        assert json.load(f)["inputs"]["settings"]["lr"] == 5e-4
    aside = os.path.join(out + ".replaced-1", "epochs")
    assert {f: open(os.path.join(aside, f), "rb").read() for f in os.listdir(aside)} == first  # nothing lost
    run(cache_dir, out)  # back to the first settings: that run is taken back, not trained again
    printed = capsys.readouterr().out
    assert "took back" in printed and "already trained" in printed and "epoch=" not in printed
    with open(os.path.join(out, "train_done.json")) as f:
        assert json.load(f)["inputs"]["settings"]["lr"] == train.lr
    assert sorted(os.listdir(tmp_path)) == ["m1", "m1.replaced-2"]  # the lr 5e-4 run, kept aside


def test_copied_work_folder_is_reused(cache_dir, tmp_path, capsys):
    """Another place, other file times: a finished model is not trained again, nothing is deleted or moved."""
    work = tmp_path / "work"
    shutil.copytree(cache_dir, work / "cache")
    common_args = ["--model", "1", "--round", "1", *TINY]
    train.main([*common_args, "--work", str(work), "--cache", str(work / "cache")])
    copy = tmp_path / "copied"
    shutil.copytree(work, copy)
    for folder, _, files in os.walk(copy):  # as a copy without -a would: every file touched now
        for name in files:
            os.utime(os.path.join(folder, name))
    before = {f: os.stat(os.path.join(copy, "round1", "model1", f)).st_mtime_ns
              for f in os.listdir(copy / "round1" / "model1")}
    capsys.readouterr()
    train.main([*common_args, "--work", str(copy), "--cache", str(copy / "cache")])
    assert "already trained" in capsys.readouterr().out
    after = {f: os.stat(os.path.join(copy, "round1", "model1", f)).st_mtime_ns
             for f in os.listdir(copy / "round1" / "model1")}
    assert after == before and os.listdir(copy / "round1") == ["model1"]


def test_lr_schedule_warms_up_then_anneals():
    factors = [train.lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01


def test_bad_model_id_is_a_user_error(cache_dir, tmp_path):
    with pytest.raises(train.UserError):
        train.main(["--model", "99", "--cache", cache_dir, "--out-dir", str(tmp_path / "x"), *TINY])


def test_torchrun_two_processes_keep_the_recipe(cache_dir, tmp_path):
    """train.py under torchrun (gloo on CPU): the batch is global, so 2 processes take the steps and the
    learning-rate schedule of one, each with half of every batch and its own augmentations; rank 0 writes."""
    single = str(tmp_path / "single")
    run(cache_dir, single, "--max-train-files", "32")
    out = str(tmp_path / "ddp")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(root, "train.py"), "--model", "1", "--cache", cache_dir, "--out-dir", out,
                             *TINY, "--threads", "1", "--max-train-files", "32"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (pd.read_csv(os.path.join(d, "metrics.csv")) for d in (single, out))
    assert list(two["epoch"]) == [1, 2] and np.allclose(one["lr"], two["lr"])
    with open(os.path.join(single, "train_done.json")) as f, open(os.path.join(out, "train_done.json")) as g:
        done_one, done_two = json.load(f), json.load(g)
    from common import load_split, n_batches
    rows = len(load_split(cache_dir, train.model_config(train.parse_args(["--model", "1", *TINY])), 32)["train"])
    assert done_one["steps"] == done_two["steps"] == 2 * n_batches(rows, 8) and done_two["world_size"] == 2
    assert np.abs(one["train_loss"] - two["train_loss"]).max() < 0.1  # close, not equal: other augmentations
    assert sorted(os.listdir(os.path.join(out, "epochs"))) == ["epoch_001.pt", "epoch_002.pt"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                             os.path.join(root, "train.py"), "--model", "1", "--cache", cache_dir, "--out-dir",
                             str(tmp_path / "three"), *TINY, "--threads", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "multiple of 3" in result.stderr  # batch 8 does not split in 3


def test_batches_are_the_same_whatever_the_workers_and_split_across_ranks(cache_dir):
    from common import TrainingSet, load_split, n_batches
    config = dict(dataset="bc24", fold="4", n_folds=5, seed=42)
    data = load_split(cache_dir, config)
    dataset = TrainingSet(data["audio"], data["targets"], data["train"], seed=3)
    inline = list(dataset.epoch(2, 8))
    ahead = list(dataset.epoch(2, 8, workers=2))
    assert len(inline) == len(ahead) == n_batches(len(data["train"]), 8)
    for (a, t), (b, u) in zip(inline, ahead):
        assert torch.equal(a, b) and torch.equal(t, u)
    one = dataset.epoch_plan(2, 8)
    ranks = [dataset.epoch_plan(2, 8, rank, 2) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for b, (rows, _) in enumerate(one):  # each global batch is split, not duplicated or reshuffled
        halves = [ranks[r][b][0] for r in (0, 1)]
        assert len(halves[0]) == len(halves[1]) == 4 or len(rows) < 8
        assert sorted(np.concatenate(halves)) == sorted(rows) or len(rows) < 4


def test_the_last_partial_batch_trains_and_every_process_gets_two_rows_of_it():
    from common import TrainingSet, n_batches
    audio, targets = np.zeros((40, 4), np.float16), np.zeros((40, 3), np.float32)
    # (rows, processes, rows of each batch on rank 0, rows seen twice: a short last batch topped up)
    for n_rows, world_size, sizes, repeated in ((20, 1, [8, 8, 4], 0), (17, 1, [8, 8], 0), (18, 1, [8, 8, 2], 0),
                                                (20, 2, [4, 4, 2], 0), (18, 2, [4, 4, 2], 2), (5, 1, [5], 0)):
        dataset = TrainingSet(audio, targets, np.arange(n_rows), seed=1)
        plans = [dataset.epoch_plan(1, 8, rank, world_size) for rank in range(world_size)]
        assert all(len(plan) == n_batches(n_rows, 8) for plan in plans)
        assert [len(rows) for rows, _ in plans[0]] == sizes, (n_rows, world_size)
        seen = np.concatenate([rows for plan in plans for rows, _ in plan])
        assert len(seen) == sum(sizes) * world_size and len(seen) - len(set(seen)) == repeated


def test_the_plain_head_starts_as_timms_own():
    from common import MelModel
    torch.manual_seed(0)
    plain, gem5 = MelModel(12, 32, 32, head="plain", channels=1), MelModel(12, 32, 32)
    bound = 1 / np.sqrt(12)
    assert plain.head.weight.abs().max() <= bound and plain.head.weight.abs().max() > 0.9 * bound
    assert not plain.head.bias.any()
    assert gem5.head.weight.abs().max() <= 1 / np.sqrt(gem5.head.in_features)  # the write-up's head: torch's init


def test_validation_reads_its_rows_in_chunks(cache_dir):
    from common import MelModel, MelFrontEnd, MelSettings, load_split
    data = load_split(cache_dir, dict(dataset="bc24", fold="1", n_folds=5, seed=42))
    torch.manual_seed(0)
    model, mel = MelModel(len(data["classes"]), 32, 32), MelFrontEnd(MelSettings(n_mels=32, hop_length=1024))
    chunked = train.predict(model, mel, data["audio"], torch.device("cpu"), batch=3, rows=data["valid"])
    copied = train.predict(model, mel, np.asarray(data["audio"][data["valid"]]), torch.device("cpu"))
    assert chunked.shape == (len(data["valid"]), len(data["classes"])) and np.allclose(chunked, copied, atol=1e-6)


def test_amp_path_runs_on_cpu(cache_dir, tmp_path):
    """--amp on: the CUDA mixed-precision code path, with CPU autocast (bfloat16), trains and validates."""
    out = str(tmp_path / "amp")
    run(cache_dir, out, "--amp", "on", "--epochs", "1")
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    assert np.isfinite(metrics[["train_loss", "valid_loss", "auc"]].values).all()


def test_device_choice():
    from devices import pick_device
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "mps"
                                        if torch.backends.mps.is_available() else "cpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(train.UserError):
            pick_device("mps")


def test_writeup_weights_offline_stop_at_once_with_one_line(cache_dir, tmp_path):
    """The write-up's weights are train.py's default; with the hub unreachable (HF_ENDPOINT at a closed port) and no
    cached copy, train.py stops in seconds with one line naming both ways out, without timm's retries."""
    from helpers import one_line_error
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tiny = [a for a in TINY if a not in ("--pretrained", "none")]
    began = time.time()  # what starting train.py costs on this host now (the suite's other process shares it)
    subprocess.run([sys.executable, "-c", "import timm, train"], cwd=root, check=True)
    starting = time.time() - began
    began = time.time()
    result = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--model", "1", "--cache", cache_dir,
                             "--out-dir", str(tmp_path / "x"), *tiny], capture_output=True, text=True, env=env,
                            timeout=300)
    seconds = time.time() - began
    assert one_line_error(result), result.stderr[-2000:]
    assert "make weights" in result.stderr and "PRETRAINED=none" in result.stderr
    assert seconds < starting + 10, (seconds, starting)
    assert not os.path.exists(tmp_path / "x" / "epochs")


def test_make_passes_the_writeup_weights_and_the_demo_random_init(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def plan(*variables):
        return subprocess.run(["make", "-n", "-C", root, "round1", f"WORK={tmp_path}/w", "PY=python", *variables],
                              capture_output=True, text=True, check=True).stdout
    trains = [line for line in plan("DATA=/data/birdclef-2025").splitlines() if "train.py" in line]
    assert len(trains) == 6 and all('--pretrained "timm"' in line for line in trains)
    assert '--pretrained "none"' in plan("PRETRAINED=none")
    demo = subprocess.run(["make", "-n", "-C", root, "demo", "PY=python", f"DEMO_WORK={tmp_path}/demo"],
                          capture_output=True, text=True).stdout
    trains = [line for line in demo.splitlines() if "train.py" in line]
    assert len(trains) == 6 and all('--pretrained "none"' in line for line in trains)  # 3 models x 2 rounds
    assert "--round 3" not in demo and "round2/ensemble" in demo


def test_predict_under_amp_keeps_the_mel_in_float32():
    """A loud window's power passes fp16's 65504: the mel must stay outside autocast (CUDA AMP; here CPU's)."""
    from common import MelModel, MelFrontEnd, MelSettings
    torch.manual_seed(0)
    model = MelModel(4, 32, 32)
    mel = MelFrontEnd(MelSettings(n_mels=32, hop_length=1024))
    t = np.arange(160000) / 32000
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, (3, 160000))
    waves = (0.9 * np.sin(2 * np.pi * np.array([[500.0], [1000.0], [3000.0]]) * t) + noise).astype(np.float32)
    assert mel.spectrogram(torch.from_numpy(waves)).max() > 65504
    exact = train.predict(model, mel, waves, torch.device("cpu"))
    amp = train.predict(model, mel, waves, torch.device("cpu"), amp=True)
    assert np.isfinite(amp).all() and np.abs(amp - exact).max() < 0.02


def test_fold_all_trains_on_every_row_and_soups(cache_dir, tmp_path, capsys):
    import soup
    out = str(tmp_path / "all")
    run(cache_dir, out, "--fold", "all", "--max-train-files", "0")
    printed = capsys.readouterr().out
    rows = len(pd.read_csv(os.path.join(cache_dir, "train_rows.csv")))
    assert f"{rows} training rows, 0 validation rows" in printed
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    assert metrics["auc"].isna().all() and metrics["train_loss"].notna().all()
    report = soup.make_soup(out, cache_dir, n_threads=2)
    assert report["kept_epochs"] == [1, 2] and report["validated"] is False
    from export import onnx_installed
    assert os.path.exists(os.path.join(out, "export", "model1.ts"))
    assert os.path.exists(os.path.join(out, "export", "model1.onnx")) == onnx_installed()  # onnx: an extra


def run_script(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(root, "train.py"), *args], capture_output=True, text=True)


def test_settings_errors_are_one_line(cache_dir, tmp_path, capsys):
    from helpers import one_line_error, run_here

    def train_here(*args):  # no process of its own: the settings are checked before any work
        return run_here(train.main, *args, capsys=capsys)

    base = ["--model", "1", "--cache", cache_dir, "--out-dir", str(tmp_path / "x"), *TINY]
    result = train_here(*base, "--pseudoLabelChance", "150")
    assert one_line_error(result) and "percent" in result.stderr
    table = pd.read_csv(TINY[1], comment="#")
    bad_table = tmp_path / "models.csv"
    table.assign(pseudo_chance=1).to_csv(bad_table, index=False)
    result = train_here(*base, "--models", str(bad_table))
    assert one_line_error(result) and "pseudo_chance" in result.stderr
    result = train_here(*base, "--cuda-graph", "on", "--compile", "on")
    assert one_line_error(result) and "--cuda-graph off" in result.stderr
    assert not os.path.exists(tmp_path / "x")


def test_bc24_plus_without_extra_recordings_trains_on_the_competitions(cache_dir, capsys):
    """The write-up's model 5 (bc24+) on a cache without extra rows: one note, the same rows as bc24."""
    from common import load_split
    config = dict(dataset="bc24", fold="1", n_folds=5, seed=70)
    plain = load_split(cache_dir, config)
    assert "note" not in capsys.readouterr().err
    plus = load_split(cache_dir, {**config, "dataset": "bc24+"})
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 1 and "without extra recordings" in notes[0] and "--extra" in notes[0]
    assert np.array_equal(plain["train"], plus["train"]) and np.array_equal(plain["valid"], plus["valid"])
    assert len(plus["train"]) > 0


def test_run_identity_names_the_preset_and_leaves_out_how_it_runs(cache_dir):
    """The identity names the write-up's recipe by its one name; other ways to run the same recipe (--compile,
    --cache-on-device) are the same run: resumed and reused, never trained again; another preset is another run."""
    base = ["--model", "1", "--models", TINY[1], "--cache", cache_dir]
    config = train.model_config(train.parse_args(base))
    signature = train.input_signature(train.parse_args(base), config)
    assert signature["settings"]["preset"] == "writeup"
    for other in (["--preset", "writeup"], ["--compile", "on", "--cache-on-device", "on"]):
        assert train.input_signature(train.parse_args(base + other), config) == signature
    assert train.input_signature(train.parse_args(base + ["--preset", "baseline"]), config) != signature
    assert train.input_signature(train.parse_args(base + ["--lr", "5e-4"]), config) != signature


def test_training_from_the_cache_in_device_memory(cache_dir, tmp_path, capsys):
    """--cache-on-device on (on CPU here: the code a GPU runs) trains, says so, and writes its epochs."""
    out = str(tmp_path / "model1")
    train.main(["--model", "1", "--cache", cache_dir, "--out-dir", out, *TINY, "--cache-on-device", "on"])
    assert "in cpu's memory" in capsys.readouterr().out
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    assert len(metrics) == 2 and metrics["train_loss"].notna().all()


def test_cuda_graph_path_trains_on_cpu(cache_dir, tmp_path):
    """--cuda-graph on (on CPU: GraphedStep's code run eagerly; its CUDA replay is checked in test_augment where a
    GPU is): epochs with a warm-up step, the captured step and a partial last batch train and validate."""
    out = str(tmp_path / "graphed")
    run(cache_dir, out, "--cuda-graph", "on", "--max-train-files", "30")
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    assert len(metrics) == 2 and np.isfinite(metrics[["train_loss", "valid_loss", "auc"]].values).all()
    assert sorted(os.listdir(os.path.join(out, "epochs"))) == ["epoch_001.pt", "epoch_002.pt"]


def test_cuda_graph_choice_follows_what_a_graph_can_replay():
    from errors import UserError
    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def args(*extra):
        return train.parse_args(["--model", "1", *extra])
    assert steps.uses_cuda_graph(args(), cuda, distributed=False)             # auto: on for one process on a GPU
    assert not steps.uses_cuda_graph(args(), cpu, distributed=False)
    assert not steps.uses_cuda_graph(args(), cuda, distributed=True)          # torchrun
    for extra in (["--compile", "on"], ["--optimizer", "sgd"], ["--schedule", "onecycle"]):
        assert not steps.uses_cuda_graph(args(*extra), cuda, distributed=False), extra
        with pytest.raises(UserError, match="--cuda-graph off"):
            steps.uses_cuda_graph(args("--cuda-graph", "on", *extra), cuda, distributed=False)
    assert steps.uses_cuda_graph(args("--cuda-graph", "on"), cpu, distributed=False)  # the same code, eagerly
    assert not steps.uses_cuda_graph(args("--cuda-graph", "off"), cuda, distributed=False)


@pytest.mark.parametrize("capability, dtype, graphed", [((6, 0), torch.float16, False), ((7, 5), torch.float16, False),
                                                        ((8, 0), torch.bfloat16, True), ((9, 0), torch.bfloat16, True)])
def test_precision_follows_the_gpu(monkeypatch, capability, dtype, graphed):
    """bfloat16 and the CUDA graph where the GPU has bfloat16 in hardware (8.0 and up); float16 with gradient
    scaling, eager, on a P100 (6.0) or T4 (7.5), whatever torch.cuda.is_bf16_supported() says."""
    from errors import UserError
    names = {(6, 0): "Tesla P100-PCIE-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100", (9, 0): "NVIDIA H100"}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[capability])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 answers True (emulation)
    cuda = torch.device("cuda")
    args = train.parse_args(["--model", "1"])
    assert steps.amp_dtype_of(cuda)[0] == dtype
    assert steps.uses_cuda_graph(args, cuda, False, steps.amp_dtype_of(cuda)[0]) == graphed
    line = steps.precision_line(args, cuda, graphed)
    assert line.startswith(f"precision: {str(dtype)[6:]} autocast") and names[capability] in line
    assert ("gradient scaling" in line) == (dtype == torch.float16) and ("CUDA graph" in line) == graphed
    if dtype == torch.float16:
        with pytest.raises(UserError, match="float16"):
            steps.uses_cuda_graph(train.parse_args(["--model", "1", "--cuda-graph", "on"]), cuda, False, dtype)
    # forced either way
    assert steps.amp_dtype_of(cuda, "float16")[0] == torch.float16
    assert steps.amp_dtype_of(cuda, "bfloat16")[0] == torch.bfloat16
    assert steps.amp_dtype_of(torch.device("cpu"))[0] == torch.bfloat16
    assert steps.precision_line(args, torch.device("cpu"), False).startswith("precision: float32")


def test_the_float16_step_trains_on_cpu():
    """The T4/P100 step (float16 autocast; its gradient scaler is CUDA's) runs train.py's code on CPU."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from train_speed import StepBench
    bench = StepBench(32, 32, 32, 1024, 4, n_classes=5, device="cpu", amp=True, variant="float16")
    before = [p.detach().clone() for p in bench.run.trained.parameters()]
    losses = [float(bench.step(bench.waves, bench.targets)) for _ in range(2)]
    assert bench.amp_dtype == torch.float16 and np.isfinite(losses).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, bench.run.trained.parameters()))


def test_a_cycle_too_big_for_the_disk_stops_before_training(cache_dir, tmp_path, monkeypatch):
    """The disk plan: a fresh run counts what it and the later rounds' runs will save; too little free space stops
    it in one line before any epoch, naming KEEP_EPOCHS=soup where that fits, else a larger disk."""
    import disk
    from errors import UserError
    models = os.path.join(ROOT, "models-demo.csv")
    n_models = len(pd.read_csv(models, comment="#"))
    weights = 4.0e6 * 4
    full, pruned = (disk.cycle_plan(3 * n_models, 38, weights, keep) * disk.MARGIN for keep in ("all", "soup"))
    assert pruned < full and disk.cycle_plan(1, 38, weights) == (38 + 7 + 3) * weights
    out = str(tmp_path / "m1")
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 10**6)
    with pytest.raises(UserError, match=r"not enough disk for the cycle in .*: put WORK on a larger disk$"):
        run(cache_dir, out, "--models", models, "--work", str(tmp_path), "--cycle-rounds", "3")
    assert not os.path.exists(os.path.join(out, "epochs"))
    monkeypatch.setattr(disk, "free_bytes", lambda folder: (full + pruned) / 2)
    with pytest.raises(UserError, match="KEEP_EPOCHS=soup"):
        disk.check_cycle(str(tmp_path), 3 * n_models, 38, weights)
    disk.check_cycle(str(tmp_path), 3 * n_models, 38, weights, keep="soup")  # fits


def test_keep_epochs_soup_deletes_only_what_the_soup_does_not_use(tmp_path):
    import soup
    folder = tmp_path / "model1"
    os.makedirs(folder / "epochs")
    for e in range(3, 9):
        (folder / "epochs" / f"epoch_{e:03d}.pt").write_bytes(b"x" * 10)
    assert soup.keep_soup_epochs(str(folder), [4, 7, 8]) == 30
    assert sorted(os.listdir(folder / "epochs")) == ["epoch_004.pt", "epoch_007.pt", "epoch_008.pt"]


def fake_teacher_embeddings(cache, path, dim=24, seed=0):
    """A teacher's embeddings file as teacher.py writes it, random, for the cache's windows."""
    from files import file_digest
    paths = CachePaths(cache)
    rng = np.random.default_rng(seed)
    n = {k: len(np.load(f, mmap_mode="r")) if os.path.isfile(f) else 0
         for k, f in (("train", paths.audio), ("unlabeled", paths.unlabeled_audio), ("site", paths.site_audio))}
    np.savez(path, **{k: rng.standard_normal((v, dim)).astype(np.float16) for k, v in n.items()}, teacher="fake",
             rows_digest=file_digest(paths.rows), unlabeled_digest=file_digest(paths.unlabeled_rows),
             site_digest=file_digest(paths.site_labels) if n["site"] else "")
    return str(path)


def test_mixed_samples_carry_the_mix_of_their_teacher_embeddings_on_host_and_device(cache_dir, tmp_path):
    """With a teacher's embeddings, a batch's targets are the labels then the embedding; a sample mixed with a
    pseudo-labelled window (gains 1 here) carries the sum of both embeddings, on the host and on the device
    copy; the labels part is the max of both, as without embeddings."""
    from common import PseudoWindows, TrainingSet, load_split
    from steps import DeviceTrainingSet
    import pseudo as pseudo_step
    data = load_split(cache_dir, dict(dataset="bc24", fold="all", n_folds=5, seed=1))
    labels = str(tmp_path / "pseudo.npz")
    n_windows = len(pd.read_csv(CachePaths(cache_dir).unlabeled_rows))
    table = pd.read_csv(CachePaths(cache_dir).unlabeled_rows)
    pseudo_step.write_labels(labels, table["path"], table["end_second"],
                             np.random.default_rng(0).random((n_windows, len(data["classes"]))), data["classes"], "none")
    windows = PseudoWindows(cache_dir, labels, data["classes"])
    emb = np.load(fake_teacher_embeddings(cache_dir, tmp_path / "t.embeddings.npz"))
    windows.embeddings = emb["unlabeled"][windows.index].astype(np.float32)
    host = TrainingSet(data["audio"], data["targets"], data["train"], windows, 0.5, (0.0, 0.0), seed=3,
                       embeddings=emb["train"])
    n = len(data["classes"])
    for dataset in (host, DeviceTrainingSet(host, "cpu")):
        mixed = 0
        for (waves, targets), (rows, _) in zip(dataset.epoch(1, 8), dataset.epoch_plan(1, 8)):
            assert targets.shape[1] == n + 24
            own = torch.from_numpy(emb["train"][rows].astype(np.float32))
            for k, row in enumerate(rows):
                if torch.allclose(targets[k, n:], own[k], atol=1e-3):
                    assert torch.equal(targets[k, :n], torch.from_numpy(data["targets"][row]))
                    continue
                extra = targets[k, n:] - own[k]  # gains 1: own + the window's
                j = int(torch.argmin((torch.from_numpy(windows.embeddings) - extra).abs().amax(1)))
                assert torch.allclose(extra, torch.from_numpy(windows.embeddings[j]), atol=1e-3)
                assert torch.allclose(targets[k, :n], torch.maximum(torch.from_numpy(data["targets"][row]),
                                                                     torch.from_numpy(windows.targets[j])))
                mixed += 1
        assert mixed > 0


def test_distillation_trains_reports_its_loss_and_leaves_the_projection_out_of_the_export(cache_dir, tmp_path):
    import soup
    embeddings = fake_teacher_embeddings(cache_dir, tmp_path / "teacher.embeddings.npz")
    out = str(tmp_path / "distilled")
    run(cache_dir, out, "--distill", "0.1", "--teacher-embeddings", embeddings)
    metrics = pd.read_csv(os.path.join(out, "metrics.csv"))
    assert "distill_loss" in metrics and metrics["distill_loss"].between(0, 2).all()
    assert (metrics["train_loss"] > metrics["distill_loss"] * 0.1).all()
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["distill_dim"] == 24
    soup.make_soup(out, cache_dir, n_threads=2)
    exported = torch.jit.load(os.path.join(out, "export", "model1.ts"))
    assert not any("projection" in name for name, _ in exported.named_parameters())
    soup_state = torch.load(os.path.join(out, "soup.pt"), map_location="cpu", weights_only=False)
    assert any(k.startswith("projection.") for k in (soup_state.get("model", soup_state)))

    def identity(*extra):
        args = train.parse_args(["--model", "1", "--models", TINY[1], "--cache", cache_dir, *extra])
        return train.input_signature(args, train.model_config(args))
    plain = identity()
    assert identity("--distill", "0") == plain and "distill" not in plain
    assert identity("--distill", "0.1", "--teacher-embeddings", embeddings) != plain
    other = fake_teacher_embeddings(cache_dir, tmp_path / "other.embeddings.npz", seed=1)
    assert identity("--distill", "0.1", "--teacher-embeddings", other) != \
        identity("--distill", "0.1", "--teacher-embeddings", embeddings)
    with pytest.raises(train.UserError, match="does not exist"):
        identity("--distill", "0.1", "--teacher-embeddings", str(tmp_path / "none.npz"))
