"""The site's labelled soundscapes: read as Kaggle writes them, split by file, cached, trained on, scored, and the
stop rule of ROUNDS=auto."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import demo_data  # noqa: E402
import prep  # noqa: E402
import steps  # noqa: E402
import site_score  # noqa: E402
from files import save_json  # noqa: E402
from helpers import count_mixes  # noqa: E402
from metrics import macro_roc_auc  # noqa: E402
from tables import CachePaths, read_site_labels, split_labels  # noqa: E402


def test_times_as_kaggle_writes_them():
    assert prep.seconds_of("00:01:05") == 65 and prep.seconds_of("01:00:00") == 3600 and prep.seconds_of("15") == 15
    assert [prep.window_index(e) for e in (5, 10, 60)] == [0, 1, 11]
    assert demo_data.clock(65) == "00:01:05"
    assert prep.seconds_of("noon") is None  # the row is skipped, with one line (tests/test_bad_input.py)


def test_doubled_rows_merge_unknown_labels_warn_once_and_missing_files_are_skipped(tmp_path, capsys):
    folder = tmp_path / "train_soundscapes"
    folder.mkdir()
    for name in ("a.ogg", "b.ogg"):
        (folder / name).write_bytes(b"")  # only their presence is read here
    labels = tmp_path / "train_soundscapes_labels.csv"
    pd.DataFrame([("a.ogg", "00:00:00", "00:00:05", "x;y"), ("a.ogg", "00:00:00", "00:00:05", "x;y"),
                  ("a.ogg", "00:00:05", "00:00:10", "y;mystery1"), ("a.ogg", "00:00:05", "00:00:10", "z"),
                  ("b.ogg", "00:00:55", "00:01:00", "mystery2"), ("gone.ogg", "00:00:00", "00:00:05", "x")],
                 columns=["filename", "start", "end", "primary_label"]).to_csv(labels, index=False)
    site = prep.site_windows_of_soundscape_labels(str(labels), str(folder), ["x", "y", "z"])
    err = capsys.readouterr().err
    assert list(site["end_second"]) == [5, 10, 60]  # one row per window: the doubled rows merged
    assert [split_labels(t) for t in site["labels"]] == [["x", "y"], ["y", "z"], []]  # united; unknown dropped
    assert list(site["path"]) == [str(folder / "a.ogg")] * 2 + [str(folder / "b.ogg")]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "2 label(s)" in warnings[0] and "mystery1, mystery2" in warnings[0]
    assert "1 labelled file(s) skipped" in warnings[1] and "gone.ogg" in warnings[1]


def test_split_is_by_file_and_never_holds_out_every_file():
    site = pd.DataFrame({"path": [f"f{i // 3}" for i in range(30)], "end_second": [5] * 30, "labels": "x"})
    split = prep.split_site_files(site, 0.25, np.random.default_rng(0))
    per_file = pd.Series(split).groupby(site["path"]).nunique()
    assert (per_file == 1).all() and (split == "valid").sum() == 3 * 2  # 10 files: 2.5 -> 2 whole files held out
    one = site[site["path"] == "f0"]
    assert (prep.split_site_files(one, 0.25, np.random.default_rng(0)) == "train").all()
    assert (prep.split_site_files(site, 0.0, np.random.default_rng(0)) == "train").all()


@pytest.fixture(scope="module")
def site_demo(tmp_path_factory):
    """A tiny demo whose first 6 unlabeled soundscapes are labelled, and its cache."""
    root = tmp_path_factory.mktemp("site")
    data = str(root / "data")
    demo_data.make_demo(data, demo_seed=3, per_species=2, n_unlabeled=8, n_test=2, soundscape_s=30, n_labelled=6)
    cache = str(root / "cache")
    prep.prepare(data, cache, n_threads=2, holdout=0.34)
    return data, cache


def test_demo_writes_labels_as_kaggle_does(site_demo):
    data, _ = site_demo
    table = pd.read_csv(os.path.join(data, "train_soundscapes_labels.csv"), dtype=str)
    assert list(table.columns) == ["filename", "start", "end", "primary_label"]
    assert (table.groupby(list(table.columns)).size() == 2).all()  # every row twice
    assert table["start"].str.fullmatch(r"\d\d:\d\d:\d\d").all()
    labelled = sorted(set(table["filename"]))
    assert len(labelled) <= 6 and all(f.startswith("U") for f in labelled)
    last = table[table["filename"] == "U030005.ogg"]
    assert len(last) == 0 or last["end"].max() <= "00:00:30"  # the last file: labelled in its first half only
    assert demo_data.SITE_ONLY_SPECIES[0] in pd.read_csv(os.path.join(data, "sample_submission.csv")).columns
    assert not os.path.isdir(os.path.join(data, "train_audio", demo_data.SITE_ONLY_SPECIES[0]))


def test_prep_caches_training_windows_and_keeps_labelled_ones_out_of_the_unlabeled_cache(site_demo):
    data, cache = site_demo
    paths = CachePaths(cache)
    site = read_site_labels(paths.site_labels)
    assert set(site["split"]) == {"train", "valid"}
    assert (site.groupby("path")["split"].nunique() == 1).all()  # by file
    train = site[site["split"] == "train"]
    audio = np.load(paths.site_audio)
    assert len(audio) == len(train)
    path, end = train["path"].iloc[-1], int(train["end_second"].iloc[-1])
    expected = common.windows_of(common.read_audio(path), end // 5)[end // 5 - 1]
    assert np.allclose(audio[-1].astype(np.float32), expected, atol=1e-3)  # float16 of the window ending there
    unlabeled = pd.read_csv(paths.unlabeled_rows)
    cached = set(zip(unlabeled["path"], unlabeled["end_second"]))
    assert not cached & set(zip(train["path"], train["end_second"]))  # labelled windows: never pseudo-labelled
    held_out = set(site.loc[site["split"] == "valid", "path"])
    assert not held_out & set(unlabeled["path"])  # held-out files: not a window of them
    assert len(unlabeled) > 0


def test_site_windows_train_with_their_labels_and_teach_the_site_only_species(site_demo):
    _, cache = site_demo
    config = dict(dataset="bc24", fold="all", n_folds=5, seed=1)
    without = common.load_split(cache, config)
    data = common.load_split(cache, config, site_share=0.5)
    site = read_site_labels(CachePaths(cache).site_labels)
    n_site = int((site["split"] == "train").sum())
    first = len(without["audio"])
    assert data["site_windows"] == n_site and data["site_repeats"] == common.site_repeats(len(without["train"]),
                                                                                           n_site, 0.5)
    assert len(data["train"]) == len(without["train"]) + n_site * data["site_repeats"]
    rows = np.arange(first - 2, first + 2)
    stacked = data["audio"][rows]
    assert np.array_equal(stacked[:2], without["audio"][rows[:2]])
    assert np.array_equal(stacked[2:], np.load(CachePaths(cache).site_audio)[:2])
    only = data["classes"].index(demo_data.SITE_ONLY_SPECIES[0])
    assert without["targets"][:, only].sum() == 0  # no recording of it
    expected = [demo_data.SITE_ONLY_SPECIES[0] in split_labels(t) for t in site.loc[site["split"] == "train", "labels"]]
    assert np.array_equal(data["targets"][first:, only] > 0, expected)
    assert common.site_repeats(35000, 550, 0.1) == 7 and common.site_repeats(100, 550, 0.1) == 1


def test_site_windows_mixed_into_samples_with_their_labels_on_host_and_device(site_demo):
    """--site-share 0 --site-mix-chance 0.5: the recordings train alone as samples, and each is mixed with one of the
    site's labelled windows (the sum of both at gain 1 here, the target the max of both), the same on the device
    copy; the site-only species learns only from those mixes."""
    import torch
    _, cache = site_demo
    config = dict(dataset="bc24", fold="all", n_folds=5, seed=1)
    without = common.load_split(cache, config)
    data = common.load_split(cache, config, site_mix_chance=0.5)
    site = read_site_labels(CachePaths(cache).site_labels)
    train_site = site[site["split"] == "train"]
    assert np.array_equal(data["train"], without["train"]) and data["site_repeats"] == 0
    assert len(data["site"]) == len(train_site) == data["site_windows"] and data["site_mix_chance"] == 0.5
    assert "mixed into 50 % of the samples" in common.split_summary(data, dict(config, id=1))
    only = data["classes"].index(demo_data.SITE_ONLY_SPECIES[0])
    expected = [demo_data.SITE_ONLY_SPECIES[0] in split_labels(t) for t in train_site["labels"]]
    assert np.array_equal(data["site"].targets[:, only] > 0, expected) and any(expected)
    windows = torch.from_numpy(np.asarray(data["site"].audio[data["site"].index], np.float32))
    host = common.TrainingSet(data["audio"], data["targets"], data["train"], amp_exp_range=(0.0, 0.0), seed=3,
                              site=data["site"], site_mix_chance=0.5)
    for dataset in (host, steps.DeviceTrainingSet(host, "cpu")):
        mixed, total = count_mixes(dataset, data["audio"], data["targets"], windows, data["site"].targets,
                                   range(1, 4), atol=1e-2)
        assert abs(mixed - total * 0.5) <= 4.5 * np.sqrt(total * 0.25)
    expected_bytes = (len(np.unique(data["train"])) + len(train_site)) * common.WINDOW_SAMPLES * 2
    assert steps.DeviceTrainingSet.bytes_needed(host) == expected_bytes
    with pytest.raises(common.UserError):
        common.load_split(cache, config, site_mix_chance=1.5)


def test_site_share_and_mix_chance_combine(site_demo):
    """--site-share 0.5 --site-mix-chance 0.25: the labelled windows are samples of their own (as with the share
    alone) and are also mixed into a quarter of the samples (as with the mix chance alone); the line says both."""
    _, cache = site_demo
    config = dict(dataset="bc24", fold="all", n_folds=5, seed=1)
    alone = common.load_split(cache, config, site_share=0.5)
    mixed = common.load_split(cache, config, site_mix_chance=0.25)
    both = common.load_split(cache, config, site_share=0.5, site_mix_chance=0.25)
    assert np.array_equal(both["train"], alone["train"]) and both["site_repeats"] == alone["site_repeats"] > 0
    assert np.array_equal(both["targets"], alone["targets"]) and len(both["audio"]) == len(alone["audio"])
    assert np.array_equal(both["site"].targets, mixed["site"].targets) and both["site_mix_chance"] == 0.25
    line = common.split_summary(both, dict(config, id=1))
    assert f"each {both['site_repeats']}x" in line and "also mixed into 25 % of the samples" in line


def test_site_mix_chance_trains_and_is_part_of_a_runs_identity_where_the_site_trains(site_demo, tmp_path, capsys):
    """train.py --site-mix-chance trains and says how; it is another run than the default (share 0.1, no mix),
    whose identity has no mix chance in it; without the site's windows both flags are moot."""
    import train
    _, cache = site_demo
    tiny = ["--model", "1", "--cache", cache, "--models", os.path.join(ROOT, "models-demo.csv"), "--epochs", "1",
            "--batch-size", "8", "--image_height", "32", "--image_width", "32", "--n_mels", "32", "--soup-start",
            "1", "--pretrained", "none", "--threads", "2"]
    train.main(tiny + ["--out-dir", str(tmp_path / "mix"), "--site-share", "0", "--site-mix-chance", "0.3"])
    assert "mixed into 30 % of the samples" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "mix" / "train_done.json")

    def identity(*extra):
        args = train.parse_args(tiny + list(extra))
        return train.input_signature(args, train.model_config(args))
    samples = identity()
    assert "site_mix_chance" not in samples and samples["site_share"] == 0.1
    assert identity("--site-mix-chance", "0.2") != samples and identity("--site-mix-chance", "0") == samples
    assert "site" not in identity("--site-share", "0")
    no_site = os.path.join(os.path.dirname(cache), "no-site-cache")
    shutil.copytree(cache, no_site)
    os.remove(CachePaths(no_site).site_audio)
    moot = [a if a != cache else no_site for a in tiny]
    args = train.parse_args(moot)
    plain = train.input_signature(args, train.model_config(args))
    args = train.parse_args(moot + ["--site-mix-chance", "0.3"])
    assert train.input_signature(args, train.model_config(args)) == plain and "site" not in plain


def synthetic_round(work, r, truth, probs, files):
    """A round's site.json and .npz as site_score.py score writes them."""
    os.makedirs(os.path.join(work, f"round{r}"), exist_ok=True)
    out = os.path.join(work, f"round{r}", "site.json")
    row_ids = np.array([f"{f}_{5 * (i + 1)}" for i, f in enumerate(files)])
    np.savez(out + ".npz", row_ids=row_ids, truth=truth, probs=probs)
    save_json(dict(windows=len(truth), files=len(set(files)), auc_pp=macro_roc_auc(truth, probs), auc=0.0), out)


def test_rounds_auto_trains_on_while_gains_beat_the_noise_then_keeps_the_best(tmp_path):
    rng = np.random.default_rng(0)
    files = np.repeat([f"S{i:02d}" for i in range(20)], 12)
    truth = (rng.random((len(files), 6)) < 0.2).astype(np.int8)
    noisy = lambda sd: (truth + rng.normal(0, sd, truth.shape)).astype(np.float32)  # noqa: E731
    work = str(tmp_path)
    assert site_score.decide_rounds(work)[0] == ("train", 1)
    synthetic_round(work, 1, truth, noisy(1.5), files)
    assert site_score.decide_rounds(work)[0] == ("train", 2)
    synthetic_round(work, 2, truth, noisy(0.5), files)  # far better: beyond noise
    assert site_score.decide_rounds(work)[0] == ("train", 3)
    round2 = np.load(os.path.join(work, "round2", "site.json.npz"))["probs"]
    synthetic_round(work, 3, truth, round2 + rng.normal(0, 0.02, truth.shape).astype(np.float32), files)
    (what, final), lines = site_score.decide_rounds(work)
    scores = {r: json.load(open(os.path.join(work, f"round{r}", "site.json")))["auc_pp"] for r in (1, 2, 3)}
    assert what == "final" and final == max(scores, key=scores.get) and final in (2, 3)
    assert "not beyond noise" in lines[-2] and json.load(open(os.path.join(work, "rounds.json")))["final"] == final

    work = str(tmp_path / "flat")  # round 2 no better than round 1: stop there, keep the better one
    synthetic_round(work, 1, truth, noisy(0.5), files)
    synthetic_round(work, 2, truth, np.load(os.path.join(work, "round1", "site.json.npz"))["probs"] * 0.9, files)
    (what, final), _ = site_score.decide_rounds(work)
    assert what == "final" and final == 1  # a tie goes to the earlier round

    work = str(tmp_path / "gaining")  # MAX_ROUNDS=4: every round gains beyond noise, and it stops at 4
    for r, sd in enumerate((2.0, 1.0, 0.5, 0.25), start=1):
        assert site_score.decide_rounds(work, last=4)[0] == ("train", r)
        synthetic_round(work, r, truth, noisy(sd), files)
    (what, final), lines = site_score.decide_rounds(work, last=4)
    assert (what, final) == ("final", 4) and len([line for line in lines if "beyond noise" in line]) == 3


def test_bootstrap_noise_shrinks_with_more_files():
    rng = np.random.default_rng(1)
    sds = []
    for n_files in (5, 40):
        files = np.repeat(np.arange(n_files), 12)
        truth = (rng.random((len(files), 5)) < 0.3).astype(np.int8)
        sds.append(site_score.bootstrap_sd(truth, truth + rng.normal(0, 1, truth.shape), files))
    assert sds[1] < sds[0] and np.isnan(site_score.bootstrap_sd(truth, truth, np.zeros(len(truth))))


def test_rounds_auto_without_labels_is_one_line(tmp_path):
    save_json(dict(windows=0), str(tmp_path / "round1" / "site.json"))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "site_score.py"), "rounds", "--work", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "ROUNDS=N, 1 to 9" in result.stderr


def test_score_is_infer_pys_own_and_shows_in_the_report(site_demo, tmp_path, capsys):
    import shutil
    import conftest
    import report
    from tables import load_classes
    _, cache = site_demo
    classes = load_classes(CachePaths(cache).classes)
    ensemble = conftest.export_tiny_ensemble(str(tmp_path / "work" / "round1" / "ensemble"), classes,
                                             [("modelA", 32, 1024, 32, 64, 0.8), ("modelB", 48, 512, 32, 32, 0.7)])
    out = str(tmp_path / "work" / "round1" / "site.json")
    scored = site_score.score(ensemble, cache, out, threads=2)
    line = [x for x in capsys.readouterr().out.splitlines() if "held out" in x]
    site = read_site_labels(CachePaths(cache).site_labels)
    valid = site[site["split"] == "valid"]
    assert len(line) == 1 and f"{valid['path'].nunique()} files, {len(valid)} windows" in line[0]
    # the oracle: infer.py itself on a folder of the held-out files, scored on their labelled windows
    audio = tmp_path / "held_out"
    audio.mkdir()
    for path in set(valid["path"]):
        shutil.copy(path, audio)
    submission = tmp_path / "submission.csv"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--ensemble", ensemble, "--audio",
                             str(audio), "--out", str(submission), "--backend", "torch", "--threads", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    predicted = pd.read_csv(submission).set_index("row_id")
    row_ids = [f"{os.path.splitext(os.path.basename(p))[0]}_{e}" for p, e in zip(valid["path"], valid["end_second"])]
    truth = np.array([[c in split_labels(t) for c in classes] for t in valid["labels"]])
    assert scored["auc_pp"] == pytest.approx(macro_roc_auc(truth, predicted.loc[row_ids, classes].values), abs=1e-4)
    assert set(scored["members"]) == {"modelA", "modelA +pp", "modelB", "modelB +pp", "ensemble", "ensemble +pp"}
    os.makedirs(tmp_path / "work" / "round1" / "model1")  # a round the report lists (its model not trained here)
    page = open(report.write_report(str(tmp_path / "work"), str(tmp_path / "report"))).read()
    assert "held-out site AUC +pp" in page and f"{scored['auc_pp']:.4f}" in page
