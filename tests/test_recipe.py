"""Every part of the recipe is a setting: presets, head, channels, loss, optimizer, schedule, mel, time shift; the
write-up's table and defaults stay the write-up's; bench/ablate.py runs."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import augmentations
import common
import demo_data
import tables
import infer
import soup
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--models", os.path.join(ROOT, "models-demo.csv"), "--epochs", "2", "--threads", "2",
        "--max-train-files", "16", "--pretrained", "none"]
WRITEUP_TEXT = os.path.join(ROOT, "..", "shared", "seed", "birdclef2024-2nd-place.txt")
# the write-up's 2nd-stage table, as it prints it (the test reads the write-up itself where it is beside the repo)
WRITEUP_TABLE = """\
seed 42 42 42 42 70 42
n_folds 5 5 5 5 10 5
fold 4 1 4 4 0 4
dataset bc24 bc24 bc24 bc24 bc24+ bc24
n_mels 128 128 128 64 64 64
hop_length 512 512 1024 1024 1024 1024
image_height 256 256 128 64 64 64
image_width 256 256 128 128 128 64
pseudoLabelChance 35 % 40 % 45 % 30 % 30 % 25 %
ampExpMin -0.5 -1.0 -0.5 -0.5 -0.5 -0.5
ampExpMax 0.1 0.2 0.1 0.1 0.1 0.1"""


def writeup_table_lines():
    if os.path.isfile(WRITEUP_TEXT):
        with open(WRITEUP_TEXT) as f:
            text = f.read()
        return text[text.index("Params./Model ID"):].splitlines()[1:12]
    return WRITEUP_TABLE.splitlines()


def test_models_csv_is_the_writeup_table_and_the_defaults_are_the_writeups():
    table = tables.read_models_table(os.path.join(ROOT, "models.csv"))
    for line in writeup_table_lines():
        name, *values = line.replace(" %", "").split()
        ours = [str(v) for v in table[name]]
        assert [float(v) if re.fullmatch(r"-?[\d.]+", v) else v for v in values] == \
            [float(v) if re.fullmatch(r"-?[\d.]+", v) else v for v in ours], name
    args = train.parse_args(["--model", "1"])  # the write-up's values (the parts it states)
    assert (args.epochs, args.lr, args.warmup_epochs, args.batch_size) == (50, 1e-3, 3, 64)
    assert (args.n_fft, args.f_min, args.f_max) == (2048, 20.0, 16000.0)
    assert (args.head, args.channels, args.loss, args.schedule) == ("gem5", 3, "bce-focal", "cosine")
    assert all(getattr(args, f"aug_{name}") > 0 for name in vars(augmentations.AugmentChances()))
    assert args.soup_start is None and train.soup_start_of_50 == 13


def test_presets_set_defaults_and_a_flag_wins():
    reference = train.parse_args(["--model", "1", "--preset", "baseline"])
    assert (reference.head, reference.channels, reference.loss, reference.optimizer, reference.schedule) == \
        ("plain", 1, "bce", "sgd", "onecycle")
    assert (reference.lr, reference.batch_size, reference.normalize, reference.time_shift) == \
        (0.1, 32, "standard", 0.5)
    assert (reference.n_mels, reference.hop_length, reference.fold) == (64, 1250, "all")
    assert all(getattr(reference, f"aug_{name}") == 0 for name in vars(augmentations.AugmentChances()))
    assert train.parse_args(["--model", "1", "--preset", "baseline", "--lr", "0.05"]).lr == 0.05
    assert train.parse_args(["--model", "1", "--lr", "0.05", "--preset", "baseline"]).lr == 0.05
    for name, preset in train.PRESETS.items():  # every preset names real flags
        args = train.parse_args(["--model", "1", "--preset", name])
        assert all(getattr(args, key) == value for key, value in preset.items()), name


@pytest.mark.parametrize("head,channels", [("plain", 1), ("gem5", 1), ("plain", 3)])
def test_heads_and_channels_export_equal_to_the_model(head, channels):
    torch.manual_seed(0)
    model = common.MelModel(4, 32, 64, head=head, channels=channels).eval()
    assert model.backbone.conv_stem.weight.shape[1] == channels
    assert len(model.dropouts) == (5 if head == "gem5" else 0)
    assert isinstance(model.pool, common.GeM if head == "gem5" else common.AveragePool)
    mel = torch.rand(3, 1, 32, 129)
    twin = model.inference_form((32, 129))
    with torch.no_grad():
        assert torch.abs(twin(mel) - model(mel)).max() < 1e-4
    model.train()  # a plain head has no dropout copies: training and eval agree apart from BatchNorm
    assert model(mel).shape == (3, 4)


def test_time_shift_rolls_each_sample_within_bounds():
    waves = torch.arange(40, dtype=torch.float32).repeat(6, 1)
    generator = torch.Generator().manual_seed(3)
    shifted = augmentations.time_shift(waves, 5, generator)
    shifts = set()
    for row in shifted:
        k = int((row[0] - 0) % 40)  # the rolled ramp starts at 40 - shift
        shift = (40 - k) % 40
        assert torch.equal(row, torch.roll(waves[0], shift))
        shifts.add(shift if shift <= 5 else shift - 40)
    assert all(-5 <= s <= 5 for s in shifts) and len(shifts) > 1
    assert augmentations.time_shift(waves, 0, generator) is waves


def test_bce_loss_is_plain_bce():
    logits, targets = torch.randn(4, 3), torch.rand(4, 3)
    expected = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(common.LOSSES["bce"](logits, targets), expected, atol=1e-6)
    assert common.LOSSES["bce-focal"](logits, targets) < common.LOSSES["bce"](logits, targets)  # focal <= bce


def test_baseline_preset_trains_soups_and_infers_with_its_settings(cache_dir, tmp_path, capsys):
    out = str(tmp_path / "baseline")
    train.main(["--model", "1", "--cache", cache_dir, "--out-dir", out, "--preset", "baseline", *TINY,
                "--image-height", "32", "--image-width", "32", "--epochs", "3", "--batch-size", "8"])
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert (config["head"], config["channels"], config["loss"], config["optimizer"]) == ("plain", 1, "bce", "sgd")
    assert config["mel_settings"]["normalize"] == "standard" and config["mel_settings"]["f_min"] == 50
    assert config["soup_start"] == 3  # --soup-start -1: the last epoch only
    lr = pd.read_csv(os.path.join(out, "metrics.csv"))["lr"]
    assert lr.max() <= 0.1 * (1 + 1e-6) and lr[1] < lr[0]  # one-cycle: peak 0.1 (SGD's lr), then annealing
    rows = len(pd.read_csv(os.path.join(cache_dir, "train_rows.csv")))
    assert f"{min(16, rows)} training rows, 0 validation rows" in capsys.readouterr().out
    report = soup.make_soup(out, cache_dir, n_threads=2)
    assert report["kept_epochs"] == [3]
    soup.bundle(str(tmp_path / "ensemble"), [out])
    networks, front_end, classes, _ = infer.load_ensemble(str(tmp_path / "ensemble"), "torch", 2)
    assert networks[0].mel_settings == common.mel_settings_of(config)
    waves = torch.as_tensor(np.asarray(np.load(tables.CachePaths(cache_dir).audio, mmap_mode="r")[:3],
                                       dtype=np.float32))
    mel = front_end(waves)[networks[0].mel_key]
    model = common.build_model(config)
    model.load_state_dict(torch.load(os.path.join(out, "soup.pt"), map_location="cpu"))
    with torch.no_grad():
        expected = model.eval()(common.MelFrontEnd(common.mel_settings_of(config))(waves)).numpy()
    # float32 rounding, relative: 3 steps of SGD at lr 0.1 on 16 rows leave logits of hundreds
    assert np.abs(networks[0].logits(mel) - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_a_changed_recipe_part_trains_again(cache_dir, tmp_path, capsys):
    out = str(tmp_path / "m")
    train.main(["--model", "1", "--cache", cache_dir, "--out-dir", out, *TINY, "--epochs", "1",
                "--image-height", "32", "--image-width", "32", "--n-mels", "32"])
    train.main(["--model", "1", "--cache", cache_dir, "--out-dir", out, *TINY, "--epochs", "1",
                "--image-height", "32", "--image-width", "32", "--n-mels", "32", "--head", "plain"])
    assert "moved it to" in capsys.readouterr().out and os.path.isdir(out + ".replaced-1")


def test_ablate_quick_prints_its_table(demo_dir, cache_dir, tmp_path, capsys):
    labels = demo_dir + "-test-labels.csv"  # demo_data writes the test labels beside the dataset
    work = str(tmp_path / "ablate")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ablate.py"), "--quick", "--data", demo_dir,
                           "--labels", labels, "--cache", cache_dir, "--work", work, "--threads", "2"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = pd.read_csv(os.path.join(work, "ablation.csv"))
    assert set(runs["variant"]) == {"base", "baseline"}
    assert runs[["test_auc", "test_auc_pp"]].apply(lambda c: c.between(0, 1)).all().all()
    assert "| baseline |" in done.stdout and "| base |" in done.stdout
    for variant in ("base", "baseline"):  # --quick: one epoch, the presets too
        assert len(pd.read_csv(os.path.join(work, f"{variant}-seed1", "metrics.csv"))) == 1
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import ablate
    from helpers import run_here  # the bad variant's one line, in this process (no second start-up)
    bad = run_here(ablate.main, "--variants", "nope", "--labels", labels, "--work", work, capsys=capsys)
    assert bad.returncode != 0 and "unknown variant" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_ablate_default_variants_cover_every_part():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import ablate
    args = ablate.parse_args([])
    variants = args.variants.split(",")
    for part in ("no-flip", "no-coarse-dropout", "no-mixup", "no-stretch", "normalization", "mel-50-14000",
                 "hop-1250", "time-shift", "bce", "plain-head", "1-channel", "sgd-onecycle", "more-epochs",
                 "fold-all", "base", "baseline"):
        assert part in variants, part
    assert "demo" not in variants and "demo" in ablate.variants_of(args.epochs)  # asked for by name
    # a later flag wins: the baseline's recipe trains its own 16 epochs, the base the ablation's
    epochs_of = lambda variant: train.parse_args(["--model", "1"] + ablate.run_arguments(variant, args)).epochs
    assert epochs_of("baseline") == ablate.preset_epochs
    assert epochs_of("base") == args.epochs < epochs_of("more-epochs")


def test_decide_quick_runs_cycles_beside_the_baseline(tmp_path, capsys):
    """bench/decide.py --quick: a tiny generated demo, the baseline recipe's cycle through make, each round
    scored; the report has medians, spreads and verdicts; a rerun reuses. Without the one-file baseline's script
    (not part of the repository), one line says the benchmark runs without it."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import decide
    # the baseline script is not part of the repository: the benchmark says so in one line and runs the rest
    recipes = "baseline-recipe,baseline"
    assert decide.without_a_missing_baseline(["baseline", "demo"], None) == ["demo"]
    assert decide.without_a_missing_baseline(["baseline"], str(tmp_path / "none.py")) == []
    assert "running without it" in capsys.readouterr().out
    assert decide.without_a_missing_baseline(["baseline"], __file__) == ["baseline"]
    # where a speech detector and a voice are here: the demo's recordings open with speech, a third recipe has no
    # detector (PREP_ARGS: a cache of its own)
    speech = shutil.which("espeak-ng") and importlib.util.find_spec("silero_vad")
    work = str(tmp_path / "decide")
    command = [sys.executable, os.path.join(ROOT, "bench", "decide.py"), "--quick", "--work", work, "--threads",
               "2", "--recipes", recipes + (",nospeech1" if speech else "")] \
        + (["--speech-share", "0.5", "--add-recipe",
            "nospeech1=bench/models-baseline.csv|--preset baseline|1|floor|PREP_ARGS='--speech off'"] if speech else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = pd.read_csv(os.path.join(work, "runs.csv"))
    assert "decide: no baseline script given (--baseline FILE): running without it" in done.stdout
    assert set(runs["recipe"]) == {"baseline-recipe"} | ({"nospeech1"} if speech else set()) \
        and set(runs["round"]) == {1, 2}
    assert runs[["auc", "auc_pp"]].apply(lambda c: c.between(0, 1)).all().all()
    # the labels that trained round 2, scored against the demo's unlabeled windows' labels; round 1 had none
    ours = runs[runs.recipe == "baseline-recipe"].set_index("round").labels_auc
    assert np.isnan(ours[1]) and 0 <= ours[2] <= 1
    report = open(os.path.join(work, "report.md")).read()
    assert "| baseline-recipe | 1 |" in report and "baseline-recipe: round 2 over round 1" in report
    assert "too few runs" in report  # one demo and one seed decide nothing
    # the demo's labelled soundscapes: each round scored on the held-out ones, and the site-only species on the test
    assert runs[runs.recipe == "baseline-recipe"][["site_auc_pp", "site_only_auc_pp"]].apply(
        lambda c: c.between(0, 1)).all().all()
    assert "The species only the site has" in report and "held-out site score against the test score" in report
    assert "| baseline-recipe | 1 |" in report.split("its windows and its noise")[1]
    assert (runs[runs.recipe == "baseline-recipe"].site_windows > 0).all()
    if speech:
        demo = os.path.join(work, "demo1-labelled3-speech50")
        truth = pd.read_csv(os.path.join(demo, "data-speech.csv"))
        assert len(truth) > 0 and truth["speech_seconds"].between(2.5, 9.01).all()
        own = os.path.join(demo, "nospeech1-seed1", "cache")
        assert not os.path.islink(own) and pd.read_csv(os.path.join(own, "speech.csv")).empty
        assert len(pd.read_csv(os.path.join(demo, "cache", "speech.csv"))) > 0  # the shared cache: detector on
        assert f"of {len(truth)} spoken openings" in report
    decide.main(command[2:])  # again, in this process: finished runs are reused, not rerun
    assert "seed 1:" not in capsys.readouterr().out

    demos = [1, 1, 2, 2]  # seed sd: sqrt(((0.01^2 + 0.01^2) + (0.005^2 + 0.005^2)) / 2) = 0.0079
    sd = np.sqrt((2 * 0.01 ** 2 + 2 * 0.005 ** 2) / 2)
    assert abs(decide.seed_sd([0.70, 0.72, 0.80, 0.81], demos) - sd) < 1e-9  # the demos' own level is left out
    assert abs(decide.median_noise([0.70, 0.72, 0.80, 0.81], demos) - 2 * 1.2533 * sd / 2) < 1e-9
    assert decide.verdict([0.02, 0.04, 0.03, 0.04], demos) == "helps"        # median 0.035 > noise 0.014
    assert decide.verdict([-0.02, -0.04, -0.03, -0.04], demos) == "hurts"
    assert decide.verdict([0.002, 0.022, -0.01, 0.0], demos) == "within noise"  # median 0.001, noise 0.014
    assert decide.verdict([0.02, 0.03, 0.04], [1, 2, 3]).startswith("no noise estimate")
    assert decide.verdict([0.02, 0.03], [1, 1]).startswith("too few runs")


def test_decide_scores_the_labels_of_each_member_and_of_the_ensemble(demo_dir, cache_dir, tiny_ensemble, tmp_path):
    """The demo writes its unlabeled windows' labels beside it; decide scores pseudo labels against them: the
    ensemble's equal sklearn's macro AUC of what pseudo.py writes (normalization none)."""
    from sklearn.metrics import roc_auc_score
    import pseudo
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import decide
    truth = pd.read_csv(demo_data.labels_paths(demo_dir)[1]).set_index("row_id")
    windows = pd.read_csv(os.path.join(cache_dir, "unlabeled_windows.csv"))
    assert len(truth) == len(windows) == 9 and set(truth.columns) == {s[0] for s in demo_data.DEMO_SPECIES}
    scores = decide.members_labels_auc(tiny_ensemble, cache_dir, demo_dir)
    assert set(scores) == {"modelA", "modelB", "ensemble"} and all(0 <= v <= 1 for v in scores.values())
    out = str(tmp_path / "pseudo.npz")
    pseudo.pseudo_label(tiny_ensemble, cache_dir, out, how="none", n_threads=2)
    labels = np.load(out)
    rows = [f"{os.path.splitext(os.path.basename(p))[0]}_{e}" for p, e in zip(labels["paths"], labels["end_seconds"])]
    y = truth.loc[rows, list(labels["classes"])].values
    expected = np.mean([roc_auc_score(y[:, c], labels["probs"][:, c]) for c in range(y.shape[1])
                        if 0 < y[:, c].sum() < len(y)])
    assert abs(scores["ensemble"] - expected) < 1e-4
    assert abs(decide.labels_auc(out, demo_dir) - expected) < 1e-6
    assert np.isnan(decide.labels_auc(str(tmp_path / "none.npz"), demo_dir))


def test_decide_links_the_rounds_another_recipe_trained_alike(tmp_path):
    """A recipe that differs only in pseudo-label settings shares round 1; one that differs only in its rounds
    shares every round both have; the shared rounds are hard links of the finished run's files."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import decide
    recipes = decide.parse_recipes(["longer=bench/models-baseline.csv|--preset baseline|3|floor",
                                    "raw=bench/models-baseline.csv|--preset baseline|2|none",
                                    "one=bench/models-baseline.csv|--preset baseline|2|floor|PL_MEMBERS=model1",
                                    "taught=bench/models-baseline.csv|--preset baseline|2|floor|TEACHER=t.npz"])
    assert decide.shared_rounds(recipes["longer"], recipes["baseline-recipe"]) == 2
    assert decide.shared_rounds(recipes["raw"], recipes["baseline-recipe"]) == 1
    assert decide.shared_rounds(recipes["one"], recipes["baseline-recipe"]) == 1
    assert decide.shared_rounds(recipes["taught"], recipes["baseline-recipe"]) == 0  # a teacher changes round 1
    assert decide.shared_rounds(recipes["demo"], recipes["baseline-recipe"]) == 0
    source = tmp_path / "demo1" / "baseline-recipe-seed1"
    for r in (1, 2):
        (source / f"round{r}" / "ensemble").mkdir(parents=True)
        (source / f"round{r}" / "ensemble" / "manifest.json").write_text("{}")
    (source / "pseudo1.npz").write_bytes(b"labels")
    out = tmp_path / "demo1" / "longer-seed1"
    out.mkdir()
    decide.reuse_rounds("longer", recipes, str(out), 1)
    for name in ("round1/ensemble/manifest.json", "round2/ensemble/manifest.json", "pseudo1.npz"):
        assert os.path.samefile(out / name, source / name)
    raw = tmp_path / "demo1" / "raw-seed1"
    raw.mkdir()
    decide.reuse_rounds("raw", recipes, str(raw), 1)
    assert (raw / "round1").is_dir() and not (raw / "round2").exists() and not (raw / "pseudo1.npz").exists()



def test_decide_makes_a_demos_teacher_once_for_the_recipes_that_ask_for_it(tmp_path, monkeypatch):
    """TEACHER=birdnet in a recipe's make variables: teacher.py labels and embeds the demo's cache once, and the
    variable names that file; the distillation recipes differ from their base in DISTILL alone."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import decide
    import teacher
    made = []

    def fake_teach(data, out, cache=None, n_threads=1, **_):
        made.append(out)
        open(teacher.embeddings_path(out), "w").close()
    monkeypatch.setattr(teacher, "teach", fake_teach)
    cache = str(tmp_path / "demo1" / "cache")
    os.makedirs(cache)
    first = decide.teacher_for("TEACHER=birdnet", "data", cache, 2)
    again = decide.teacher_for("TEACHER=birdnet", "data", cache, 2)
    assert first == again == f"TEACHER={tmp_path / 'demo1' / 'teacher-birdnet.npz'}" and len(made) == 1
    assert decide.teacher_for("DISTILL=0.1", "data", cache, 2) == "DISTILL=0.1"
    taught, distill = decide.RECIPES["demo-taught"], decide.RECIPES["demo-distill"]
    assert taught[:4] == distill[:4] and distill[4] == taught[4] + " DISTILL=0.1"
    assert decide.shared_rounds(taught, distill) == 0  # distillation changes every round
    assert "demo-distill" not in decide.parse_args([]).recipes
