"""Noisy student to the end: any number of rounds through the same make rules, sharpened pseudo labels, and the
post-processing of a file's rows (the shifted windows, a smoothing kernel, the boost toward the file's maximum)
recorded with the ensemble."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import ROOT

import infer  # noqa: E402
import tables  # noqa: E402
from common import PseudoWindows  # noqa: E402

FAKE = f"{sys.executable} {os.path.join(ROOT, 'tests', 'fake_steps.py')}"


def make(*args, dry_run=False):
    return subprocess.run(["make", "--no-print-directory", "-C", ROOT] + (["-n"] if dry_run else []) + list(args),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def test_rounds_5_through_make_then_nothing_to_do(tmp_path):
    """make ensemble ROUNDS=5 (its steps faked, make's plan real): five rounds, each on the last one's pseudo labels
    raised to its PL_POWER; the final ensemble is round 5's; a second call plans nothing."""
    work = tmp_path / "work"
    table = tmp_path / "one.csv"  # one model: the plan, not the training, is what is tested
    table.write_text("id,seed,n_folds,fold,dataset,n_mels,hop_length,image_height,image_width,pseudoLabelChance,"
                     "ampExpMin,ampExpMax\n1,42,5,all,bc24,64,1250,64,128,35,-0.5,0.1\n")
    args = [f"WORK={work}", "DATA=/data/none", f"MODELS={table}", f"PY={FAKE}", "ROUNDS=5", "PL_POWER=1,1.54,1.82"]
    done = make("ensemble", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    steps = [line.split() for line in (work / "steps.log").read_text().splitlines()]
    trains = [s for s in steps if s[0] == "train"]
    assert [s[1] for s in trains] == ["1", "2", "3", "4", "5"]
    assert [s[3] for s in trains] == ["-"] + [f"{work}/pseudo{r}.npz" for r in range(1, 5)]
    assert [s[4] for s in trains] == ["1", "1.54", "1.82", "1.82", "1.82"]  # the list's last value goes on
    assert [s[1] for s in steps if s[0] == "pseudo"] == [f"pseudo{r}.npz" for r in range(1, 5)]
    final = json.loads((work / "ensemble" / "manifest.json").read_text())
    assert final["round"] == "round5" and (work / "ensemble" / "postprocessing.json").exists()
    again = make("ensemble", *args[:-1], dry_run=True)  # PL_POWER left out: the recorded one, nothing to redo
    assert again.returncode == 0 and "train.py" not in again.stdout and "pseudo.py" not in again.stdout, again.stdout
    assert "PL_POWER=1,1.54,1.82 (recorded)" in again.stdout
    changed = make("ensemble", *args[:-1], "PL_POWER=1,2", dry_run=True)  # rounds 2 on retrain, round 1 does not
    trained = [line for line in changed.stdout.splitlines() if "train.py" in line]
    assert len(trained) == 4 and "--round 1 " not in " ".join(trained)


def test_rounds_and_numbers_out_of_range_stop_in_one_line(tmp_path):
    for variables, message in [(["ROUNDS=0"], "ROUNDS must be 1 to 9"), (["ROUNDS=10"], "ROUNDS must be 1 to 9"),
                               (["ROUNDS=auto", "MAX_ROUNDS=12"], "MAX_ROUNDS must be 1 to 9"),
                               (["ROUNDS=3", "PL_POWER=1,2,2,2"], "PL_POWER gives 4 values"),
                               (["PL_POWER=0"], "PL_POWER must be positive"),
                               (["PP_KERNEL=0.2,0.6"], "PP_KERNEL must have an odd number"),
                               (["PP_KERNEL=0.2,-1,0.2"], "PP_KERNEL must be weights >= 0"),
                               (["PP_BOOST=1.2"], "PP_BOOST must be in [0, 1]"), (["PP_TTA=x"], "PP_TTA must be in")]:
        done = make("ensemble", f"WORK={tmp_path}/w", "PY=python", *variables, dry_run=True)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0 and len(lines) == 1 and message in lines[0], (variables, done.stderr)
    plan = make("ensemble", f"WORK={tmp_path}/w", "PY=python", "ROUNDS=auto", "MAX_ROUNDS=4", dry_run=True)
    assert plan.returncode == 0 and "4 at most" in plan.stdout


def test_pl_power_sharpens_the_labels_a_round_trains_on(cache_dir, tmp_path):
    classes = tables.load_classes(tables.CachePaths(cache_dir).classes)
    rows = __import__("pandas").read_csv(tables.CachePaths(cache_dir).unlabeled_rows)
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, size=(len(rows), len(classes))).astype(np.float32)
    labels = tmp_path / "pseudo1.npz"
    np.savez(labels, paths=np.asarray(rows["path"], dtype=str), end_seconds=rows["end_second"].to_numpy(),
             probs=probs, classes=np.asarray(classes, dtype=str))
    plain = PseudoWindows(cache_dir, str(labels), classes)
    sharp = PseudoWindows(cache_dir, str(labels), classes, power=1.54)
    assert np.allclose(sharp.targets, plain.targets ** 1.54, atol=1e-6) and not np.allclose(sharp.targets,
                                                                                            plain.targets)


KNOWN = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.0], [0.8, 0.4]], dtype=np.float32)


def test_kernel_smoothing_against_numpy():
    kernel = [0.1, 0.2, 0.4, 0.2, 0.1]
    padded = np.vstack([np.zeros((2, 2)), KNOWN, np.zeros((2, 2))])
    expected = np.array([[sum(kernel[k] * padded[t + k, c] for k in range(5)) for c in range(2)]
                         for t in range(4)]) / sum(kernel)
    assert np.allclose(infer.smooth_kernel(KNOWN, kernel), expected, atol=1e-6)
    w = 0.5  # the write-up's neighbours are the kernel [w, 1, w]
    assert np.allclose(infer.smooth_neighbours(KNOWN, w)[:, 0],
                       np.convolve(KNOWN[:, 0], [w, 1, w], "same") / (1 + 2 * w), atol=1e-6)


def test_boost_toward_the_files_maximum_against_numpy():
    boosted = infer.boost_to_file_max(KNOWN, 0.2)
    assert np.allclose(boosted, 0.8 * KNOWN + 0.2 * np.array([[0.8, 0.9]]), atol=1e-6)
    assert np.array_equal(infer.boost_to_file_max(KNOWN, 0.0), KNOWN)


class LoudnessNetwork:
    """A stand-in network whose logits follow each window's mel (its mean level in each of 4 bands, weighted per
    class): unlike a random-weight model's, its outputs differ from window to window."""

    backend, window_seconds = "torch", 5

    def __init__(self, name, settings, seed):
        self.name, self.mel_key = name, settings.key
        self.weights = np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32) * 8

    def logits(self, mel):
        bands = mel[:, 0].reshape(len(mel), 4, -1, mel.shape[-1]).mean(dim=(2, 3)).numpy()
        return (bands - bands.mean(1, keepdims=True)) @ self.weights


def test_shifted_windows_against_numpy(tmp_path):
    """The rows of the windows shifted by 2.5 s: computed by hand (numpy windows, each network, mean) and blended
    (1 - w) p[t] + w (q[t] + q[t + 1]) / 2, against infer.py's whole-file and block-wise paths."""
    rate = infer.SAMPLE_RATE
    rng = np.random.default_rng(3)
    audio = (0.05 * rng.standard_normal(int(23.4 * rate))).astype(np.float32)
    for start in (3.7, 6.0, 12.4, 20.1):  # calls that straddle window edges
        part = slice(int(start * rate), int((start + 0.8) * rate))
        audio[part] += np.sin(np.arange(part.stop - part.start) * 0.6 * (1 + start / 10)).astype(np.float32)
    path = str(tmp_path / "a.wav")
    sf.write(path, audio, rate, subtype="FLOAT")
    settings = [infer.MelSettings(n_mels=32, hop_length=1024), infer.MelSettings(n_mels=48, hop_length=512)]
    networks = [LoudnessNetwork(f"m{k}", s, k) for k, s in enumerate(settings)]
    front_end = infer.FrontEnd(settings)
    pp = infer.PostProcessing(kernel=(1.0,), boost=0.0, tta=0.4)
    got = infer.predict_files([path], networks, front_end, pp=pp, log=False).probs[path]

    def ensemble_of(windows):
        mels = front_end(torch.from_numpy(windows))
        return np.mean([1 / (1 + np.exp(-n.logits(mels[n.mel_key]))) for n in networks], axis=0)
    n = 5
    plain = ensemble_of(infer.windows_of(audio, n))
    half = rate * 5 // 2
    shifted_audio = np.concatenate([np.zeros(half, np.float32), audio, np.zeros(2 * half, np.float32)])
    shifted = ensemble_of(np.stack([shifted_audio[k * 2 * half:(k + 1) * 2 * half] for k in range(n + 1)]))
    expected = 0.6 * plain + 0.4 * (shifted[:-1] + shifted[1:]) / 2
    assert np.abs(got - expected).max() < 1e-5 and np.abs(got - plain).max() > 0.01
    in_blocks, _ = infer.score_in_blocks(path, networks, front_end, pp=pp, block_s=10)
    assert np.abs(in_blocks - got).max() < 1e-5


def test_the_ensembles_post_processing_is_applied_and_a_flag_overrides_it(tiny_ensemble, demo_dir, tmp_path,
                                                                            capsys):
    """An ensemble with postprocessing.json (as make ensemble writes it) run by infer.py as the Kaggle cell runs it
    (no flags): the recorded post-processing; a flag replaces its part."""
    ensemble = tmp_path / "ensemble"
    shutil.copytree(tiny_ensemble, ensemble)
    import soup
    soup.record_post_processing(str(ensemble), "0.2,0.6,0.2", "0.3", "0")  # make ensemble's PP_* step
    recorded = infer.read_post_processing(str(ensemble))
    assert recorded == infer.PostProcessing(kernel=(0.2, 0.6, 0.2), boost=0.3, tta=0.0)
    audio_dir = os.path.join(demo_dir, "test_soundscapes")
    paths = infer.list_audio(audio_dir)
    networks, front_end, classes, _ = infer.load_ensemble(str(ensemble), "torch", 2)
    raw = infer.predict_files(paths, networks, front_end, pp=0.0, log=False).probs
    out = tmp_path / "sub.csv"
    sub = infer.main(["--ensemble", str(ensemble), "--audio", audio_dir, "--out", str(out), "--backend", "torch",
                      "--threads", "2"])  # what the Kaggle cell runs: its flags name no post-processing
    assert "post-processing: smoothing [0.2, 0.6, 0.2], boost 0.3" in capsys.readouterr().out
    first = paths[0]
    rows = sub[sub["row_id"].str.startswith(os.path.splitext(os.path.basename(first))[0] + "_")]
    expected = infer.boost_to_file_max(infer.smooth_kernel(raw[first], (0.2, 0.6, 0.2)), 0.3)
    assert np.abs(rows[classes].values - expected).max() < 1e-4
    args = infer.parse_args(["--pp-boost", "0", "--pp-weight", "0.5"])
    assert infer.post_processing_of(args, str(ensemble)) == dataclasses.replace(recorded, boost=0.0,
                                                                               kernel=(0.5, 1.0, 0.5))
    with pytest.raises(infer.InferError, match="odd length"):
        infer.post_processing_of(infer.parse_args(["--pp-kernel", "1,1"]), str(ensemble))
