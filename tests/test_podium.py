"""The podiums' models since 2025 as rows of the models table: another timm backbone, the SED head at 5 and at 20 s,
through make ensemble (2 rounds), make kaggle and infer.py pasted into a notebook cell; the SED head and the
timeline of frames against plain computations."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import common
import infer
from helpers import ROOT

PODIUM_TABLE = """# a non-B0 backbone with the recipe's head, the SED head at 5 s and at 20 s
id,seed,n_folds,fold,dataset,n_mels,hop_length,image_height,image_width,pseudoLabelChance,ampExpMin,ampExpMax,backbone,head,window_seconds
1,42,5,all,bc24,32,1024,32,32,35,-0.5,0.1,regnety_002,,
2,42,5,all,bc24,32,1024,32,32,45,-0.5,0.1,,sed,5
3,70,5,all,bc24,32,1024,32,128,25,-1.0,0.2,regnety_002,sed,20
"""
TINY = "--batch-size 8 --max-train-files 16 --soup-start 1 --threads 1"


def test_podium_table_through_make_ensemble_kaggle_and_a_notebook_cell(tmp_path, demo_dir):
    from test_kaggle import make_kaggle_root, run_notebook
    table, work = tmp_path / "podium.csv", tmp_path / "work"
    table.write_text(PODIUM_TABLE)
    done = subprocess.run(["make", "--no-print-directory", "-C", ROOT, f"PY={sys.executable}", "ensemble", "kaggle",
                           f"DATA={demo_dir}", f"WORK={work}", f"MODELS={table}", "EPOCHS=1", "ROUNDS=2",
                           "PRETRAINED=none", "THREADS=1", "-j2", "KAGGLE_WHEELS=", f"TRAIN_ARGS={TINY}"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "--window-seconds 20" in done.stdout  # prep cached what the 20-s row needs
    cache = np.load(work / "cache" / "train_audio.npy", mmap_mode="r")
    assert cache.shape[1] == 20 * common.SAMPLE_RATE
    assert (work / "pseudo1.npz").is_file() and (work / "round2" / "ensemble" / "manifest.json").is_file()
    specs = {s["name"]: s for s in infer.read_specs(str(work / "kaggle" / "ensemble"))}
    assert {n: (s["backbone"], s["head"], s["window_seconds"]) for n, s in specs.items()} == {
        "model1": ("regnety_002", "gem5", 5), "model2": ("tf_efficientnet_b0.ns_jft_in1k", "sed", 5),
        "model3": ("regnety_002", "sed", 20)}
    with open(work / "round2" / "model3" / "config.json") as f:
        assert json.load(f)["pseudo"].endswith("pseudo1.npz")  # round 2 trained on round 1's labels
    # the upload, attached in a Kaggle kernel: infer.py pasted whole into a cell, run with the defaults
    root = make_kaggle_root(tmp_path / "input", demo_dir, str(work / "kaggle" / "ensemble"))
    with open(work / "kaggle" / "infer.py") as f:
        source = f.read()
    working = tmp_path / "working"
    working.mkdir()
    run_notebook([source], working, root)
    sub = pd.read_csv(working / "submission.csv")
    competition = root / "birdclef-2025"
    assert list(sub.columns) == list(pd.read_csv(competition / "sample_submission.csv").columns)
    expected = [f"{os.path.splitext(os.path.basename(p))[0]}_{5 * (w + 1)}"
                for p in infer.list_audio(str(competition / "test_soundscapes")) for w in range(infer.count_windows(p))]
    assert list(sub["row_id"]) == expected
    values = sub.iloc[:, 1:].values
    assert np.isfinite(values).all() and 0 <= values.min() and values.max() <= 1 and values.std() > 0


def test_sed_head_against_a_plain_computation():
    """Clipwise = sum over time of softmax(tanh(attention)) x sigmoid(classifier) on GeM-over-frequency features;
    the training output holds its logit and the framewise max; eval gives that max, the export the frames."""
    torch.manual_seed(0)
    model = common.MelModel(5, 32, 64, head="sed", backbone="regnety_002", channels=1)
    mel = torch.rand(3, 1, 32, 157)
    with torch.no_grad():
        model.eval()
        features = model.backbone(torch.nn.functional.interpolate(mel, size=(32, 64), mode="bilinear",
                                                                  align_corners=False)).double().numpy()
        p = float(model.head.p)
        pooled = np.mean(np.clip(features, 1e-6, None) ** p, axis=2) ** (1 / p)       # (B, C, T)
        dense = model.head.dense[1]
        hidden = np.maximum(np.einsum("bct,hc->bht", pooled, dense.weight.double().numpy())
                            + dense.bias.double().numpy()[None, :, None], 0)
        def conv(layer):
            return np.einsum("bht,kh->bkt", hidden, layer.weight[:, :, 0].double().numpy()) + \
                layer.bias.double().numpy()[None, :, None]
        frames, attention = conv(model.head.classifier), conv(model.head.attention)
        weights = np.exp(np.tanh(attention))
        weights /= weights.sum(-1, keepdims=True)
        clipwise = (weights / (1 + np.exp(-frames))).sum(-1)
        assert np.allclose(model(mel).numpy(), frames.max(-1), atol=1e-4)
        model.train()
        model.backbone.eval()  # its batch statistics and stochastic depth as above: the head's training output
        for module in model.modules():  # the dropouts off: the training output itself, not a random draw
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        both = model(mel).numpy()
        assert both.shape == (3, 2, 5)
        assert np.allclose(both[:, 0], np.log(clipwise / (1 - clipwise)), atol=1e-3)
        assert np.allclose(both[:, 1], frames.max(-1), atol=1e-4)
        exported = model.inference_form((32, 157))(mel).numpy()
        assert np.allclose(exported, frames.transpose(0, 2, 1), atol=1e-4)
        # distillation reads the frames' mean features (GeM over frequency, then the mean over time)
        distilled = common.MelModel(5, 32, 64, head="sed", backbone="regnety_002", channels=1, distill_dim=7).eval()
        _, projected = distilled(mel, project=True)
        features = distilled.head.pooled(distilled.backbone(torch.nn.functional.interpolate(
            mel, size=(32, 64), mode="bilinear", align_corners=False))).mean(1)
        assert torch.allclose(projected, distilled.projection(features), atol=1e-5) and projected.shape == (3, 7)
    targets = torch.tensor(np.random.default_rng(0).random((3, 5)), dtype=torch.float32)
    halves = [common.bce_focal_loss(torch.from_numpy(both[:, i]), targets) for i in (0, 1)]
    assert abs(float(common.bce_focal_loss(torch.from_numpy(both), targets)) - float(sum(halves) / 2)) < 1e-6


@pytest.mark.parametrize("seconds", [5, 10, 20])
def test_timeline_against_a_plain_computation(seconds):
    """Windows of W s centred on each 5-s row (padded), framewise probabilities averaged where windows overlap on a
    fine time grid, each row the max of its part: against a loop over 0.01-s ticks."""
    rng = np.random.default_rng(seconds)
    n_rows, frames = 7, 4 * seconds // 5
    logits = rng.normal(size=(n_rows, frames, 3)).astype(np.float32)
    got = infer.rows_of_frames(logits, seconds)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    tick = 0.01
    ticks = np.arange(0, 5 * n_rows, tick) + tick / 2
    total, count = np.zeros((len(ticks), 3)), np.zeros(len(ticks))
    for i in range(n_rows):
        start = 5 * i - (seconds - 5) / 2
        inside = (ticks >= start) & (ticks < start + seconds)
        frame = ((ticks[inside] - start) / seconds * frames).astype(int)
        total[inside] += probs[i, frame]
        count[inside] += 1
    mean = total / count[:, None]
    expected = np.array([mean[(ticks >= 5 * r) & (ticks < 5 * r + 5)].max(0) for r in range(n_rows)])
    assert np.allclose(got, expected, atol=1e-5)
    # a window's one value (a gem5 head) covers its span; at 5 s it is the row's value itself
    clip = rng.normal(size=(n_rows, 3)).astype(np.float32)
    flat = infer.rows_of_frames(clip, seconds)
    spread = infer.rows_of_frames(np.repeat(clip[:, None], seconds // 5 * 2, axis=1), seconds)
    assert np.allclose(flat, spread, atol=1e-6)
    if seconds == 5:
        assert np.allclose(flat, 1 / (1 + np.exp(-clip)), atol=1e-6)


def test_centred_windows_and_blocks_with_context_equal_the_whole_file(tmp_path):
    """A 20-s network's rows scored a block at a time (with its context read ahead) equal the whole file's."""
    import soundfile as sf
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(int(47.3 * common.SAMPLE_RATE)) * 0.1).astype(np.float32)
    windows = infer.centred_windows(audio, 10, 20)
    assert windows.shape == (10, 20 * common.SAMPLE_RATE)
    pad = 7 * common.SAMPLE_RATE + common.SAMPLE_RATE // 2
    assert np.array_equal(windows[0, pad:], audio[:windows.shape[1] - pad]) and not windows[0, :pad].any()
    assert np.array_equal(windows[3, :], audio[15 * common.SAMPLE_RATE - pad:][:windows.shape[1]])
    path = tmp_path / "long.wav"
    sf.write(path, audio, common.SAMPLE_RATE)

    class Framewise:  # a stand-in SED network: each frame's logits follow the mel's mean level in 4 bands
        backend, window_seconds, name = "torch", 20, "sed20"
        mel_settings = common.MelSettings(n_mels=32, hop_length=1000)
        mel_key = infer.mel_key_of(mel_settings, 20)

        def logits(self, mel):
            m = mel[:, 0].reshape(len(mel), 4, 8, -1)[..., :640].reshape(len(mel), 4, 8, 16, 40).mean(dim=(2, 4))
            return (m.permute(0, 2, 1) * 6 - 3).numpy()        # (B, 16 frames, 4 classes)
    net = Framewise()
    front_end = infer.FrontEnd([net.mel_settings], [20])
    whole = infer.predict_files([str(path)], [net], front_end, pp=0.0, log=False).probs[str(path)]
    in_blocks, _ = infer.score_in_blocks(str(path), [net], front_end, pp=0.0, block_s=10)
    assert whole.shape == (10, 4) and np.abs(whole - in_blocks).max() < 1e-5


def test_the_cache_plan_counts_the_longest_window():
    """prep's disk plan at BirdCLEF 2024 and 2025 sizes (20,000 cached unlabeled windows), 5-s and 20-s windows: the
    figures docs/design.md gives."""
    import disk
    gb = {(n, s): round(disk.cache_plan(n, 20000, 0, s) / 1e9, 1) for n in (24459, 28564) for s in (5, 20)}
    assert gb == {(24459, 5): 14.2, (24459, 20): 37.7, (28564, 5): 15.5, (28564, 20): 43.0}
    assert disk.cache_plan(10, 0, 3, 20) == (10 * 4 + 3 * 7) * disk.WINDOW_BYTES  # the site's with 15 s each side


def test_clips_of_pseudo_labelled_runs_and_of_the_site_windows(tmp_path):
    """A 15-s model mixes in 15-s clips of consecutive labelled cached windows (target: the max of their labels; a
    shorter run zero-padded), and trains on the site's labelled windows inside 15-s clips at 2.5-s offsets (target:
    the labels of the file's windows at least half inside)."""
    ws = common.WINDOW_SAMPLES
    # the unlabeled cache: a run of 4 windows of a.ogg, a run of 2 of b.ogg (a short file), value = row number
    rows = pd.DataFrame(dict(path=["a.ogg"] * 4 + ["b.ogg"] * 2, end_second=[5, 10, 15, 20, 5, 10]))
    rows.to_csv(tmp_path / "unlabeled_windows.csv", index=False)
    np.save(tmp_path / "unlabeled_windows.npy", np.repeat(np.arange(6, dtype=np.float16)[:, None], ws, axis=1))
    probs = np.eye(6, 3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]] * np.arange(1, 7, dtype=np.float32)[:, None] / 10
    np.savez(tmp_path / "pseudo.npz", paths=np.asarray(rows["path"], dtype=str),
             end_seconds=rows["end_second"].to_numpy(), probs=probs, classes=np.array(["x", "y", "z"]))
    clips = common.PseudoWindows(str(tmp_path), str(tmp_path / "pseudo.npz"), ["x", "y", "z"], seconds=15)
    assert list(clips.source_rows) == [0, 1, 4]  # a.ogg from rows 0 and 1; b.ogg's short run once
    audio = clips.audio[np.arange(3)]
    assert audio.shape == (3, 3 * ws)
    assert [list(np.unique(a.reshape(3, ws), axis=1)[:, 0]) for a in audio] == [[0, 1, 2], [1, 2, 3], [4, 5, 0]]
    assert np.allclose(clips.targets, [probs[0:3].max(0), probs[1:4].max(0), probs[4:6].max(0)])
    # the site: windows 2 and 3 of s.ogg labelled (a; b), cached with 2 windows of context each side (20-s cache)
    site = pd.DataFrame(dict(path=["s.ogg", "s.ogg"], end_second=[15, 20], labels=["x", "y"], split="train"))
    context = np.stack([np.concatenate([np.full(ws, w + j, np.float16) for j in range(-3, 4)]) for w in (2, 3)])
    found = common.SiteClips(context, site, ["x", "y", "z"], 15)
    assert len(found.window) == 2 * 5  # 5 offsets: the window at 0, 2.5, ..., 10 s into the clip
    clips_of_2 = found.rows(np.arange(5))
    assert list(clips_of_2[0].reshape(3, ws)[:, 0]) == [2, 3, 4] and list(clips_of_2[4].reshape(3, ws)[:, 0]) == \
        [0, 1, 2]
    assert list(clips_of_2[1][::ws // 2]) == [1, 2, 2, 3, 3, 4]  # 2.5 s earlier: half windows
    # window 2's clips hold window 3 (y) at least half but the last (windows 0-2: only window 2 labelled, x)
    assert found.targets[:5].tolist() == [[1, 1, 0]] * 4 + [[1, 0, 0]]
    dealt = found.dealt(3, np.random.default_rng(0))
    assert len(dealt) == 6 and set(found.window[dealt]) == {0, 1}
