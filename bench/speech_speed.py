"""What prep's speech check costs: speech.py's detector (Silero VAD, batches of 256 recordings) on the first 5 s
of many training recordings, in seconds per hour of audio, and what it adds to prep at BirdCLEF size (every
training recording's first 5 s; a recording whose opening is speech is looked at again on its own, 15 s of it,
and up to 60 s where the speech goes on).

    python bench/speech_speed.py --threads 2
    python bench/speech_speed.py --threads 2 --recordings 512 --repeats 3

Random noise as audio: speed only. Ends with one line: speech seconds_per_audio_hour=... bc24_minutes=...
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import speech  # noqa: E402
from common import SAMPLE_RATE, WINDOW_SAMPLES  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from errors import run_main  # noqa: E402

# defaults
recordings = 1024        # first-5-s windows (one per recording) timed per repeat
repeats = 3
rows_2024 = 24459        # BirdCLEF 2024's training recordings
rows_2025 = 28564        # BirdCLEF+ 2025's


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    p.add_argument("--recordings", type=int, default=recordings, help="first-5-s windows timed per repeat")
    add_flag(p, "--repeats", default=repeats)
    args = p.parse_args(argv)
    import torch
    detector = speech.SpeechDetector()
    torch.set_num_threads(args.threads)
    waves = (np.random.default_rng(0).standard_normal((args.recordings, WINDOW_SAMPLES)) * 0.05).astype(np.float32)
    detector.probabilities(waves[:speech.BATCH])  # warm-up
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        detector.probabilities(waves)
        times.append(time.perf_counter() - began)
    per_window = float(np.median(times)) / args.recordings
    per_hour = per_window * 3600 / (WINDOW_SAMPLES / SAMPLE_RATE)
    one = (np.random.default_rng(1).standard_normal(int(3 * WINDOW_SAMPLES)) * 0.05).astype(np.float32)
    began = time.perf_counter()
    detector.probabilities(one[None])
    reread = time.perf_counter() - began
    print(f"speech check, {args.threads} threads: {per_window * 1000:.2f} ms per 5-s window in batches of "
          f"{speech.BATCH} ({per_hour:.0f} s per hour of audio, median of {args.repeats}); a recording whose opening "
          f"is speech, its first 15 s again on its own: {reread:.2f} s")
    print(f"at BirdCLEF size: 2024's {rows_2024:,} recordings {rows_2024 * per_window / 60:.1f} min, 2025's "
          f"{rows_2025:,} {rows_2025 * per_window / 60:.1f} min (plus {reread:.2f} s for each spoken opening)")
    print(f"speech seconds_per_audio_hour={per_hour:.1f} bc24_minutes={rows_2024 * per_window / 60:.1f} "
          f"bc25_minutes={rows_2025 * per_window / 60:.1f} reread_seconds={reread:.2f}")


if __name__ == "__main__":
    run_main(main)
