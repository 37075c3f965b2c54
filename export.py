"""The inference artifact of one model: what infer.py loads, on any torch from 2.1 on.

    export_artifact(model, mel_settings, classes, "work/round1/model1/export", "model1", value=0.86)
"""
import os
import sys
from dataclasses import asdict

import torch

from files import atomic_write, save_json
from infer import EXPORT_FORMAT, SAMPLE_RATE, WINDOW_SECONDS, MelFrontEnd


def onnx_installed():
    """torch's ONNX exporter needs the onnx package, an optional extra (requirements-speed.txt)."""
    try:
        import onnx  # noqa: F401
        return True
    except ImportError:
        return False


def export_artifact(model, mel_settings, classes, out_dir, name, value=float("nan"), window_seconds=WINDOW_SECONDS):
    """Write what infer.py needs for one model into out_dir: <name>.onnx (OpenVINO and ONNX Runtime),
    <name>.ts (TorchScript, for infer.py's torch backend) and <name>.json (mel settings, image size, window,
    backbone, head, classes, value and cost). infer.py builds the mel front end from the settings with the code that
    trained the model. The network takes the mel of one window_seconds-s window and gives (B, classes) logits, or
    a sed head's framewise logits (B, T, classes), so that inference can score any 5-s span of the window.

    Both network files load in other torch versions than the one that wrote them (TorchScript files load in
    older and newer torch; torch.export's .pt2 files do not), so an ensemble exported under today's torch
    runs in a Kaggle kernel's older one (bench/compat.sh checks it).
    """
    import inspect
    import warnings
    samples = int(window_seconds * SAMPLE_RATE)
    model = model.inference_form((mel_settings.n_mels, samples // mel_settings.hop_length + 1))
    example = MelFrontEnd(mel_settings)(torch.randn(2, samples))
    os.makedirs(out_dir, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notes, tracer notes on constant shapes
        traced = torch.jit.trace(model, (example,), check_trace=False)
        atomic_write(os.path.join(out_dir, f"{name}.ts"), lambda tmp: torch.jit.save(traced, tmp))
        if onnx_installed():
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            atomic_write(os.path.join(out_dir, f"{name}.onnx"), lambda tmp: torch.onnx.export(
                model, (example,), tmp, input_names=["mel"], output_names=["logits"],
                dynamic_axes={"mel": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, **legacy))
        else:
            print(f"note: {name}: no .onnx written (pip install onnx): infer.py can then use its torch backend "
                  f"only, not OpenVINO or ONNX Runtime", file=sys.stderr)
    h, w = model.image_size
    save_json(dict(format=EXPORT_FORMAT, name=name, onnx=f"{name}.onnx", torchscript=f"{name}.ts",
                   mel_settings=asdict(mel_settings), image_height=h, image_width=w, window_seconds=window_seconds,
                   backbone=model.backbone_name, head=model.head_kind, classes=list(classes), value=value,
                   cost=h * w), os.path.join(out_dir, f"{name}.json"))
