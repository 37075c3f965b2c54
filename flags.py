"""Flags that several scripts share: one name, one meaning and one help text each, defined here once; and what
every script's --help needs, without torch (the small tools print --help in a fraction of a second).

    from flags import add_flag, HelpFormatter
    add_flag(parser, "--threads", default=4)          # type and help from SHARED; default, required, choices given
    infer_setting("pp_weight")                        # infer.py's default, read from its source: 0.5

infer.py, which must stay self-contained, spells its shared flags' help texts and its HelpFormatter out itself; a
test checks that they equal these, and that no two scripts give one flag two helps.
"""
import argparse
import ast
import functools
import os


@functools.lru_cache(maxsize=None)
def _infer_settings():
    """infer.py's top-level constant assignments {name: value}, read from its source (importing it loads torch)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "infer.py")
    found = {}
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # computed (from the environment, from other names): not a setting to show
    return found


def infer_setting(name):
    """One of infer.py's defaults (a literal at its top level), without importing infer.py."""
    return _infer_settings()[name]


BACKENDS = ["auto", "openvino", "onnx", "torch"]
PRECISIONS = ["auto", "f32", "bf16"]

SHARED = {
    # where things are
    "--data": dict(help="dataset folder in BirdCLEF 2024 layout (train_metadata.csv) or 2025/2026 (train.csv, "
                   "taxonomy.csv)"),
    "--cache": dict(help="prep.py's cache folder (make's WORK/cache)"),
    "--work": dict(help="the work folder (make's WORK): where this script's artifacts are read and written"),
    "--out": dict(help="the file or folder this script writes (under a temporary name, then renamed)"),
    "--models": dict(help="models table: a CSV like models.csv, one row per model (seed, folds, mel settings, "
                     "image size, pseudo-label chance; optionally backbone, head, window)"),
    "--ensemble": dict(help="exported ensemble folder (make ensemble, soup.py bundle): a manifest.json and each "
                       "model's .onnx, .ts and .json"),
    "--model": dict(type=int, help="id of the row in the models table"),
    "--audio": dict(help="folder of soundscapes to score"),
    "--soundscape-seconds": dict(type=float, help="length of each soundscape"),
    "--labels": dict(help="labels of those soundscapes, sample_submission format (row_id, then one 0/1 column per "
                     "class)"),
    "--soundscapes": dict(help="label every 5-s window of the audio files in this folder instead of the cache's "
                          "windows"),
    # how to run
    "--threads": dict(type=int, help="CPU threads, in all"),
    "--check": dict(action="store_true", help="only check the inputs this script reads (files, tables, flags), "
                    "then stop: make runs it before prep, so a wrong input stops before hours of work"),
    "--device": dict(help="auto (CUDA, then Apple's MPS, then CPU), cpu, cuda, cuda:1, mps"),
    "--backend": dict(choices=BACKENDS, help="infer.py's engine for the exported networks: auto takes the fastest "
                      "installed (openvino, then onnx, then torch = TorchScript)"),
    "--precision": dict(choices=PRECISIONS, help="OpenVINO's float precision. auto: bf16 on CPUs that compute it "
                        "natively (AVX512-BF16, AMX), else f32; f32: exact"),
    "--batch-size": dict(type=int, help="items per batch: training samples per optimiser step (of all torchrun "
                         "processes together), or windows or segments per network call"),
    "--jobs": dict(type=int, help="runs side by side, the threads shared among them (default: min(2, threads))"),
    # what to compute
    "--epochs": dict(type=int, help="training epochs per model (no early stopping)"),
    "--seed": dict(type=int, help="random seed: the same seed gives the same result"),
    "--seeds": dict(help="training seeds, comma-separated: medians are over them"),
    "--soup-start": dict(type=int, help="first epoch of the soup (default: 13 of 50, scaled to --epochs; soup.py: "
                         "the one train.py used); negative: the last -N epochs"),
    "--root": dict(help="folder to build in (kept); default: a temporary folder, removed after"),
    "--repeats": dict(type=int, help="timed runs of each measurement, interleaved with the others: medians (and "
                      "bests) are reported"),
    "--steps": dict(type=int, help="timed training steps per model (after one warm-up step)"),
    "--keep-epochs": dict(choices=["all", "soup"], help="what soup.py keeps of a model's saved epochs once its soup is "
                          "written: all, or soup (only those the soup uses, the others deleted: for a small disk "
                          "such as Kaggle's 20 GB; make KEEP_EPOCHS=soup); train.py's disk plan counts it"),
    "--budget-min": dict(type=float, help="time budget in minutes, counted from the start of main (default: by "
                         f"the competition's year, {infer_setting('budget_min_by_year')[2024]:g} for BirdCLEF 2024, else "
                         f"{infer_setting('budget_min'):g})"),
    "--teacher-model": dict(help="the teacher: an ONNX file with Perch v2's signature (make's TEACHER_MODEL; its "
                            "runtime: onnxruntime)"),
    "--teacher-mapping": dict(help="the teacher's mapping of our classes to its outputs (<teacher>.mapping.csv, "
                              "written by make teacher)"),
    "--teacher-vote": dict(type=float, help="with --teacher-model: its share of each class it covers in the blend "
                           "(make's TEACHER_VOTE); the classes it does not cover keep the ensemble's"),
    "--distill": dict(type=float, help="learn a teacher's embedding of each sample too: a linear projection of the "
                      "pooled features, loss 1 - cosine similarity, added to the classification loss with this "
                      "weight (make's DISTILL); 0: off. The projection is not exported"),
    "--pp-weight": dict(type=float, help="neighbour smoothing weight (the write-up's post-processing); 0 disables"),
    "--quick": dict(action="store_true", help="smoke test (make test runs it): tiny data and models, 1 epoch"),
    # generated demos (demo_data.py)
    "--per-species": dict(type=int, help="demo size: training recordings per species"),
    "--unlabeled": dict(type=int, help="demo size: unlabeled one-minute soundscapes"),
    "--test": dict(type=int, help="demo size: labelled test one-minute soundscapes (12 windows each)"),
    "--speech-share": dict(type=float, help="demo size: share of the training recordings that open with 3-9 s of "
                           "speech, as sound archives' do (espeak-ng speaks them; <out>-speech.csv lists them)"),
    "--labelled-soundscapes": dict(type=int, help="demo size: of the unlabeled soundscapes, this many labelled as "
                                   "BirdCLEF+ 2026 does (train_soundscapes_labels.csv: rows written twice, one file "
                                   "labelled in part), with a species that no training recording has; 0: none"),
}


def add_flag(parser, name, **given):
    """parser.add_argument(name) with SHARED[name]'s type, choices and help; `given` adds default, required,
    choices, dest or further option strings, never another help."""
    if "help" in given:
        raise ValueError(f"{name}'s help is SHARED's: one meaning in every script")
    names = [name] + list(given.pop("aliases", []))
    return parser.add_argument(*names, **{**SHARED[name], **given})


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's examples and shows every default."""
