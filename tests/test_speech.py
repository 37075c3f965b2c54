"""Spoken openings: speech.py's reading of Silero VAD's frame probabilities, the detector on real speech (espeak-ng
speaks an archive's announcement) and on real bird recordings (the teacher's packages ship them), and prep.py
taking the training window from where the speech ends."""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import infer
import prep
import speech
from common import SAMPLE_RATE, first_five_seconds
from tables import CachePaths
from helpers import ROOT

HAS_VAD = importlib.util.find_spec("silero_vad") is not None
needs_vad = pytest.mark.skipif(not HAS_VAD, reason="silero-vad is not installed (pip install -r requirements-speech.txt)")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng (a Debian package: apt-get install espeak-ng) speaks the test speech")
ANNOUNCEMENT = "Recording number {n}, Colombian sound archive, Villavicencio, March twelfth, recordist Maria Lopez"


def frames(*spans, total=10.0, p=0.9):
    """Frame probabilities with speech (probability p) in the given (start s, end s) spans."""
    probs = np.zeros(int(total / speech.FRAME_SECONDS), dtype=np.float32)
    for start, end in spans:
        probs[int(start / speech.FRAME_SECONDS):int(end / speech.FRAME_SECONDS)] = p
    return probs


def test_speech_segments_join_short_pauses_and_drop_bursts():
    segments = speech.speech_segments(frames((0.5, 2.0), (2.5, 4.0), (6.0, 6.1), (8.0, 9.0)))
    assert [(round(s, 1), round(e, 1)) for s, e in segments] == [(0.5, 4.0), (8.0, 9.0)]  # 0.5 s pause joined
    assert abs(speech.opening_speech_end(frames((0.5, 2.0), (2.5, 4.0))) - 4.0) < 0.05
    assert speech.opening_speech_end(frames((6.0, 9.0))) is None            # speech after the first 5 s
    assert speech.opening_speech_end(frames((1.0, 1.1))) is None            # a 0.1-s burst is not speech
    assert speech.opening_speech_end(frames((0.0, 3.0), p=0.3)) is None     # below the threshold


def test_hysteresis_keeps_speech_through_a_dip():
    probs = frames((0.0, 3.0))
    probs[40:45] = 0.3  # above threshold - 0.15: speech goes on
    assert speech.speech_frames(probs)[42]
    probs[40:45] = 0.2
    assert not speech.speech_frames(probs)[42]


def say(text, path):
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return infer.read_audio(str(path))


def bird_recordings():
    """The real bird recordings the teacher's packages ship (pykanto, hawkears), if installed."""
    found = []
    for name in ("pykanto", "hawkears"):
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            root = list(spec.submodule_search_locations)[0]
            found += [f for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                      if f.lower().endswith((".wav", ".mp3", ".flac", ".ogg"))]
    return sorted(found)


@needs_vad
@needs_espeak
def test_detector_finds_spoken_openings(tmp_path):
    detector = speech.SpeechDetector()
    for n in (452, 1998):
        voice = say(ANNOUNCEMENT.format(n=n), tmp_path / f"a{n}.wav")
        rng = np.random.default_rng(n)
        after = (0.05 * np.sin(2 * np.pi * 3000 * np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE)
                 + 0.005 * rng.standard_normal(4 * SAMPLE_RATE)).astype(np.float32)
        end = speech.opening_speech_end(detector.probabilities(np.concatenate([voice, after])[None])[0])
        assert end is not None and abs(end - len(voice) / SAMPLE_RATE) < 1.0


@needs_vad
@pytest.mark.skipif(not bird_recordings(), reason="the teacher's packages with real bird recordings are not installed "
                    "(make test installs them)")
def test_bird_song_is_not_called_speech():
    detector = speech.SpeechDetector()
    files = bird_recordings()
    called = [f for f in files if speech.opening_speech_end(
        detector.probabilities(infer.read_audio(f, max_seconds=speech.scan_seconds)[None])[0]) is not None]
    print(f"speech in the opening of {len(called)} of {len(files)} real bird recordings: {called}")
    assert len(files) >= 10 and len(called) <= 0.05 * len(files)


@needs_vad
@needs_espeak
def test_prep_takes_the_window_after_the_speech(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    meta = pd.read_csv(data / "train_metadata.csv")
    opened, spoken_only = (data / "train_audio" / f for f in meta["filename"].iloc[:2])
    animal = infer.read_audio(str(opened))
    voice = say(ANNOUNCEMENT.format(n=7), tmp_path / "v.wav")
    import soundfile as sf
    sf.write(str(opened), np.concatenate([voice, animal]), SAMPLE_RATE, format="OGG")
    sf.write(str(spoken_only), np.concatenate([voice, voice[:SAMPLE_RATE]]), SAMPLE_RATE, format="OGG")
    for check in ("on", "off"):
        out = str(tmp_path / f"cache-{check}")
        prep.prepare(str(data), out, n_threads=2, speech_check=check)
        paths = CachePaths(out)
        rows = pd.read_csv(paths.rows)
        spoken = pd.read_csv(paths.speech)
        audio = np.load(paths.audio, mmap_mode="r")
        if check == "off":
            assert spoken.empty and len(rows) == len(meta)
            continue
        kept = dict(zip(spoken["path"].map(os.path.basename), spoken["kept"]))
        assert kept[opened.name] and not kept[spoken_only.name]
        assert len(kept) - 2 <= 0.05 * len(meta)  # the synthetic calls are rarely taken for speech
        end = spoken.set_index(spoken["path"].map(os.path.basename))["speech_end_seconds"][opened.name]
        assert abs(end - len(voice) / SAMPLE_RATE) < 1.0
        assert spoken_only.name not in set(rows["filename"].map(os.path.basename))
        bad = pd.read_csv(paths.bad_files)
        assert bad["reason"].str.contains("speech").any()
        # the cached window is the 5 s from where the speech ends
        row = list(rows["filename"].map(os.path.basename)).index(opened.name)
        expected = first_five_seconds(infer.read_audio(str(opened))[int(end * SAMPLE_RATE):])
        assert np.corrcoef(np.asarray(audio[row], dtype=np.float32), expected)[0, 1] > 0.99


@needs_vad
def test_bench_speech_prints_its_figures():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "speech_speed.py"), "--threads", "2",
                           "--recordings", "32", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last = dict(field.split("=") for field in done.stdout.strip().splitlines()[-1].split()[1:])
    assert float(last["seconds_per_audio_hour"]) > 0 and float(last["bc24_minutes"]) > 0
