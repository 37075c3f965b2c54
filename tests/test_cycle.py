"""The cycle: soup rule and averaging, pseudo labels, the mixing rule, and the Makefile's dependencies."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import common
import tables
import errors
import pseudo
import soup
from common import PseudoWindows, TrainingSet, mix_pseudo
from tables import CachePaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_soup_averages_floats_and_keeps_last_integers():
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
              {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)},
              {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(9)}]
    soup_state = soup.average_state_dicts(states)
    assert torch.equal(soup_state["w"], torch.tensor([3.0, 3.0]))
    assert soup_state["n"].item() == 9 and soup_state["n"].dtype == torch.int64


def test_epoch_keeping_rule():
    metrics = pd.DataFrame({
        "epoch": [1, 2, 3, 4, 5, 6, 7],
        "lrap": [0.9, 0.50, 0.60, 0.55, 0.55, 0.70, 0.60],
        "cmap": [0.9, 0.40, 0.30, 0.45, 0.42, 0.41, 0.40],
        "f1":   [0.9, 0.20, 0.10, 0.20, 0.25, 0.20, 0.20],
        "auc":  [0.9, 0.80, 0.70, 0.75, 0.79, 0.80, 0.81],
    })
    # epoch 1 precedes the soup start; 2 sets the bests; 3 lrap; 4 cmap; 5 f1; 6 lrap; 7 auc
    assert soup.choose_epochs(metrics, soup_start=2) == [2, 3, 4, 5, 6, 7]
    metrics.loc[metrics.epoch == 5, "f1"] = 0.1
    metrics.loc[metrics.epoch == 7, "auc"] = 0.5
    assert soup.choose_epochs(metrics, soup_start=2) == [2, 3, 4, 6]
    assert soup.choose_epochs(metrics, soup_start=8) == []


def test_mixing_rule_is_exact():
    wave, window = np.array([0.1, -0.2, 0.3]), np.array([0.5, 0.5, -0.5])
    target, pseudo_target = np.array([1.0, 0.0, 0.0]), np.array([0.2, 0.7, 0.0])
    mixed, mixed_target = mix_pseudo(wave, target, window, pseudo_target, 2.0, 0.5)
    assert np.allclose(mixed, [0.45, -0.15, 0.35])
    assert np.array_equal(mixed_target, [1.0, 0.7, 0.0])


@pytest.fixture(scope="module")
def pseudo_file(cache_dir, tiny_ensemble, tmp_path_factory):
    """Every window of the unlabeled soundscapes (--soundscapes), minmax-normalized."""
    out = str(tmp_path_factory.mktemp("pseudo") / "pseudo1.npz")
    folder = os.path.dirname(pd.read_csv(CachePaths(cache_dir).unlabeled_files)["path"][0])
    pseudo.pseudo_label_soundscapes(tiny_ensemble, folder, out, "minmax", 2)
    return out


@pytest.fixture(scope="module")
def capped_cache(demo_dir, tmp_path_factory):
    """A cache of 5 of the demo's unlabeled windows: training draws from these and nothing else."""
    import prep
    out = str(tmp_path_factory.mktemp("capped") / "cache")
    prep.prepare(demo_dir, out, n_threads=2, window_cap=5)
    return out


def test_pseudo_labels_cover_the_cached_windows_and_nothing_else(capped_cache, tiny_ensemble, tmp_path):
    out = str(tmp_path / "pseudo.npz")
    pseudo.pseudo_label(tiny_ensemble, capped_cache, out, "none", 2, batch=2)
    labels = np.load(out)
    cached = pd.read_csv(CachePaths(capped_cache).unlabeled_rows)
    assert list(labels["paths"]) == list(cached["path"]) and list(labels["end_seconds"]) == list(cached["end_second"])
    assert len(cached) == 5 < pd.read_csv(CachePaths(capped_cache).unlabeled_files)["n_windows"].sum()
    # each row is the ensemble's mean probability of that cached window's audio (float16 in the cache)
    engine = pseudo.ExportedEngine(tiny_ensemble, "torch", 2)
    audio = np.load(CachePaths(capped_cache).unlabeled_audio)
    expected = engine(torch.from_numpy(audio.astype(np.float32)))
    assert np.abs(labels["probs"] - expected).max() < 1e-3


def test_pseudo_labels_of_every_window_of_given_files(cache_dir, pseudo_file):
    unlabeled = pd.read_csv(CachePaths(cache_dir).unlabeled_files)
    labels = np.load(pseudo_file)
    expected = {(p, 5 * (w + 1)) for p, n in zip(unlabeled["path"], unlabeled["n_windows"]) for w in range(n)}
    got = list(zip(labels["paths"], labels["end_seconds"].tolist()))
    assert len(got) == len(expected) and set(got) == expected
    probs = labels["probs"]
    assert probs.shape == (len(expected), len(tables.load_classes(CachePaths(cache_dir).classes)))
    # minmax per class: floor 0, top 1 (a class the random models score constant becomes all 0)
    assert np.allclose(probs.min(0), 0) and np.all(np.isclose(probs.max(0), 1) | np.isclose(probs.max(0), 0))
    assert list(labels["classes"]) == tables.load_classes(CachePaths(cache_dir).classes)


def test_pl_norm():
    with pytest.raises(errors.UserError):  # an unknown name is an error, not minmax
        pseudo.normalize_pseudo_labels(np.zeros((2, 2), np.float32), "median")
    probs = np.array([[0.2, 0.5], [0.4, 0.5], [0.3, 0.5]], dtype=np.float32)
    assert np.allclose(pseudo.normalize_pseudo_labels(probs, "minmax"), [[0, 0], [1, 0], [0.5, 0]])
    assert np.array_equal(pseudo.normalize_pseudo_labels(probs, "none"), probs)
    # floor: the class median goes to 0, 1 stays 1, below the median clips to 0
    floor = pseudo.normalize_pseudo_labels(np.array([[0.2, 1.0], [0.6, 0.5], [0.4, 0.0]], dtype=np.float32), "floor")
    assert np.allclose(floor, [[0, 1], [(0.6 - 0.4) / 0.6, 0], [0, 0]])


def test_training_set_mixing(cache_dir, pseudo_file):
    paths = CachePaths(cache_dir)
    classes = tables.load_classes(paths.classes)
    audio = np.load(paths.audio, mmap_mode="r")
    targets = common.target_matrix(pd.read_csv(paths.rows), classes)
    windows = PseudoWindows(cache_dir, pseudo_file, classes)
    rows = np.arange(8)
    plain = TrainingSet(audio, targets, rows).batch(rows, np.random.default_rng(0))
    never = TrainingSet(audio, targets, rows, windows, 0.0).batch(rows, np.random.default_rng(0))
    assert torch.equal(plain[0], never[0]) and torch.equal(plain[1], never[1])
    assert torch.equal(plain[0], torch.from_numpy(audio[rows].astype(np.float32)))
    # chance 1 with a fixed gain exponent: every sample is 10**e * (wave + window), target the max
    always = TrainingSet(audio, targets, rows, windows, 1.0, amp_exp_range=(-0.3, -0.3))
    rng = np.random.default_rng(5)
    waves, mixed_targets = always.batch(rows, rng)
    replay = np.random.default_rng(5)
    replay.random(len(rows))
    for i in range(len(rows)):
        j = replay.integers(len(windows))
        replay.uniform(-0.3, -0.3, size=2)
        window = windows.audio[windows.index[j]].astype(np.float32)
        expected = 10 ** -0.3 * (audio[i].astype(np.float32) + window)
        assert np.allclose(waves[i].numpy(), expected, atol=1e-6)
        assert np.array_equal(mixed_targets[i].numpy(), np.maximum(targets[i], windows.targets[j]))


def make_dry_run(work, target="ensemble"):
    models = os.path.join(work, "models.csv")
    if not os.path.exists(models):  # a models table older than every artifact
        os.makedirs(work, exist_ok=True)
        shutil.copy(os.path.join(ROOT, "models-demo.csv"), models)
        os.utime(models, (1_600_000_000, 1_600_000_000))
    result = subprocess.run(["make", "-n", "-C", ROOT, target, f"WORK={work}", f"MODELS={models}",
                             "PY=python", "DATA=nowhere"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_rebuilds_only_what_depends_on_a_deleted_artifact(tmp_path):
    work = str(tmp_path / "work")
    ids = [1, 2, 3]
    files = [f"{work}/cache/train_rows.csv"]
    for r in (1, 2, 3):
        files += [f"{work}/round{r}/model{i}/soup.json" for i in ids] + [f"{work}/round{r}/ensemble/manifest.json",
                                                                         f"{work}/round{r}/site.json"]
        if r < 3:
            files.append(f"{work}/pseudo{r}.npz")
    files.append(f"{work}/ensemble/manifest.json")
    for age, path in enumerate(files):  # each artifact newer than what it was built from
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
        os.utime(path, (1_700_000_000 + age, 1_700_000_000 + age))
    assert "train.py" not in make_dry_run(work) and "pseudo.py" not in make_dry_run(work)

    os.remove(f"{work}/pseudo1.npz")
    plan = make_dry_run(work)
    assert "prep.py" not in plan and "--round 1" not in plan
    assert plan.count("pseudo.py") == 2  # pseudo1 again, then pseudo2 from the new round 2
    assert all(plan.count(f"--model {i} --round {r}") == 1 for i in ids for r in (2, 3))

    open(f"{work}/pseudo1.npz", "w").close()
    for age, path in enumerate(files):  # as if rebuilt, then delete one soup of round 3
        os.utime(path, (1_800_000_000 + age,) * 2)
    assert "train.py" not in make_dry_run(work)
    os.remove(f"{work}/round3/model2/soup.json")
    plan = make_dry_run(work)
    assert plan.count("train.py") == 1 and "--model 2 --round 3" in plan
    assert "pseudo.py" not in plan and "bundle" in plan


def fake_finished_cycle(work):
    """Empty artifacts of a whole demo cycle, each newer than what it was built from."""
    files = [f"{work}/cache/train_rows.csv"]
    for r in (1, 2, 3):
        files += [f"{work}/round{r}/model{i}/soup.json" for i in (1, 2, 3)] + [
            f"{work}/round{r}/ensemble/manifest.json", f"{work}/round{r}/site.json"]
        if r < 3:
            files.append(f"{work}/pseudo{r}.npz")
    files.append(f"{work}/ensemble/manifest.json")
    for age, path in enumerate(files):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
        os.utime(path, (1_700_000_000 + age, 1_700_000_000 + age))


def plan_with(work, *settings, models=None, dry_run=True):
    """make -n ensemble's plan (dry_run=False: make itself, which on a finished cycle only writes the stamps)."""
    result = subprocess.run(["make", *(["-n"] if dry_run else []), "-C", ROOT, "ensemble", f"WORK={work}",
                             f"MODELS={models or os.path.join(ROOT, 'models-demo.csv')}", "PY=python",
                             "DATA=nowhere", *settings], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def trained(plan):
    return sorted(re.findall(r"--model (\d+) --round (\d)", plan))


def test_changed_settings_rerun_exactly_what_depends_on_them(tmp_path):
    work = str(tmp_path / "work")
    fake_finished_cycle(work)
    assert "train.py" not in plan_with(work, dry_run=False)  # the run's end: the settings become the stamps
    assert "train.py" not in plan_with(work, "THREADS=7", "DEVICE=cuda:1")  # change no result
    everything = [(i, r) for i in "123" for r in "123"]
    plan = plan_with(work, "EPOCHS=30")
    assert trained(plan) == everything and "prep.py" not in plan and "--epochs 30" in plan

    work = str(tmp_path / "work2")
    fake_finished_cycle(work)
    plan_with(work, dry_run=False)
    assert trained(plan_with(work, 'TRAIN_ARGS=--lr 5e-4')) == everything

    work = str(tmp_path / "work3")
    fake_finished_cycle(work)
    table = tmp_path / "models.csv"
    shutil.copy(os.path.join(ROOT, "models-demo.csv"), table)
    plan_with(work, models=table, dry_run=False)
    text = table.read_text()
    row2 = [line for line in text.splitlines() if line.startswith("2,")][0]
    table.write_text(text.replace(row2, row2.replace(",45,", ",40,")))  # model 2's pseudo-label chance
    plan = plan_with(work, models=table)
    # round 1: model 2 alone; its ensemble's pseudo labels change, so rounds 2 and 3 train again
    assert trained(plan) == sorted([("2", "1")] + [(i, r) for i in "123" for r in "23"])
    assert plan.count("pseudo.py") == 2 and "prep.py" not in plan and plan.count("--round 1 ") == 1

    work = str(tmp_path / "work4")
    fake_finished_cycle(work)
    plan_with(work, dry_run=False)
    plan = plan_with(work, "PL_NORM=none")
    assert plan.count("pseudo.py") == 2 and trained(plan) == [(i, r) for i in "123" for r in "23"]
    plan = plan_with(work, "PL_NORM=none", "PL_MEMBERS=model2")  # who labels: the same again, told to pseudo.py
    assert plan.count("--members model2") == 2 and trained(plan) == [(i, r) for i in "123" for r in "23"]
    assert "prep.py" in plan_with(work, "PREP_ARGS=--max-unlabeled-windows 100")


def test_rounds_sets_the_round_whose_ensemble_is_final(tmp_path):
    work = str(tmp_path / "work")
    fake_finished_cycle(work)
    for r in (2, 3):  # what soup.py bundle writes: the round's own model folders
        path = f"{work}/round{r}/ensemble/manifest.json"
        age = os.stat(path).st_mtime
        with open(path, "w") as f:
            f.write(f'{{"sources": ["{work}/round{r}/model1"]}}')
        os.utime(path, (age, age))
    shutil.copy(f"{work}/round3/ensemble/manifest.json", f"{work}/ensemble/manifest.json")
    os.utime(f"{work}/ensemble/manifest.json", (1_700_000_100,) * 2)
    assert "cp -r" not in plan_with(work)  # the write-up's 3 rounds: round 3's copy is the final ensemble
    plan = plan_with(work, "ROUNDS=2")
    assert f"cp -r {work}/round2/ensemble" in plan and "round3" not in plan and "train.py" not in plan
    shutil.copy(f"{work}/round2/ensemble/manifest.json", f"{work}/ensemble/manifest.json")  # as if made
    assert "cp -r" not in plan_with(work, "ROUNDS=2")
    assert f"cp -r {work}/round3/ensemble" in plan_with(work, "ROUNDS=3")  # and back
    wrong = subprocess.run(["make", "-n", "-C", ROOT, "ensemble", f"WORK={work}", "ROUNDS=four", "PY=python"],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "ROUNDS must be 1 to 9, or auto" in wrong.stderr


def test_numeric_labels_from_prep_to_submission(demo_dir, tmp_path):
    """iNat-style labels ("0042", "1000003"): strings everywhere, leading zeros kept, as submission columns."""
    import prep
    import soup
    import train
    from helpers import run_alone
    root = tmp_path / "numeric"
    shutil.copytree(demo_dir, root)
    meta = pd.read_csv(root / "train_metadata.csv", dtype=str)
    species = sorted(set(meta["primary_label"]))
    number = {s: f"{i:04d}" if i % 2 == 0 else str(1_000_000 + i) for i, s in enumerate(species)}
    meta["primary_label"] = meta["primary_label"].map(number)
    meta["secondary_labels"] = [str([number[s] for s in tables.parse_label_list(t)]) for t in meta["secondary_labels"]]
    meta.to_csv(root / "train_metadata.csv", index=False)
    sample = pd.read_csv(root / "sample_submission.csv", nrows=0)
    numeric_columns = ["row_id"] + [number[c] for c in sample.columns[1:]]
    pd.DataFrame(columns=numeric_columns).to_csv(root / "sample_submission.csv", index=False)

    cache = str(tmp_path / "cache")
    prep.prepare(str(root), cache, n_threads=2)
    assert tables.load_classes(CachePaths(cache).classes) == numeric_columns[1:]
    model_dir = str(tmp_path / "model1")
    train.main(["--model", "1", "--models", os.path.join(ROOT, "models-demo.csv"), "--cache", cache,
                "--out-dir", model_dir, "--epochs", "1", "--batch-size", "8", "--threads", "2", "--soup-start", "1",
                "--image_height", "32", "--image_width", "32", "--n_mels", "32", "--max-train-files", "16",
                "--pretrained", "none"])
    soup.make_soup(model_dir, cache, n_threads=2)
    ensemble = str(tmp_path / "ensemble")
    soup.bundle(ensemble, [model_dir])
    out = tmp_path / "submission.csv"
    result = run_alone(tmp_path, "--ensemble", ensemble, "--audio", str(root / "test_soundscapes"), "--out", str(out),
                       "--backend", "torch", "--threads", "2")
    assert result.returncode == 0, result.stderr
    with open(out) as f:
        assert f.readline().strip().split(",") == numeric_columns  # "0000" stays "0000"


def test_data_with_spaces_is_quoted_and_work_with_spaces_is_one_line(tmp_path):
    work = str(tmp_path / "work")
    plan = plan_with(work, "DATA=/data/birdclef 2025")
    assert '--data "/data/birdclef 2025"' in plan
    result = subprocess.run(["make", "-n", "-C", ROOT, "ensemble", f"WORK={tmp_path}/my work", "PY=python"],
                            capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(errors) == 1 and "WORK may not contain spaces" in errors[0]



def test_soup_engine_on_cpu_equals_the_exported_engine(cache_dir, souped_round):
    """The GPU engine's code (soups as torch models, AMP off on CPU) against infer.py's exported networks."""
    ensemble = str(souped_round / "round1" / "ensemble")
    audio = np.load(CachePaths(cache_dir).unlabeled_audio)[:6].astype(np.float32)
    on_device = pseudo.SoupEngine.of_ensemble(ensemble, torch.device("cpu"))(torch.from_numpy(audio))
    exported = pseudo.ExportedEngine(ensemble, "torch", 2)(torch.from_numpy(audio))
    assert on_device.shape == exported.shape == (6, len(tables.load_classes(CachePaths(cache_dir).classes)))
    assert np.abs(on_device - exported).max() < 1e-3 and exported.std() > 0


def test_members_pseudo_label_with_the_named_models_only(cache_dir, tiny_ensemble, souped_round):
    waves = torch.from_numpy(np.load(CachePaths(cache_dir).unlabeled_audio)[:4].astype(np.float32))
    both = pseudo.ExportedEngine(tiny_ensemble, "torch", 2)
    b_only = pseudo.ExportedEngine(tiny_ensemble, "torch", 2, members="modelB")
    assert [n.name for n in b_only.networks] == ["modelB"]
    network_b = [n for n in both.networks if n.name == "modelB"][0]
    expected = torch.sigmoid(torch.from_numpy(network_b.logits(both.front_end(waves)[network_b.mel_key]))).numpy()
    assert np.allclose(b_only(waves), expected, atol=1e-6) and not np.allclose(both(waves), expected, atol=1e-4)
    with pytest.raises(errors.UserError, match="modelC"):
        pseudo.ExportedEngine(tiny_ensemble, "torch", 2, members="modelB,modelC")
    ensemble = str(souped_round / "round1" / "ensemble")  # the GPU engine's code chooses the same way
    assert len(pseudo.SoupEngine.of_ensemble(ensemble, torch.device("cpu"), members="model1").models) == 1
    with pytest.raises(errors.UserError, match="its models: model1"):
        pseudo.SoupEngine.of_ensemble(ensemble, torch.device("cpu"), members="model2")


def test_torchrun_pseudo_labels_equal_a_single_process(cache_dir, tiny_ensemble, tmp_path):
    single = str(tmp_path / "single.npz")
    pseudo.pseudo_label(tiny_ensemble, cache_dir, single, "floor", 1, backend="torch", batch=2)
    merged = str(tmp_path / "merged.npz")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(ROOT, "pseudo.py"), "--ensemble", tiny_ensemble, "--cache", cache_dir,
                             "--out", merged, "--threads", "1", "--backend", "torch", "--batch", "2",
                             "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = np.load(single), np.load(merged)
    assert list(a["paths"]) == list(b["paths"]) and np.array_equal(a["end_seconds"], b["end_seconds"])
    assert np.allclose(a["probs"], b["probs"], atol=1e-6) and np.allclose(a["raw_floor"], b["raw_floor"], atol=1e-6)
    assert len(a["probs"]) == len(pd.read_csv(CachePaths(cache_dir).unlabeled_rows))


def test_bench_scale_quick_runs_to_the_end(tmp_path):
    """bench/scale.py --quick with a one-model table: every step measured, the cycle projected for that table."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "scale.py"), "--quick", "--threads", "2",
                             "--windows", "24", "--root", str(tmp_path / "scale"), "--models",
                             "bench/models-baseline.csv"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "prep full: 80 rows, 8 soundscapes" in out and "prep quarter: 20 rows, 2 soundscapes" in out
    assert "| whole cycle |" in out and "pseudo_round_min=" in out and "pseudo-labelling, 1 model," in out
    assert "| round 3 model 1 (64x128), 50 epochs |" in out and "model 2" not in out
    cached = len(pd.read_csv(CachePaths(str(tmp_path / "scale" / "cache-full")).unlabeled_rows))
    assert cached == 8 * 48  # every window of 8 four-minute soundscapes (under the default cap)
    labels = np.load(tmp_path / "scale" / "pseudo-full.npz")
    assert len(labels["probs"]) == cached


def test_training_set_on_the_device_mixes_as_the_host_one(cache_dir, pseudo_file):
    """DeviceTrainingSet (here on the CPU, the code a GPU runs): without mixing, the host set's batches exactly;
    with it, each chosen sample is gain * wave + gain * one pseudo-labelled window and its target the max of both,
    at the set chance."""
    from common import PseudoWindows, TrainingSet, load_split
    from steps import DeviceTrainingSet
    data = load_split(cache_dir, dict(dataset="bc24", fold="all", n_folds=5, seed=1))
    plain = TrainingSet(data["audio"], data["targets"], data["train"], seed=3)
    on_device = DeviceTrainingSet(plain, "cpu")
    for (w1, t1), (w2, t2) in zip(plain.epoch(1, 8), on_device.epoch(1, 8)):
        assert torch.equal(w1, w2) and torch.equal(t1, t2)
    pseudo = PseudoWindows(cache_dir, pseudo_file, data["classes"])
    mixing = DeviceTrainingSet(TrainingSet(data["audio"], data["targets"], data["train"], pseudo, 0.5, (0.0, 0.0),
                                           seed=3), "cpu")
    windows = torch.from_numpy(np.asarray(pseudo.audio[pseudo.index], np.float32))
    from helpers import count_mixes
    mixed, total = count_mixes(mixing, data["audio"], data["targets"], windows, pseudo.targets, range(1, 6))
    assert abs(mixed - total * 0.5) <= 4.5 * np.sqrt(total * 0.25)
    expected_bytes = (len(data["train"]) + len(pseudo.index)) * common.WINDOW_SAMPLES * 2
    assert DeviceTrainingSet.bytes_needed(mixing) == expected_bytes
