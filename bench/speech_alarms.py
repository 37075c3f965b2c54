"""What prep's speech check calls speech, file by file: how long the detected opening speech lasts on real spoken
openings and on bird calls, and how the false alarms fall on classes. The figures behind speech.py's rules.

    python demo_data.py --out /tmp/sp/demo1 --seed 1 --unlabeled 2 --test 2 --speech-share 0.3 --voice-like
    python bench/speech_alarms.py --demos /tmp/sp/demo1 --real --threads 2     # the tables of docs/accuracy.md
    python bench/speech_alarms.py --demos /tmp/sp/demo1 --files /tmp/sp/files.csv   # and each file's row

Input: demo folders (demo_data.py, 2024 layout, <demo>-speech.csv says which recordings open with speech and for
how long) and, with --real, the real bird recordings that the teacher's packages ship (pykanto, hawkears: make
test installs them). Output: per min_announcement_seconds, the spoken openings found, the other files flagged
(false alarms) and the most-flagged class's share, before and after speech.far_above's class rule; the length
of the detected speech on both; the false alarms per class at the default.
"""
import argparse
import glob
import importlib.util
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import demo_data  # noqa: E402
import speech  # noqa: E402
from common import SAMPLE_RATE  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from progress import progress  # noqa: E402
from infer import read_audio  # noqa: E402

# defaults
look_seconds = 15.0  # prep's longer look at a flagged opening
minimums = (0.25, 1.0, 1.5, 2.0, 2.5, 3.0)  # speech.min_announcement_seconds to compare


def real_bird_recordings():
    """The real bird recordings the teacher's packages ship (pykanto's great tits, storm petrels and Bengalese
    finches, hawkears' common yellowthroat), where they are installed."""
    found = []
    for name in ("pykanto", "hawkears"):
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            root = list(spec.submodule_search_locations)[0]
            found += [f for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                      if f.lower().endswith((".wav", ".mp3", ".flac", ".ogg"))]
    return sorted(found)


def opening_lengths(detector, paths, seconds=look_seconds, batch=64):
    """Seconds of speech (start to end, short pauses joined) that opens each file, 0 where none; first `seconds`
    (shorter files padded with silence, in batches)."""
    out, n = [], int(seconds * SAMPLE_RATE)
    paths = list(paths)
    with progress(total=len(paths), desc="speech check", unit="file") as bar:
        for start in range(0, len(paths), batch):
            waves = np.zeros((len(paths[start:start + batch]), n), dtype=np.float32)
            for i, path in enumerate(paths[start:start + batch]):
                audio = read_audio(path, max_seconds=seconds)
                waves[i, :len(audio)] = audio[:n]
            for probs in detector.probabilities(waves):
                found = speech.opening_speech(probs)
                out.append(0.0 if found is None else found[1] - found[0])
            bar.update(len(waves))
    return out


def demo_files(folder):
    """Each training file of a demo: path, class, seconds of spoken opening (0: none)."""
    meta = pd.read_csv(os.path.join(folder, "train_metadata.csv"))
    truth_path = demo_data.speech_path(folder)
    truth = pd.read_csv(truth_path).set_index("filename")["speech_seconds"] if os.path.isfile(truth_path) else {}
    return pd.DataFrame({"demo": os.path.basename(folder.rstrip("/")),
                         "path": [os.path.join(folder, "train_audio", f) for f in meta["filename"]],
                         "label": meta["primary_label"],
                         "spoken_seconds": [float(truth.get(f, 0.0)) for f in meta["filename"]]})


def rule_table(files):
    """Per minimum length, as prep --speech on decides (every file looked at): spoken openings found, false alarms
    and the most-flagged class's share of its files that do not open with speech, before and after the class
    rule (speech.far_above over each demo's files)."""
    rows = []
    spoken, birds = files["spoken_seconds"] > 0, files["spoken_seconds"] == 0
    for minimum in minimums:
        flagged = files["detected_seconds"] >= minimum
        excused = set()
        for _, demo in files.groupby("demo"):
            excused |= {(demo["demo"].iloc[0], c) for c in speech.far_above(demo["label"], flagged[demo.index])}
        cut = flagged & ~pd.Series([(d, c) in excused for d, c in zip(files["demo"], files["label"])], files.index)
        row = {"min_s": minimum}
        for name, mask in (("check", flagged), ("with class rule", cut)):
            by_class = mask[birds].groupby(files["demo"] + "/" + files["label"]).mean()
            row[f"found ({name})"] = f"{int(mask[spoken].sum())}/{int(spoken.sum())}"
            row[f"false alarms ({name})"] = f"{int(mask[birds].sum())}/{int(birds.sum())}"
            row[f"top class ({name})"] = f"{by_class.max():.0%} {by_class.idxmax()}" if len(by_class) else "-"
        row["classes excused"] = ", ".join(sorted(f"{d}/{c}" for d, c in excused)) or "none"
        rows.append(row)
    return pd.DataFrame(rows)


def quantiles(values):
    values = np.asarray(values)
    if not len(values):
        return "none"
    q = np.quantile(values, [0, 0.1, 0.5, 0.9, 1])
    return f"n={len(values)} min {q[0]:.2f} p10 {q[1]:.2f} median {q[2]:.2f} p90 {q[3]:.2f} max {q[4]:.2f} s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--demos", default="", help="demo folders, comma-separated (demo_data.py)")
    p.add_argument("--real", action="store_true", help="also the real bird recordings of the teacher's packages")
    p.add_argument("--files", help="write each file's row (path, class, spoken and detected seconds) to this CSV")
    add_flag(p, "--threads", default=2)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    detector = speech.SpeechDetector()
    files = pd.concat([demo_files(d) for d in args.demos.split(",") if d] +
                      ([pd.DataFrame({"demo": "real", "path": real_bird_recordings(), "spoken_seconds": 0.0})
                        .assign(label=lambda f: f["path"].map(lambda x: os.path.basename(os.path.dirname(x))))]
                       if args.real else []), ignore_index=True)
    if files.empty:
        p.error("nothing to check: give --demos and/or --real (the real recordings need make test's packages)")
    files["detected_seconds"] = opening_lengths(detector, files["path"])
    if args.files:
        files.to_csv(args.files, index=False)
    print("detected opening speech, spoken openings:", quantiles(files.loc[files["spoken_seconds"] > 0,
                                                                          "detected_seconds"]))
    print("spoken openings as made (seconds of speech):", quantiles(files.loc[files["spoken_seconds"] > 0,
                                                                               "spoken_seconds"]))
    alarms = files[(files["spoken_seconds"] == 0) & (files["detected_seconds"] > 0)]
    print("detected opening speech, false alarms:", quantiles(alarms["detected_seconds"]))
    for demo, part in files[files["spoken_seconds"] == 0].groupby("demo"):
        flagged = part["detected_seconds"] >= speech.min_announcement_seconds
        by_class = flagged.groupby(part["label"]).agg(["sum", "count"])
        print(f"false alarms at {speech.min_announcement_seconds:g} s, {demo}: " + ", ".join(
            f"{c} {int(r['sum'])}/{int(r['count'])}" for c, r in by_class.iterrows() if r["sum"]) or "none")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(rule_table(files).to_string(index=False))


if __name__ == "__main__":
    from errors import run_main
    run_main(main)
