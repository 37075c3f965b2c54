"""infer.py: pasted alone it writes a valid submission; post-processing, backends, budget, odd input."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import common
import tables
import files
import export
import infer
import demo_data
from helpers import one_line_error, run_alone, run_infer_here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def audio_dir(demo_dir, tmp_path_factory):
    """Demo test soundscapes (12 s), a 62-s stereo file at 44.1 kHz and a sample_submission beside the folder."""
    root = tmp_path_factory.mktemp("kaggle")
    folder = root / "test_soundscapes"
    shutil.copytree(os.path.join(demo_dir, "test_soundscapes"), folder)
    rng = np.random.default_rng(0)
    demo_data.write_ogg(str(folder / "long62.ogg"), rng.standard_normal((62 * 44100, 2)).astype(np.float32) * 0.05, 44100)
    classes = list(pd.read_csv(os.path.join(demo_dir, "sample_submission.csv")).columns[1:])
    pd.DataFrame(columns=["row_id"] + classes[::-1]).to_csv(root / "sample_submission.csv", index=False)
    return str(folder)


def expected_ids(audio_dir):
    ids = []
    for path in infer.list_audio(audio_dir):
        n = int(np.ceil(sf.info(path).duration / 5))
        ids += [f"{os.path.splitext(os.path.basename(path))[0]}_{5 * (w + 1)}" for w in range(n)]
    return ids


def test_pasted_alone_writes_a_valid_submission(tiny_ensemble, audio_dir, tmp_path):
    out = tmp_path / "submission.csv"
    result = run_alone(tmp_path, "--ensemble", tiny_ensemble, "--audio", audio_dir, "--out", str(out),
                       "--threads", "2", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    sub = pd.read_csv(out)
    assert list(sub["row_id"]) == expected_ids(audio_dir)
    assert sum(r.startswith("long62_") for r in sub["row_id"]) == 13 and "long62_65" in set(sub["row_id"])
    sample_columns = list(pd.read_csv(os.path.join(os.path.dirname(audio_dir), "sample_submission.csv")).columns)
    assert list(sub.columns) == sample_columns  # the class order of sample_submission.csv
    values = sub.iloc[:, 1:].values
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert values.std() > 0


def test_neighbour_smoothing_math():
    p = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.2, 0.0]])
    got = infer.smooth_neighbours(p, 0.5)
    by_hand = np.array([[0 + 0.5 * 1.0, 1 + 0.5 * 0.0],
                        [1 + 0.5 * (0.0 + 0.5), 0 + 0.5 * (1.0 + 0.5)],
                        [0.5 + 0.5 * (1.0 + 0.2), 0.5 + 0.5 * (0.0 + 0.0)],
                        [0.2 + 0.5 * 0.5, 0.0 + 0.5 * 0.5]]) / 2.0
    assert np.allclose(got, by_hand)
    assert np.array_equal(infer.smooth_neighbours(p, 0.0), p)
    assert np.allclose(infer.smooth_neighbours(p[:1], 0.5), p[:1] / 2)


def test_exported_model_equals_training_model(tmp_path, cache_dir):
    classes = tables.load_classes(tables.CachePaths(cache_dir).classes)
    torch.manual_seed(3)
    model = common.MelModel(len(classes), 32, 64)
    model.eval()
    settings = common.MelSettings(n_mels=48, hop_length=1024)
    export.export_artifact(model, settings, classes, str(tmp_path), "m")
    files.save_json(infer.ensemble_manifest(["m"]), str(tmp_path / "manifest.json"))
    networks, front_end, _, _ = infer.load_ensemble(str(tmp_path), "torch", 2)
    waves = torch.from_numpy(np.random.default_rng(0).standard_normal((5, common.WINDOW_SAMPLES)).astype(np.float32))
    with torch.no_grad():
        expected = model(common.MelFrontEnd(settings)(waves)).numpy()
        got = networks[0].run(front_end(waves)[settings.key])
    assert np.abs(got - expected).max() < 1e-4


def test_mels_that_share_n_fft_share_one_stft():
    """hop 1024 = every other frame of hop 512: one STFT serves both, with the training front end's numbers."""
    settings = [common.MelSettings(n_mels=32, hop_length=512), common.MelSettings(n_mels=32, hop_length=1024),
                common.MelSettings(n_mels=48, hop_length=1024),
                common.MelSettings(n_mels=32, hop_length=512, n_fft=1024)]
    front_end = infer.FrontEnd(settings)  # as load_ensemble builds it from the models' settings
    assert sorted(front_end.spectrograms) == [(5, 1024, 512), (5, 2048, 512)]  # (window s, n_fft, hop): one STFT each
    assert [stride for _, _, stride, _ in front_end.mels.values()] == [1, 2, 2, 1]
    rng = np.random.default_rng(1)
    waves = torch.from_numpy(rng.standard_normal((6, common.WINDOW_SAMPLES)).astype(np.float32))
    waves[:, :50000] *= 0.01  # a quiet start, so the per-window dB range matters
    got = front_end(waves)
    with torch.no_grad():
        for s in settings:
            expected = common.MelFrontEnd(s)(waves)
            assert got[s.key].shape == expected.shape == (6, 1, s.n_mels, s.frames)
            assert torch.abs(got[s.key] - expected).max() < 1e-5, s.key


def installed(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not (installed("openvino") or installed("onnxruntime")), reason="no optional backend installed")
def test_backends_agree(tmp_path, cache_dir, demo_dir, monkeypatch):
    # calls of 2 windows: each 12-s file (3 windows) runs one full call (OpenVINO's fixed-batch copy) and one
    # shorter call (its dynamic-batch copy)
    monkeypatch.setattr(infer, "network_pixels", 2 * 32 * 64)
    classes = tables.load_classes(tables.CachePaths(cache_dir).classes)
    torch.manual_seed(4)
    model = common.MelModel(len(classes), 32, 64).eval()
    with torch.no_grad():  # an untrained net saturates its sigmoids; bring logits into the sensitive range
        model.head.weight.mul_(0.2 / model.head.weight.abs().sum(1, keepdim=True).mean())
    settings = common.MelSettings(n_mels=32, hop_length=1024)
    export.export_artifact(model, settings, classes, str(tmp_path), "m")
    files.save_json(infer.ensemble_manifest(["m"]), str(tmp_path / "manifest.json"))
    paths = infer.list_audio(os.path.join(demo_dir, "test_soundscapes"))
    outputs = {}
    torch.set_num_threads(2)
    for backend in infer.available_backends(str(tmp_path), infer.read_specs(str(tmp_path))):
        networks, front_end, _, _ = infer.load_ensemble(str(tmp_path), backend, 2)
        assert networks[0].windows_per_call == 2
        threads_seen = []

        class CountingMels(infer.FrontEnd):
            def __call__(self, windows):
                threads_seen.append(torch.get_num_threads())
                return super().__call__(windows)
        counting_mels = CountingMels([settings])
        results, _, _, _ = infer.predict_files(paths, networks, counting_mels, pp=0.5, log=False)
        outputs[backend] = np.concatenate([results[p] for p in paths])
        # torch computes the mels with 1 thread while OpenVINO / ONNX Runtime threads run the networks
        assert set(threads_seen) == {2 if backend == "torch" else 1}, backend
        assert torch.get_num_threads() == 2  # and as before afterwards
    assert len(outputs) >= 2
    assert 0.02 < outputs["torch"].std() and 0.05 < outputs["torch"].mean() < 0.95  # not saturated
    for backend, values in outputs.items():
        assert np.abs(values - outputs["torch"]).max() < 1e-3, backend
    if installed("openvino"):  # infer.py's default precision: bf16 where the CPU has it natively, else f32
        import openvino
        native = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        networks, front_end, _, _ = infer.load_ensemble(str(tmp_path), "openvino", 2, "auto")
        assert networks[0].precision == ("bf16" if native else "f32")
        results, _, _, _ = infer.predict_files(paths, networks, front_end, pp=0.5, log=False)
        auto = np.concatenate([results[p] for p in paths])
        assert np.abs(auto - outputs["torch"]).max() < (2e-2 if native else 1e-3)


def test_tiny_budget_drops_models_and_writes_every_row(tiny_ensemble, audio_dir, tmp_path):
    out = tmp_path / "sub.csv"
    result = run_alone(tmp_path, "--ensemble", tiny_ensemble, "--audio", audio_dir, "--out", str(out),
                       "--threads", "2", "--backend", "torch", "--budget-min", "0.0001")
    assert result.returncode == 0, result.stderr
    assert "dropping model" in result.stderr
    sub = pd.read_csv(out)
    assert list(sub["row_id"]) == expected_ids(audio_dir)
    assert sub.iloc[:, 1:].notna().all().all()


def test_corrupt_file_warns_and_gets_neutral_rows(tiny_ensemble, audio_dir, tmp_path):
    folder = tmp_path / "audio"
    shutil.copytree(audio_dir, folder)
    (folder / "broken.ogg").write_bytes(b"OggS" + bytes(range(256)) * 10)
    noise = np.random.default_rng(0).standard_normal(32000 * 33).astype(np.float32) * 0.1
    sf.write(str(folder / "cut.flac"), noise, 32000)  # FLAC's header: 33 s = 7 windows
    with open(folder / "cut.flac", "r+b") as f:
        f.truncate(os.path.getsize(folder / "cut.flac") // 10)  # ... but a tenth of the data: it decodes short
    out = tmp_path / "sub.csv"
    result = run_alone(tmp_path, "--ensemble", tiny_ensemble, "--audio", str(folder), "--out", str(out),
                       "--threads", "2", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    assert "broken.ogg" in result.stderr and "unreadable" in result.stderr
    assert "cut.flac: damaged" in result.stderr and "cut.flac: unreadable" not in result.stderr
    sub = pd.read_csv(out).set_index("row_id")
    readable = [p for p in infer.list_audio(audio_dir)]
    counts = [int(np.ceil(sf.info(p).duration / 5)) for p in readable]
    broken = sub[sub.index.str.startswith("broken_")]
    assert len(broken) == max(set(counts), key=counts.count) == 3  # no header: the usual length here
    cut = sub[sub.index.str.startswith("cut_")]
    assert len(cut) == 7  # its header's length, predicted where it decodes (the rest: zeros), not neutral
    assert not np.allclose(cut.values[0], broken.values[0])
    assert np.allclose(broken.values, broken.values[0]) and sub.notna().all().all()


def damage(path, at_fraction, n_bytes=64):
    """Flip n_bytes bytes of a file at a fraction of its length (a corrupt ogg page, a flac frame out of sync)."""
    data = bytearray(open(path, "rb").read())
    start = int(len(data) * at_fraction)
    data[start:start + n_bytes] = bytes(b ^ 0x5A for b in data[start:start + n_bytes])
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("extension,kind", [(".ogg", "VORBIS"), (".flac", "PCM_16")])
def test_file_damaged_partway_is_scored_up_to_the_damage(tiny_ensemble, tmp_path, extension, kind):
    """An ogg with a corrupt page decodes short; a flac's decoder stops with an error: either way the windows
    before the damage get the predictions the undamaged file gets, one warning names the file, and the file
    keeps its header's rows."""
    rng = np.random.default_rng(3)
    t = np.arange(32000 * 30) / 32000
    audio = (0.05 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * (800 + 400 * np.sin(t)) * t))
    whole, damaged = tmp_path / "whole", tmp_path / "damaged"
    whole.mkdir(), damaged.mkdir()
    sf.write(str(whole / f"site{extension}"), audio.astype(np.float32), 32000, subtype=kind)
    reference = infer.read_audio(str(whole / f"site{extension}"))
    for at in (0.5, 0.4, 0.6, 0.45, 0.55):  # where a flipped page makes it decode short (vorbis may resync)
        shutil.copy(whole / f"site{extension}", damaged / f"site{extension}")
        damage(damaged / f"site{extension}", at)
        decoded = infer.read_audio(str(damaged / f"site{extension}"))
        if len(decoded) < len(reference):
            break
    assert len(decoded) < len(reference)
    same = int(np.argmax(np.abs(decoded[:len(reference)] - reference[:len(decoded)]) > 1e-6)) or len(decoded)
    intact = same // infer.WINDOW_SAMPLES   # windows wholly before the first differing sample
    assert 1 <= intact < 6
    shutil.copy(whole / f"site{extension}", damaged / f"intact{extension}")  # both in one run
    out = tmp_path / "sub.csv"
    result = run_alone(tmp_path, "--ensemble", tiny_ensemble, "--audio", str(damaged), "--out", str(out),
                       "--threads", "2", "--backend", "torch", "--pp-weight", "0")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and f"site{extension}" in warnings[0], result.stderr
    sub = pd.read_csv(out).set_index("row_id")
    rows = {name: sub.loc[[f"{name}_{5 * (w + 1)}" for w in range(6)]] for name in ("intact", "site")}
    assert len(sub) == 12  # the damaged file keeps its header's rows
    assert np.allclose(rows["site"].values[:intact], rows["intact"].values[:intact], atol=1e-5)


def test_empty_folder_writes_a_valid_file(tiny_ensemble, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "sub.csv"
    result = run_infer_here("--ensemble", tiny_ensemble, "--audio", str(tmp_path / "empty"), "--out", str(out),
                            "--backend", "torch", capsys=capsys)
    assert result.returncode == 0, result.stderr
    sub = pd.read_csv(out)
    classes = json.loads((Path(tiny_ensemble) / "modelA.json").read_text())["classes"]
    assert len(sub) == 0 and list(sub.columns) == ["row_id"] + classes


def test_missing_models_is_one_line_error(tmp_path, capsys):
    result = run_infer_here("--ensemble", str(tmp_path / "nothing"), "--audio", str(tmp_path), capsys=capsys)
    assert one_line_error(result) and "manifest.json" in result.stderr


def test_ensemble_from_an_older_export_is_one_line_error(tiny_ensemble, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_ensemble, old)
    spec = json.loads((old / "modelA.json").read_text())
    del spec["format"]  # exports of earlier versions: torch.export programs (.pt2) and no "format"
    (old / "modelA.json").write_text(json.dumps(spec))
    result = run_infer_here("--ensemble", str(old), "--audio", str(tmp_path), "--backend", "torch", capsys=capsys)
    assert one_line_error(result) and "older version" in result.stderr and "soup.py" in result.stderr
