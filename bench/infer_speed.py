"""End-to-end inference speed of a models table's ensemble (default models.csv's six; random weights) on synthetic
soundscapes: infer.py (decode + shared mels in a thread pool, fastest backend, post-processing) against a
plain eager-PyTorch loop over the same models (each model computes its own mel, fp32, no sharing).

    python bench/infer_speed.py --threads 2 --synthetic-files 4
    python bench/infer_speed.py --models models-2025.csv --soundscape-seconds 60 --threads 4 --no-eager \
        --projected-files 700 --kaggle-min 90
    python bench/infer_speed.py --threads 2 --post-processing        # each post-processing step's cost
    make bench-infer

Both run --repeats times, interleaved; the medians are reported. Prints a per-model table (last run) and
ends with:
ensemble_s_per_soundscape=X eager_s_per_soundscape=Y speedup=Z
"""
import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import infer  # noqa: E402
from demo_data import write_ogg  # noqa: E402
from common import MelModel, MelFrontEnd, MelSettings, window_seconds_of  # noqa: E402
from tables import read_models_table  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from export import export_artifact  # noqa: E402
from files import save_json  # noqa: E402

N_CLASSES = 182
SECONDS = 240


def build_ensemble(folder, table):
    """Each row's model (its backbone, head, window and mel settings; the write-up's where it leaves them), random
    weights, exported as soup.py exports: {name: (model, mel settings, window seconds)}."""
    models = {}
    for model_id, row in table.iterrows():
        torch.manual_seed(int(model_id))
        given = {k: row[k] for k in ("backbone", "head", "n_fft", "f_min", "f_max") if row.get(k, "") != ""}
        model = MelModel(N_CLASSES, int(row["image_height"]), int(row["image_width"]), backbone=given.get("backbone"),
                         head=given.get("head", "gem5")).eval()
        settings = MelSettings(n_mels=int(row["n_mels"]), hop_length=int(row["hop_length"]),
                               **{k: type(getattr(MelSettings(), k))(given[k]) for k in ("n_fft", "f_min", "f_max")
                                  if k in given})
        seconds = window_seconds_of(row)
        name = f"model{model_id}"
        export_artifact(model, settings, [f"c{i}" for i in range(N_CLASSES)], folder, name, value=0.7,
                        window_seconds=seconds)
        models[name] = (model, settings, seconds)
    save_json(infer.ensemble_manifest(models), os.path.join(folder, "manifest.json"))
    return models


def eager_loop(paths, models):
    """The naive way: per file, per model, its own mel and an eager fp32 forward pass."""
    per_model = {name: 0.0 for name in models}
    began = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            audio, _ = sf.read(path, dtype="float32")
            n_rows = infer.windows_of(audio).shape[0]
            for name, (model, settings, seconds) in models.items():
                t = time.perf_counter()
                windows = torch.from_numpy(infer.centred_windows(audio, n_rows, seconds))
                torch.sigmoid(model(MelFrontEnd(settings)(windows)))
                per_model[name] += time.perf_counter() - t
    return (time.perf_counter() - began) / len(paths), {k: v / len(paths) for k, v in per_model.items()}


POST_PROCESSING = {  # name: infer.PostProcessing
    "none": infer.PostProcessing(kernel=(1.0,), boost=0.0, tta=0.0),
    "the write-up's neighbours (0.5, 1, 0.5)": infer.PostProcessing(),
    "kernel (.1, .2, .4, .2, .1)": infer.PostProcessing(kernel=(0.1, 0.2, 0.4, 0.2, 0.1), boost=0.0, tta=0.0),
    "boost 0.2": infer.PostProcessing(kernel=(1.0,), boost=0.2, tta=0.0),
    "shifted windows 0.5": infer.PostProcessing(kernel=(1.0,), boost=0.0, tta=0.5),
    "all three": infer.PostProcessing(kernel=(0.1, 0.2, 0.4, 0.2, 0.1), boost=0.2, tta=0.5),
}


def time_post_processing(paths, networks, front_end, repeats):
    """infer.py's predict_files with each post-processing, interleaved: seconds per soundscape, medians."""
    runs = {name: [] for name in POST_PROCESSING}
    for _ in range(repeats):
        for name, pp in POST_PROCESSING.items():
            began = time.perf_counter()
            infer.predict_files(paths, networks, front_end, pp=pp, log=False)
            runs[name].append((time.perf_counter() - began) / len(paths))
    base = float(np.median(runs["none"]))
    print(f"\n{len(paths)} synthetic soundscapes, {len(networks)} models, backend "
          f"{networks[0].backend}, precision {networks[0].precision}: seconds per soundscape, medians of {repeats}")
    for name, values in runs.items():
        median = float(np.median(values))
        print(f"{name:<40} {median:7.3f} s  ({median / base:5.2f}x none; runs {' '.join(f'{v:.3f}' for v in values)})")
    print(" ".join(f"pp_s_per_soundscape[{name.split(' (')[0].replace(' ', '_')}]={np.median(v):.3f}"
                   for name, v in runs.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    p.add_argument("--synthetic-files", type=int, default=4, help="synthetic soundscapes")
    add_flag(p, "--soundscape-seconds", default=SECONDS)
    p.add_argument("--projected-files", type=int, default=1100, help="the hidden test set's soundscapes, for the "
                   "projection (2024's: 1,100 of 240 s; 2025's: about 700 of 60 s)")
    p.add_argument("--kaggle-min", type=float, default=120, help="Kaggle's limit for the projection (2024: 120 "
                   "minutes; from 2025: 90)")
    add_flag(p, "--backend", default="auto")
    add_flag(p, "--models", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    "models.csv"))
    add_flag(p, "--precision", default="auto")
    add_flag(p, "--repeats", default=3)
    p.add_argument("--no-eager", action="store_true", help="skip the eager baseline")
    p.add_argument("--post-processing", action="store_true", help="instead: time each post-processing step "
                   "(smoothing kernel, boost, shifted windows) against none, interleaved")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table = read_models_table(args.models)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        audio_dir, ensemble_dir = os.path.join(tmp, "test_soundscapes"), os.path.join(tmp, "ensemble")
        os.makedirs(audio_dir)
        for k in range(args.synthetic_files):
            write_ogg(os.path.join(audio_dir, f"bench{k}.ogg"),
                      (rng.standard_normal(int(args.soundscape_seconds * 32000)) * 0.05).astype(np.float32))
        models = build_ensemble(ensemble_dir, table)
        paths = infer.list_audio(audio_dir)

        began = time.perf_counter()
        networks, front_end, classes, backend = infer.load_ensemble(ensemble_dir, args.backend, args.threads,
                                                               args.precision)
        load_s = time.perf_counter() - began
        infer.predict_files(paths[:1], networks, front_end, log=False)  # warm-up (first-call allocations)
        if args.post_processing:
            return time_post_processing(paths, networks, front_end, args.repeats)
        ensemble_runs, eager_runs, eager_per_model = [], [], {}
        for _ in range(args.repeats):  # interleaved, so that both see the same machine
            began = time.perf_counter()
            results, n_windows_of, _, network_s = infer.predict_files(paths, networks, front_end, log=False)
            frame = infer.submission_frame(paths, results, n_windows_of, classes)
            frame.to_csv(os.path.join(tmp, "submission.csv"), index=False)
            ensemble_runs.append((time.perf_counter() - began) / len(paths))
            assert len(frame) == len(paths) * math.ceil(args.soundscape_seconds / 5)
            if not args.no_eager:
                eager_s, eager_per_model = eager_loop(paths, models)
                eager_runs.append(eager_s)
        ensemble_s = float(np.median(ensemble_runs))
        eager_s = float(np.median(eager_runs)) if eager_runs else float("nan")

    rows = []
    for name, (model, settings, seconds) in models.items():
        per_file = network_s[name] / len(paths)
        rows.append(dict(model=name, backbone=model.backbone_name, head=model.head_kind, window_s=seconds,
                         mel=f"{settings.n_mels}/{settings.hop_length}/{settings.n_fft}",
                         image="x".join(map(str, model.image_size)),
                         eager_s=eager_per_model.get(name, float("nan")),
                         **{f"{backend}_s": per_file},
                         test_set_min=per_file * args.projected_files / 60))
    print(f"\n{len(paths)} synthetic {args.soundscape_seconds:g}-s soundscapes, {args.threads} threads, backend "
          f"{backend}, "
          f"precision {networks[0].precision}, torch {torch.__version__}; seconds per soundscape "
          f"(network only per model, last run; load+compile {load_s:.1f} s)")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("runs (s per soundscape): infer.py " + " ".join(f"{v:.3f}" for v in ensemble_runs)
          + "; eager " + " ".join(f"{v:.3f}" for v in eager_runs))
    total = ensemble_s * args.projected_files / 60
    print(f"projection for {args.projected_files:,} soundscapes: {total:.1f} min (infer.py; "
          f"{total / args.kaggle_min:.0%} of {args.kaggle_min:g} minutes), {eager_s * args.projected_files / 60:.1f} min (eager)")
    print(f"ensemble_s_per_soundscape={ensemble_s:.3f} eager_s_per_soundscape={eager_s:.3f} "
          f"speedup={eager_s / ensemble_s:.1f}")


if __name__ == "__main__":
    main()
