"""Field recordings: infer.py --detections' speed (hours of audio per hour) and peak memory, on generated recorder
files, for make demo's ensemble and the write-up's six models (random weights: the same networks' cost).

    python bench/field_speed.py                                  # 2 and 4 threads, 1-minute and 2-hour files
    python bench/field_speed.py --thread-counts 2 --repeats 1 --long-hours 0.5

Speed: a folder of --speed-minutes of audio (1-minute recorder files), scored by infer.py --detections in a
process of its own, --repeats times per ensemble and thread count, interleaved with runs on an empty folder (the
start-up: imports, loading the models); hours of audio per hour from the medians, start-up left out (a big batch
pays it once); beside them, the submission path's (infer.py --out: whole files, decoding ahead in two threads) on
the same files. Memory: the peak
resident memory (ru_maxrss) of infer.py --detections on one 1-minute file and on one --long-hours file, and of
infer.py's submission path (whole-file reading) on that long file beside them. Prints a table and ends with one
line per figure.
"""
import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import infer  # noqa: E402
from common import MelModel  # noqa: E402
from export import export_artifact  # noqa: E402
from files import save_json  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from tables import read_models_table  # noqa: E402
from train import BASELINE_RECIPE  # noqa: E402

N_CLASSES = 182
ENSEMBLES = {  # name: (models table, the recipe its rows train with)
    "demo": ("models-demo.csv", dict(head=BASELINE_RECIPE["head"], channels=BASELINE_RECIPE["channels"],
                                     f_min=BASELINE_RECIPE["f_min"], f_max=BASELINE_RECIPE["f_max"],
                                     normalize=BASELINE_RECIPE["normalize"])),
    "writeup": ("models.csv", dict(head="gem5", channels=3, f_min=20.0, f_max=16000.0, normalize="minmax")),
}


def export_ensemble(folder, models, recipe):
    """Each row of a models table with the recipe's head, channels and mel, random weights, exported."""
    table = read_models_table(os.path.join(ROOT, models))
    classes = [f"c{i:03d}" for i in range(N_CLASSES)]
    for model_id, row in table.iterrows():
        torch.manual_seed(int(model_id))
        network = MelModel(N_CLASSES, int(row["image_height"]), int(row["image_width"]), head=recipe["head"],
                                  channels=recipe["channels"])
        mel = infer.MelSettings(n_mels=int(row["n_mels"]), hop_length=int(row["hop_length"]), f_min=recipe["f_min"],
                                f_max=recipe["f_max"], normalize=recipe["normalize"])
        export_artifact(network, mel, classes, folder, f"model{model_id}", value=0.7)
    save_json(infer.ensemble_manifest([f"model{i}" for i in table.index]), os.path.join(folder, "manifest.json"))
    return folder


def write_recording(path, seconds, seed):
    """A recorder's file: noise and chirps, 16-bit WAV at 32 kHz, written a minute at a time."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=infer.SAMPLE_RATE, channels=1, subtype="PCM_16") as f:
        for start in range(0, int(seconds), 60):
            n = int(min(60, seconds - start) * infer.SAMPLE_RATE)
            t = np.arange(n) / infer.SAMPLE_RATE
            chirp = np.sin(2 * np.pi * (2000 + 2000 * (t % 1.5)) * t) * ((t % 7) < 0.5)
            f.write((0.02 * rng.standard_normal(n) + 0.3 * chirp).astype(np.float32))


def run_infer(args):
    """infer.py in a process of its own: its seconds, start-up included (as a user's run pays it)."""
    began = time.time()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"infer.py failed: {done.stderr[-2000:]}")
    return time.time() - began


def peak_rss_of(args):
    """The peak RSS of one infer.py run, from a fresh measuring process (ru_maxrss of children is a maximum over
    all of them, so each measurement gets a parent of its own)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, os.path.join(ROOT, "infer.py"), *args],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1e6  # kB -> GB


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--thread-counts", default="2,4", help="infer.py --threads values to time, comma-separated")
    add_flag(p, "--repeats", default=3)
    p.add_argument("--speed-minutes", type=int, default=20, help="minutes of audio timed per run (1-minute files)")
    p.add_argument("--long-hours", type=float, default=2.0, help="the long file of the memory figures, in hours")
    p.add_argument("--ensembles", default="demo,writeup", help=f"which of {', '.join(ENSEMBLES)}")
    add_flag(p, "--root")
    args = p.parse_args()
    threads = [int(t) for t in args.thread_counts.split(",")]
    names = args.ensembles.split(",")
    with (contextlib.nullcontext(args.root) if args.root else tempfile.TemporaryDirectory()) as root:
        os.makedirs(root, exist_ok=True)
        ensembles = {n: export_ensemble(os.path.join(root, n), *ENSEMBLES[n]) for n in names}
        speed_dir, long_dir, short_dir = (os.path.join(root, d) for d in ("speed", "long", "short"))
        for folder in (speed_dir, long_dir, short_dir):
            os.makedirs(folder)
        for i in range(args.speed_minutes):
            write_recording(os.path.join(speed_dir, f"20260401_{6 + i // 60:02d}{i % 60:02d}00.WAV"), 60, seed=i)
        write_recording(os.path.join(short_dir, "20260401_060000.WAV"), 60, seed=99)
        write_recording(os.path.join(long_dir, "20260401_060000.WAV"), args.long_hours * 3600, seed=98)

        empty_dir = os.path.join(root, "empty")
        os.makedirs(empty_dir)
        runs = [(n, t, folder, path) for n in names for t in threads
                for folder, path in ((speed_dir, "detections"), (empty_dir, "detections"), (speed_dir, "submission"))]
        times = {run: [] for run in runs}
        for repeat in range(args.repeats):  # interleaved: drift between runs hits every configuration alike
            for n, t, folder, path in runs:
                out = os.path.join(root, f"out-{n}-{t}-{repeat}-{os.path.basename(folder)}")
                seconds = run_infer(["--ensemble", ensembles[n], "--audio", folder, "--threads", str(t)] + (
                    ["--detections", out] if path == "detections" else ["--out", out + ".csv", "--budget-min", "1e4"]))
                times[(n, t, folder, path)].append(seconds)
                print(f"run {repeat + 1}: {n} at {t} threads, {path}, {os.path.basename(folder)} folder: "
                      f"{seconds:.1f} s", flush=True)
        print(f"\n{'ensemble':<10}{'threads':>8}{'start-up s':>12}{'audio h per hour':>18}{'submission path':>17}")
        figures = []
        for n in names:
            for t in threads:
                startup = statistics.median(times[(n, t, empty_dir, "detections")])
                rate = {path: 3600 / ((statistics.median(times[(n, t, speed_dir, path)]) - startup) * 60
                                      / args.speed_minutes) for path in ("detections", "submission")}
                print(f"{n:<10}{t:>8}{startup:>12.1f}{rate['detections']:>18.1f}{rate['submission']:>17.1f}")
                figures.append(f"audio_hours_per_hour[{n},threads={t}]={rate['detections']:.1f}")
        memory = {}
        for n in names:
            for label, folder in (("1 min", short_dir), (f"{args.long_hours:g} h", long_dir)):
                memory[(n, label, "detections")] = peak_rss_of(
                    ["--ensemble", ensembles[n], "--audio", folder, "--detections", os.path.join(root, f"m-{n}"),
                     "--threads", str(threads[0]), "--overwrite"])
            memory[(n, f"{args.long_hours:g} h", "submission (whole file)")] = peak_rss_of(
                ["--ensemble", ensembles[n], "--audio", long_dir, "--out", os.path.join(root, f"sub-{n}.csv"),
                 "--threads", str(threads[0]), "--budget-min", "1000"])
        print(f"\n{'ensemble':<10}{'file':>8}  {'path':<26}{'peak RSS (GB)':>14}")
        for (n, label, path), gb in memory.items():
            print(f"{n:<10}{label:>8}  {path:<26}{gb:>14.2f}")
            figures.append(f"peak_rss_gb[{n},{label.replace(' ', '')},{path.split()[0]}]={gb:.2f}")
        print("\n" + "\n".join(figures))


if __name__ == "__main__":
    main()
