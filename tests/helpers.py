"""Helpers shared by test files: running infer.py alone, recognising a one-line error, checking mixed samples."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(result):
    """A finished subprocess stopped with exit 2 and exactly one stderr line, 'error: ...', no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") \
        and "Traceback" not in result.stderr


def run_alone(tmp_path, *args, env=None, python=sys.executable):
    """infer.py copied into an empty folder and run there, with nothing of the project importable."""
    kernel = tmp_path / "kernel"
    kernel.mkdir(exist_ok=True)
    shutil.copy(os.path.join(ROOT, "infer.py"), kernel / "infer.py")
    env = dict(os.environ, PYTHONPATH="", **(env or {}))
    return subprocess.run([python, "infer.py", *args], cwd=kernel, capture_output=True, text=True, env=env)


def count_mixes(dataset, audio, targets, windows, window_targets, epochs, batch=8, atol=1e-3):
    """(mixed, total) over `epochs` of a training set whose mixing gains are 1: each sample is either its own
    recording with its own target, or that recording plus one of `windows` (a float tensor, one row each) with
    the maximum of both targets; anything else fails an assert."""
    import numpy as np
    import torch
    mixed = total = 0
    for epoch in epochs:
        for (waves, batch_targets), (rows, _) in zip(dataset.epoch(epoch, batch), dataset.epoch_plan(epoch, batch)):
            own = torch.from_numpy(np.asarray(audio[rows], np.float32))
            own_targets = torch.from_numpy(targets[rows])
            for wave, target, o, ot in zip(waves, batch_targets, own, own_targets):
                total += 1
                if torch.equal(wave, o):
                    assert torch.equal(target, ot)
                    continue
                j = int(torch.argmin((windows - (wave - o)).abs().amax(1)))  # gains 10**0 = 1: wave = own + window
                assert torch.allclose(wave, o + windows[j], atol=atol)
                assert torch.equal(target, torch.maximum(ot, torch.from_numpy(window_targets[j])))
                mixed += 1
    return mixed, total
