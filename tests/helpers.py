"""Helpers shared by test files: running infer.py alone or a script's main in this process, recognising a one-line
error, checking mixed samples, a stand-in of Perch v2 (an ONNX file with its signature) and a labels file in its
form."""
import os
import shutil
import subprocess
import sys

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(result):
    """A finished subprocess stopped with exit 2 and exactly one stderr line, 'error: ...', no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") \
        and "Traceback" not in result.stderr


def run_here(main, *args, capsys):
    """A script's main() run in this process as its command line runs it (errors.run_main, sys.argv = args),
    for checks of bad input that need no process of their own: a CompletedProcess with the exit status and
    what was printed."""
    import errors
    argv, sys.argv = sys.argv, ["script", *args]
    try:
        errors.run_main(main)
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = argv
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, printed.out, printed.err)


def run_infer_here(*args, capsys):
    """infer.main(args) in this process, as its command line runs it (its exit on bad input caught): a
    CompletedProcess with the exit status and what was printed. For checks that need no process of their own;
    run_alone is the check that infer.py runs pasted alone."""
    import infer
    import torch
    threads = torch.get_num_threads()  # infer.py sets its own
    try:
        infer.main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, printed.out, printed.err)


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


PERCH_LABELS, PERCH_DIM = 14795, 1536


def perch_stand_in(path, n_labels=PERCH_LABELS, dim=PERCH_DIM, output_names=("label", "embedding",
                   "spatial_embedding", "spectrogram")):
    """An ONNX file with Perch v2's input and outputs, names and shapes: inputs [B, 160000] -> label [B, 14795]
    (logits), embedding [B, 1536], spatial_embedding [B, 16, 4, 1536], spectrogram [B, 500, 128]; small weights
    over frame energies, so windows differ."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.features, self.spec = torch.nn.Linear(320, 8), torch.nn.Linear(320, 128)
            self.label, self.embedding = torch.nn.Linear(8, n_labels), torch.nn.Linear(8, dim)

        def forward(self, inputs):
            frames = inputs.reshape(inputs.shape[0], 500, 320).abs()
            features = torch.tanh(self.features(frames).mean(1) * 20)
            embedding = self.embedding(features)
            return (self.label(features) * 4, embedding, embedding[:, None, None, :].expand(-1, 16, 4, -1),
                    self.spec(frames))

    import inspect
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(StandIn(), (torch.zeros(2, 160000),), str(path), input_names=["inputs"],
                      output_names=list(output_names), opset_version=17,
                      dynamic_axes={n: {0: "batch"} for n in ["inputs", *output_names]}, **legacy)
    return str(path)


def perch_labels(path, names, n_labels=PERCH_LABELS):
    """A labels file in Perch's form (one column of scientific names under a header), `names` first, then
    filler species up to n_labels rows."""
    rows = list(names) + [f"Fillerus species{i}" for i in range(n_labels - len(names))]
    pd.DataFrame({"inat2024_fsd50k": rows}).to_csv(path, index=False)
    return str(path)
