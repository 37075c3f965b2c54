"""Spoken announcements at the start of training recordings. Sound archives (the Colombian Sound Archive in
BirdCLEF+ 2025's train_audio) open a recording with a voice: recording number, place, date, recordist. The
write-up trains on each recording's first 5 s, which then hold a voice and no animal; prep.py asks this file
where the speech in a recording's opening ends and starts the training window there.

    python speech.py data/birdclef-2025/train_audio/1139490/CSA36385.ogg    # the speech in a file's opening
    python speech.py --seconds 120 FILE...                                    # ... looking 120 s in

Two rules keep it from cutting birds. An announcement is long: speech counts only where it lasts
min_announcement_seconds (bird calls that Silero takes for a voice last about a second, announcements several;
docs/accuracy.md has both distributions). A species is not a voice: where one class's files are flagged far more
often than the rest's (far_above), the detector is hearing that animal, and its files keep their first 5 s.

The detector is Silero VAD (the silero-vad package: its model ships in the wheel, nothing is downloaded), run on
16-kHz audio in 32-ms frames, many recordings per batch. An optional extra: pip install -r requirements-speech.txt
(make installs it).
"""
import argparse

import numpy as np

from common import SAMPLE_RATE, WINDOW_SECONDS
from flags import HelpFormatter, add_flag

# defaults
threshold = 0.4          # speech probability of a frame that starts speech (2025's public notebooks used ~0.4)
opening_seconds = 5.0    # speech that starts inside the first window makes it a voice, not an animal
bridge_seconds = 1.0     # pauses shorter than this join speech (an announcement pauses between its items)
min_speech_seconds = 0.25  # shorter bursts are not speech (Silero's own minimum)
min_announcement_seconds = 2.5  # a spoken opening shorter than this is a call, not an announcement: the demos'
#                                announcements are detected at 3.1 s and longer, ordinary calls at 1.9 s at most
#                                (bench/speech_alarms.py; docs/accuracy.md)
far_above_ratio = 3.0    # a group (class, collection) flagged at this many times the others' share ...
far_above_p = 1e-3       # ... and this unlikely at their share (binomial tail) ...
far_above_min = 2        # ... with at least this many flagged files, is flagged far above them
ARCHIVES = ("CSA",)      # collections of sound archives, whose recordings open with an announcement
scan_seconds = 60.0      # how far into a recording prep looks for the end of its opening speech
min_left_seconds = 1.0   # a recording with less than this after its speech is speech throughout: left out
threads = 2

VAD_RATE = 16000
FRAME_SAMPLES = 512                      # Silero's frame at 16 kHz
FRAME_SECONDS = FRAME_SAMPLES / VAD_RATE
BATCH = 256                              # recordings per call of the model


class SpeechDetector:
    """Silero VAD over batches of 32-kHz waveforms: probabilities(waves) -> (B, frames) speech probability of
    each 32-ms frame. Raises ImportError when silero-vad is not installed."""

    def __init__(self):
        import torch
        n_threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its import sets torch to one thread: put ours back
        torch.set_num_threads(n_threads)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation note
            self.model = load_silero_vad()

    def probabilities(self, waves):
        """waves: (B, samples) float32 at 32 kHz, equal lengths. Returns (B, frames) float32."""
        import torch
        from scipy.signal import resample_poly
        waves = np.asarray(waves, dtype=np.float32)
        if len(waves) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        at_16k = resample_poly(waves, VAD_RATE, SAMPLE_RATE, axis=1).astype(np.float32)
        out = []
        with torch.no_grad():
            for start in range(0, len(at_16k), BATCH):
                out.append(self.model.audio_forward(torch.from_numpy(at_16k[start:start + BATCH]), VAD_RATE).numpy())
        return np.concatenate(out)


def speech_frames(probs, threshold=threshold):
    """(frames,) bool: Silero's hysteresis, speech starts at threshold and ends below threshold - 0.15."""
    speaking, out = False, np.zeros(len(probs), dtype=bool)
    for i, p in enumerate(probs):
        speaking = p >= threshold if not speaking else p >= threshold - 0.15
        out[i] = speaking
    return out


def speech_segments(probs, threshold=threshold, bridge=bridge_seconds, min_speech=min_speech_seconds):
    """[(start s, end s)] of speech from one recording's frame probabilities: pauses under `bridge` joined,
    segments under `min_speech` dropped."""
    frames = speech_frames(probs, threshold)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], frames.astype(np.int8), [0]])))
    segments = []
    for start, end in zip(edges[::2] * FRAME_SECONDS, edges[1::2] * FRAME_SECONDS):
        if segments and start - segments[-1][1] < bridge:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return [(round(s, 3), round(e, 3)) for s, e in segments if e - s >= min_speech]


def opening_speech(probs, threshold=threshold, opening=opening_seconds, min_seconds=0.0):
    """(start s, end s) of the first speech that starts in a recording's opening and lasts min_seconds, or None."""
    segments = [seg for seg in speech_segments(probs, threshold) if seg[0] < opening and seg[1] - seg[0] >= min_seconds]
    return segments[0] if segments else None


def opening_speech_end(probs, threshold=threshold, opening=opening_seconds, min_seconds=0.0):
    """Seconds where the speech that starts in a recording's opening (and lasts min_seconds) ends, or None."""
    found = opening_speech(probs, threshold, opening, min_seconds)
    return found[1] if found else None


def far_above(groups, flagged, reference=None, ratio=far_above_ratio, p=far_above_p, at_least=far_above_min):
    """The groups whose files are flagged far more often than the others': {group: (flagged, files, the others'
    share)}. groups, flagged: one per file. A group is compared with every other file, or with the files of group
    `reference` where given; it stands out at `ratio` times their share, `at_least` flagged files, and a binomial
    tail under `p` at their share (so a small class is not called out by chance). Their share counts half a
    flagged file more than they have, so that none flagged is a small share, not an impossible one."""
    from scipy.stats import binom
    groups, flagged = np.asarray(groups, dtype=object), np.asarray(flagged, dtype=bool)
    out = {}
    for group in sorted(set(groups), key=str):
        mine = groups == group
        others = (groups == reference) if reference is not None else ~mine
        if group == reference or not others.any():
            continue
        k, n = int(flagged[mine].sum()), int(mine.sum())
        share = (float(flagged[others].sum()) + 0.5) / (int(others.sum()) + 1)
        if k >= at_least and k / n >= ratio * share and binom.sf(k - 1, n, share) < p:
            out[group] = (k, n, share)
    return out


def main(argv=None):
    from infer import read_audio
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--seconds", type=float, default=scan_seconds, help="how far into each file to look")
    p.add_argument("--threshold", type=float, default=threshold, help="speech probability that starts speech")
    add_flag(p, "--threads", default=threads)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    detector = SpeechDetector()  # keeps the thread count set here
    for path in args.files:
        try:
            audio = read_audio(path, max_seconds=args.seconds)
        except Exception as err:  # one unreadable file does not stop the others
            print(f"{path}: unreadable ({type(err).__name__}: {err})".replace("\n", " "))
            continue
        probs = detector.probabilities(audio[None])[0]
        segments = speech_segments(probs, args.threshold)
        end = opening_speech_end(probs, args.threshold)
        print(f"{path}: " + (f"opens with speech to {end:.1f} s; " if end is not None else "no speech in its first "
                             f"{WINDOW_SECONDS:g} s; ")
              + ("speech at " + ", ".join(f"{s:.1f}-{e:.1f} s" for s, e in segments) if segments else "no speech")
              + f" (first {len(audio) / SAMPLE_RATE:.0f} s)")


if __name__ == "__main__":
    from errors import run_main
    run_main(main)
