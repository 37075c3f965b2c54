"""train.py on a small slice of the demo data: outputs, resume after a crash, no redo of a finished run."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import train

TINY = ["--models", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models-demo.csv"),
        "--epochs", "2", "--batch-size", "8", "--threads", "2", "--image_height", "32", "--image_width", "32",
        "--n_mels", "32", "--max-train-files", "16", "--soup-start", "1"]


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
    run(cache_dir, crashed)
    assert "resuming" in capsys.readouterr().out
    assert list(pd.read_csv(os.path.join(crashed, "metrics.csv"))["epoch"]) == [1, 2]
    a = torch.load(os.path.join(reference, "epochs", "epoch_002.pt"))
    b = torch.load(os.path.join(crashed, "epochs", "epoch_002.pt"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_changed_inputs_train_again(cache_dir, tmp_path, capsys):
    out = str(tmp_path / "m1")
    run(cache_dir, out)
    run(cache_dir, out, "--lr", "5e-4")
    assert "inputs changed" in capsys.readouterr().out
    with open(os.path.join(out, "train_done.json")) as f:
        assert json.load(f)["inputs"]["settings"]["lr"] == 5e-4


def test_lr_schedule_warms_up_then_anneals():
    factors = [train.lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01


def test_bad_model_id_is_a_user_error(cache_dir, tmp_path):
    with pytest.raises(train.UserError):
        train.main(["--model", "99", "--cache", cache_dir, "--out-dir", str(tmp_path / "x"), *TINY])


def test_torchrun_two_processes_on_cpu(cache_dir, tmp_path):
    """The same train.py under torchrun (gloo on CPU): each rank trains its share, rank 0 writes."""
    import subprocess
    import sys
    out = str(tmp_path / "ddp")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             os.path.join(root, "train.py"), "--model", "1", "--cache", cache_dir, "--out-dir", out,
                             *TINY, "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(pd.read_csv(os.path.join(out, "metrics.csv"))["epoch"]) == [1, 2]
    assert sorted(os.listdir(os.path.join(out, "epochs"))) == ["epoch_001.pt", "epoch_002.pt"]


def test_predict_under_amp_keeps_the_mel_in_float32():
    """A loud window's power passes fp16's 65504: the mel must stay outside autocast (CUDA AMP; here CPU's)."""
    from common import BirdNet, MelFrontEnd, MelSettings
    torch.manual_seed(0)
    model = BirdNet(4, 32, 32)
    mel = MelFrontEnd(MelSettings(n_mels=32, hop_length=1024))
    t = np.arange(160000) / 32000
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, (3, 160000))
    waves = (0.9 * np.sin(2 * np.pi * np.array([[500.0], [1000.0], [3000.0]]) * t) + noise).astype(np.float32)
    assert mel.spectrogram(torch.from_numpy(waves)).max() > 65504
    exact = train.predict(model, mel, waves, torch.device("cpu"))
    amp = train.predict(model, mel, waves, torch.device("cpu"), amp=True)
    assert np.isfinite(amp).all() and np.abs(amp - exact).max() < 0.02
