"""Spoken openings: speech.py's reading of Silero VAD's frame probabilities, the detector on real speech (espeak-ng
speaks an archive's announcement) and on real bird recordings (the teacher's packages ship them), and prep.py
taking the training window from where the speech ends."""
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


def test_an_announcement_is_long_a_call_is_not():
    minimum = speech.min_announcement_seconds
    assert speech.opening_speech(frames((0.5, 1.1)), min_seconds=minimum) is None           # a 0.6-s burst
    assert speech.opening_speech(frames((0.2, 1.8), (3.5, 4.0)), min_seconds=minimum) is None  # two calls
    found = speech.opening_speech(frames((0.3, 1.5), (2.0, 3.3)), min_seconds=minimum)     # 3 s, a pause inside
    assert found is not None and abs(found[0] - 0.3) < 0.05 and abs(found[1] - 3.3) < 0.05
    # a call first, the announcement after it: the announcement's end
    assert abs(speech.opening_speech_end(frames((0.1, 0.7), (2.0, 5.5)), min_seconds=minimum) - 5.5) < 0.05


def test_a_group_flagged_far_above_the_rest_stands_out():
    labels = ["voice"] * 20 + ["a"] * 100 + ["b"] * 100
    flagged = [True] * 6 + [False] * 14 + [True] + [False] * 99 + [False] * 100
    assert list(speech.far_above(labels, flagged)) == ["voice"]
    assert speech.far_above(labels, flagged)["voice"][:2] == (6, 20)
    # one flagged file is never a pattern; a share as the rest's is none
    assert speech.far_above(["x"] * 5 + ["y"] * 100, [True] + [False] * 104) == {}
    rng = np.random.default_rng(0)
    assert speech.far_above(np.repeat(list("abcdefghijkl"), 30), rng.random(360) < 0.3) == {}  # archives at 30 %
    # a collection against Xeno-canto's share alone
    collections = ["XC"] * 100 + ["ARCH"] * 10 + ["iNat"] * 10
    flagged = [False] * 100 + [True] * 8 + [False] * 2 + [True] + [False] * 9
    assert list(speech.far_above(collections, flagged, reference="XC")) == ["ARCH"]


def spoken_rows(flagged_rows):
    return pd.DataFrame({"row": flagged_rows, "speech_end_seconds": 4.0, "after_row": range(len(flagged_rows))})


def test_which_announcements_are_cut(capsys):
    rows = pd.DataFrame({"primary_label": ["voice"] * 10 + ["a"] * 30 + ["b"] * 30,
                         "collection": ["XC"] * 40 + ["CSA"] * 20 + ["XC"] * 10})
    flagged = [0, 1, 2, 3, 4, 5, 12, 41, 42, 45, 60]      # 6 voice (XC), an a (XC), 3 b (CSA), a b (XC)
    on = prep.spoken_openings_to_cut(rows, spoken_rows(flagged), "on")
    assert list(on) == [False] * 6 + [True] * 5     # every file looked at; the voice-like class keeps its windows
    assert "class voice keeps its first 5 s: 6 of its 10 files flagged" in capsys.readouterr().out
    auto = prep.spoken_openings_to_cut(rows, spoken_rows(flagged), "auto")
    assert list(auto) == [False] * 7 + [True] * 3 + [False]   # only the archive's files are looked at
    assert "the 20 files of the sound archives' collections (CSA) are looked at" in capsys.readouterr().out


def test_auto_looks_for_speech_only_where_the_metadata_names_collections(capsys):
    assert prep.speech_detector("auto", pd.DataFrame({"primary_label": ["a"]})) is None
    assert "no collection column" in capsys.readouterr().out
    assert prep.speech_detector("off", pd.DataFrame({"collection": ["CSA"]})) is None


def test_hysteresis_keeps_speech_through_a_dip():
    probs = frames((0.0, 3.0))
    probs[40:45] = 0.3  # above threshold - 0.15: speech goes on
    assert speech.speech_frames(probs)[42]
    probs[40:45] = 0.2
    assert not speech.speech_frames(probs)[42]


def say(text, path):
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return infer.read_audio(str(path))


sys.path.insert(0, os.path.join(ROOT, "bench"))
from speech_alarms import real_bird_recordings as bird_recordings  # noqa: E402


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
def test_a_3_s_announcement_is_cut_a_word_is_not(tmp_path):
    """The detector on real speech before a call: 3 s of an announcement moves the window, a 0.6-s word does not."""
    import soundfile as sf
    detector = speech.SpeechDetector()
    rng = np.random.default_rng(3)
    call = (0.05 * np.sin(2 * np.pi * 3000 * np.arange(6 * SAMPLE_RATE) / SAMPLE_RATE)
            + 0.005 * rng.standard_normal(6 * SAMPLE_RATE)).astype(np.float32)
    voice = say(ANNOUNCEMENT.format(n=31), tmp_path / "v.wav")
    word = say("Hello", tmp_path / "w.wav")
    batch = []
    for name, opening in (("three", voice[:3 * SAMPLE_RATE]), ("word", word[:int(0.6 * SAMPLE_RATE)])):
        path = str(tmp_path / f"{name}.wav")
        audio = np.concatenate([opening, call])
        sf.write(path, audio, SAMPLE_RATE)
        batch.append((path, first_five_seconds(audio)))
    (after_three, end_three), (after_word, end_word) = prep.after_opening_speech(detector, batch)
    assert end_three is not None and abs(end_three - 3.0) < 0.6 and after_three is not None
    assert end_word is None and after_word is None


def voice_like_dataset(root, n_voice=24, n_other=12):
    """A BirdCLEF 2024 folder with no speech: the demo's voice-like species and two others."""
    import soundfile as sf
    import demo_data
    species = [demo_data.VOICE_LIKE_SPECIES, demo_data.DEMO_SPECIES[0], demo_data.DEMO_SPECIES[6]]
    rows = []
    for s, n in enumerate((n_voice, n_other, n_other)):
        for k in range(n):
            rng = np.random.default_rng([11, s, k])
            audio, _ = demo_data.demo_train_recording(rng, s, [o for o in range(3) if o != s], 10.0, species)
            filename = f"{species[s][0]}/XC{s}{k:03d}.ogg"
            os.makedirs(root / species[s][0], exist_ok=True)
            sf.write(str(root / filename), np.clip(audio, -1, 1), SAMPLE_RATE, format="OGG")
            rows.append((species[s][0], "[]", filename))
    data = root.parent
    pd.DataFrame(rows, columns=["primary_label", "secondary_labels", "filename"]).to_csv(
        data / "train_metadata.csv", index=False)
    os.makedirs(data / "unlabeled_soundscapes", exist_ok=True)
    return data, rows


@needs_vad
def test_a_voice_like_species_keeps_its_opening(tmp_path):
    data, rows = voice_like_dataset(tmp_path / "data" / "train_audio")
    out = str(tmp_path / "cache")
    prep.prepare(str(data), out, n_threads=2, speech_check="on")
    assert pd.read_csv(CachePaths(out).speech).empty          # no file cut, the voice-like species' included
    cached = np.load(CachePaths(out).audio)
    assert len(cached) == len(rows)
    first = first_five_seconds(infer.read_audio(str(data / "train_audio" / rows[0][2])))
    assert np.corrcoef(cached[0].astype(np.float32), first)[0, 1] > 0.99


@needs_vad
@needs_espeak
def test_prep_takes_the_window_after_the_speech(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    meta = pd.read_csv(data / "train_metadata.csv")
    two = meta.drop_duplicates("primary_label").iloc[:2]  # two classes: one class's two would be a pattern
    opened, spoken_only = (data / "train_audio" / f for f in two["filename"])
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
