"""Generate the embedded demo dataset: synthetic species, Xeno-canto-like train recordings, target-site soundscapes.

    python demo_data.py --out data/demo
    python demo_data.py --out /tmp/tiny --per-species 3 --unlabeled 3 --test 2 --soundscape-seconds 12
    python demo_data.py --out /tmp/bc26 --layout 2026    # as Kaggle ships BirdCLEF+ 2026 (a hidden test set)
    python demo_data.py --out /tmp/site --labelled-soundscapes 16   # and some of the site's soundscapes labelled

Writes --out in the BirdCLEF 2024 layout (train_metadata.csv, train_audio/<species>/*.ogg,
unlabeled_soundscapes/, test_soundscapes/, sample_submission.csv) and the labels beside it, never inside:
<out>-test-labels.csv (row_id and one 0/1 column per species, the format bench/score_demo.py reads) and
<out>-unlabeled-labels.csv (the same for the unlabeled soundscapes' windows: bench/decide.py scores a round's
pseudo labels with it; training never reads it). 12 species with parametric calls (sweeps, trills, harmonic
notes, whistles, buzzes, vibrato; three confusable pairs); the soundscapes come from another "site": coloured
noise, insect bands, wind, rain, reverberation, quieter overlapping calls and a skewed species mix.
Deterministic for a given --seed, whatever the number of processes. --layout 2026 writes the same data as a
downloaded BirdCLEF+ 2026 folder: train.csv, taxonomy.csv, train_audio/, train_soundscapes/ (the unlabeled ones),
sample_submission.csv and an empty test_soundscapes/ (Kaggle hides the test set); the labelled test soundscapes
go beside it, in <out>-test_soundscapes/. --labelled-soundscapes N labels the first N unlabeled soundscapes in
train_soundscapes_labels.csv as BirdCLEF+ 2026 does, and adds a species that only the site has.
"""
import argparse
import math
import os
import shutil

import numpy as np
import pandas as pd

from common import SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS
from flags import HelpFormatter, add_flag
from progress import progress
from files import swap_in
from errors import UserError, run_main

DEMO_SPECIES = [  # name, call kind, low Hz, high Hz, note seconds, notes per phrase, note gap seconds
    ("amecho", "sweep_up", 2500, 5000, 0.12, 4, 0.08),
    ("bkwtit", "sweep_down", 2500, 5000, 0.12, 4, 0.08),      # confusable with amecho (direction)
    ("cobwar", "trill", 4000, 4300, 0.025, 24, 0.02),
    ("dunlin", "trill", 4100, 4400, 0.04, 12, 0.045),         # confusable with cobwar (rhythm)
    ("eurwre", "harmonic", 1200, 1250, 0.35, 3, 0.15),
    ("fieldf", "harmonic", 1450, 1500, 0.35, 3, 0.15),        # confusable with eurwre (pitch)
    ("grewoo", "whistle", 1800, 2600, 0.6, 2, 0.25),
    ("hoopoe", "pulse", 600, 700, 0.08, 3, 0.25),
    ("indrob", "buzz", 6000, 7500, 0.5, 1, 0.0),
    ("junbab", "sweep_up", 6500, 8500, 0.05, 8, 0.05),
    ("kingfi", "whistle", 7000, 7600, 0.3, 3, 0.1),
    ("lesrav", "vibrato", 3000, 3300, 0.8, 1, 0.0),
]
# with --labelled-soundscapes: an insect sonotype that calls only at the site (no training recording), as 25 of
# BirdCLEF+ 2026's scored classes do; only the site's labelled soundscapes can teach it
SITE_ONLY_SPECIES = ("son001", "trill", 9300, 9700, 0.015, 30, 0.012)
SITE_ONLY_MIN_WEIGHT = 0.25  # its least share of the site's species mix, so the labelled soundscapes hold a few
# with --voice-like: a species whose call a speech detector can take for a voice (a low fundamental's harmonics
# shaped by two formants, in syllables), as some real species' harmonic, vowel-like calls are
VOICE_LIKE_SPECIES = ("vocbab", "vowel", 200, 320, 0.2, 5, 0.08)


def render_phrase(rng, kind, low, high, note_s, n_notes, gap_s, sr=SAMPLE_RATE):
    """One rendition of a species' call phrase, with per-rendition jitter of pitch, timing and note count."""
    pitch = rng.uniform(0.96, 1.04)
    tempo = rng.uniform(0.9, 1.1)
    n_notes = max(1, n_notes + int(rng.integers(-1, 2)))
    notes = []
    for k in range(n_notes):
        n = max(8, int(note_s * tempo * sr))
        t = np.arange(n) / sr
        u = t / t[-1]
        if kind == "sweep_up":
            freq = low + (high - low) * u
        elif kind == "sweep_down":
            freq = high - (high - low) * u
        elif kind == "whistle":  # two-note whistle alternating low/high
            freq = np.full(n, low if k % 2 == 0 else high)
        elif kind == "vibrato":
            freq = 0.5 * (low + high) + 0.5 * (high - low) * np.sin(2 * np.pi * 9 * t)
        elif kind == "vowel":  # a falling pitch, as a spoken syllable's
            freq = rng.uniform(low, high) * (1.15 - 0.3 * u)
        else:
            freq = np.full(n, rng.uniform(low, high))
        phase = 2 * np.pi * np.cumsum(freq * pitch) / sr
        if kind == "harmonic":
            tone = sum(np.sin(h * phase) / h for h in range(1, 5))
        elif kind == "vowel":  # each syllable its own vowel: two formants over the harmonics up to 4 kHz
            formants = rng.uniform(450, 850), rng.uniform(1000, 2300)
            f0 = float(freq.mean() * pitch)
            tone = sum(np.sin(h * phase) * (np.exp(-((h * f0 - formants[0]) / 150) ** 2)
                                            + 0.6 * np.exp(-((h * f0 - formants[1]) / 200) ** 2) + 0.03)
                       for h in range(1, int(4000 / f0) + 1))
        elif kind == "buzz":
            tone = rng.standard_normal(n) * (1 + np.sin(phase)) * 0.5
            tone = np.convolve(tone, np.hanning(9), mode="same")
        elif kind == "pulse":
            tone = np.sin(phase) * np.sin(2 * np.pi * 0.5 * u) ** 2
        else:
            tone = np.sin(phase)
        envelope = np.minimum(1.0, np.minimum(u, 1 - u) * 8)
        notes.append(tone * envelope)
        notes.append(np.zeros(int(gap_s * tempo * sr)))
    phrase = np.concatenate(notes)
    if kind == "buzz":  # band-limit the noise around the species' band via a crude mix with a carrier
        carrier = np.sin(2 * np.pi * rng.uniform(low, high) * np.arange(len(phrase)) / sr)
        phrase = phrase * carrier
    return (phrase / (np.abs(phrase).max() + 1e-9)).astype(np.float32)


def coloured_noise(rng, n, exponent):
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit std."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return (noise / (noise.std() + 1e-9)).astype(np.float32)


def place(track, phrase, start, gain):
    """Add a phrase into track at sample `start` (clipped at the end); return the [start, end) placed."""
    end = min(len(track), start + len(phrase))
    if end > start:
        track[start:end] += gain * phrase[:end - start]
    return start, end


def demo_train_recording(rng, species_id, others, duration_s, species=DEMO_SPECIES):
    """A Xeno-canto-like focal recording: one primary species, maybe a secondary one, light noise."""
    sr = SAMPLE_RATE
    n = int(duration_s * sr)
    # recording levels vary widely between uploads; the focal bird is far above the recording's own noise
    level = 10 ** rng.uniform(np.log10(0.03), np.log10(0.6))
    track = coloured_noise(rng, n, rng.uniform(0.0, 1.0)) * level * rng.uniform(0.01, 0.04)
    # the primary calls in the first 5 s most of the time, but not always
    late_start = duration_s > 8 and rng.random() < 0.15
    t = rng.uniform(5.5, min(duration_s - 1, 8.0)) if late_start else rng.uniform(0.0, 2.5)
    while t < duration_s - 0.3:
        phrase = render_phrase(rng, *species[species_id][1:])
        place(track, phrase, int(t * sr), level * rng.uniform(0.6, 1.0))
        t += len(phrase) / sr + rng.uniform(0.5, 3.0)
    secondary = []
    if rng.random() < 0.25:
        other = int(rng.choice(others))
        secondary.append(species[other][0])
        t = rng.uniform(0.0, max(0.1, duration_s - 1))
        place(track, render_phrase(rng, *species[other][1:]), int(t * sr), level * rng.uniform(0.2, 0.6))
    return track, secondary


def reverb(rng, x, sr=SAMPLE_RATE):
    """Convolve with a random exponentially decaying noise impulse response (the site's echo)."""
    rt = rng.uniform(0.2, 0.6)
    t = np.arange(int(rt * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt)
    ir[0] = 3.0
    from scipy.signal import fftconvolve
    y = fftconvolve(x, ir / np.abs(ir).sum() * 4, mode="full")[:len(x)]
    return y.astype(np.float32)


def demo_soundscape(rng, duration_s, species_weights, species=DEMO_SPECIES):
    """A target-site soundscape: loud coloured noise, insect bands, wind, rain, reverberant distant calls.

    Returns the audio and, per 5-s window, the set of species calling in it.
    """
    sr = SAMPLE_RATE
    n = int(duration_s * sr)
    t = np.arange(n) / sr
    track = coloured_noise(rng, n, rng.uniform(1.0, 2.0)) * rng.uniform(0.01, 0.04)
    for _ in range(rng.integers(1, 4)):  # insects: tonal bands pulsing at tens of Hz, in the birds' range
        f0 = rng.uniform(2500, 9000)
        pulse = (np.sin(2 * np.pi * rng.uniform(15, 60) * t) > rng.uniform(-0.5, 0.5)).astype(np.float32)
        slow = np.clip(np.sin(2 * np.pi * t / rng.uniform(8, 30) + rng.uniform(0, 6.3)) + 0.3, 0, 1)
        track += np.sin(2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 3 * t)) * pulse * slow * rng.uniform(0.005, 0.03)
    if rng.random() < 0.6:  # wind: low-frequency noise gusts
        gust = np.clip(np.sin(2 * np.pi * t / rng.uniform(3, 9) + rng.uniform(0, 6.3)), 0, 1) ** 2
        track += coloured_noise(rng, n, 2.5) * gust * rng.uniform(0.02, 0.1)
    if rng.random() < 0.4:  # rain: sparse clicks
        clicks = np.zeros(n, dtype=np.float32)
        idx = rng.integers(0, n, int(duration_s * rng.uniform(20, 80)))
        clicks[idx] = rng.uniform(-1, 1, len(idx))
        track += np.convolve(clicks, np.hanning(16), mode="same") * rng.uniform(0.1, 0.3)
    calls = np.zeros(n, dtype=np.float32)
    n_windows = int(math.ceil(duration_s / WINDOW_SECONDS))
    present = [set() for _ in range(n_windows)]
    n_species = rng.integers(1, 5)
    for s in rng.choice(len(species), size=n_species, replace=False, p=species_weights):
        t0 = rng.uniform(0, duration_s)
        for _ in range(rng.integers(1, 6)):  # a bout of a few phrases
            if t0 > duration_s - 0.3:
                break
            phrase = render_phrase(rng, *species[s][1:])
            start, end = place(calls, phrase, int(t0 * sr), rng.uniform(0.08, 0.5))
            for w in range(start // WINDOW_SAMPLES, (end - 1) // WINDOW_SAMPLES + 1):
                overlap = min(end, (w + 1) * WINDOW_SAMPLES) - max(start, w * WINDOW_SAMPLES)
                if overlap >= 0.2 * sr:
                    present[w].add(species[s][0])
            t0 += len(phrase) / sr + rng.uniform(0.3, 4.0)
    track += reverb(rng, calls)
    return np.clip(track, -1, 1), present


def write_ogg(path, audio, sr=SAMPLE_RATE):
    """Write Ogg Vorbis in 1-s blocks: libsndfile's vorbis encoder can crash on one large stereo write."""
    import soundfile as sf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with sf.SoundFile(path, "w", sr, channels, format="OGG", subtype="VORBIS") as f:
        for start in range(0, len(audio), sr):
            f.write(audio[start:start + sr])


PLACES = ["Villavicencio", "Leticia", "Puerto Carreno", "Mitu", "San Jose del Guaviare", "Florencia", "Yopal"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
RECORDISTS = ["Maria Lopez", "Juan Perez", "Ana Gomez", "Carlos Ruiz", "Luisa Torres", "Diego Castro"]


def spoken_announcement(rng, min_s=3.0, max_s=9.0):
    """A sound archive's spoken opening, as 2025's CSA recordings have: espeak-ng says a made-up recording number,
    place, date and recordist in a random voice, speed and pitch; cut to min_s..max_s seconds, 32 kHz float32."""
    import io
    import subprocess
    import soundfile as sf
    from scipy.signal import resample_poly
    target = rng.uniform(min_s, max_s)
    items = [f"Recording number {rng.integers(1000, 99999)}.", f"{rng.choice(PLACES)}, Colombia.",
             f"{rng.choice(MONTHS)} {rng.integers(1, 29)}, {rng.integers(1960, 2015)}.",
             f"Recordist, {rng.choice(RECORDISTS)}.", "Tape one, side A.", "Microphone Sennheiser.",
             f"Time, {rng.integers(4, 19)} hours {rng.integers(0, 60)}."]
    voice = [f"-v{rng.choice(['en', 'en-us', 'es', 'en-gb'])}", f"-s{rng.integers(140, 190)}",
             f"-p{rng.integers(30, 70)}"]
    try:
        wav = subprocess.run(["espeak-ng", "--stdout", *voice, " ".join(items)], capture_output=True,
                             check=True).stdout
    except FileNotFoundError:
        raise UserError("--speech-share needs espeak-ng, which speaks the announcements (apt-get install espeak-ng)")
    speech, rate = sf.read(io.BytesIO(wav), dtype="float32")
    speech = resample_poly(speech, SAMPLE_RATE // math.gcd(rate, SAMPLE_RATE), rate // math.gcd(rate, SAMPLE_RATE))
    speech = speech[:int(target * SAMPLE_RATE)]
    return (speech * rng.uniform(0.2, 0.5) / max(1e-6, np.abs(speech).max())).astype(np.float32)


def _demo_train_file(job):
    """Render and write one train recording; its randomness depends only on (seed, species, index). With a
    speech share, that share of the recordings opens with a spoken announcement (decided and spoken from a random
    stream of its own: the recordings themselves are the same as without). Returns its metadata row and the
    seconds of speech before it (0: none)."""
    from scipy.signal import resample_poly
    tmp, demo_seed, s, k, speech_share, species = job
    rng = np.random.default_rng([demo_seed, 0, s, k])
    name = species[s][0]
    others = [o for o in range(len(species)) if o != s]
    duration = rng.uniform(2, 5) if rng.random() < 0.15 else float(np.clip(rng.lognormal(2.3, 0.6), 5, 60))
    audio, secondary = demo_train_recording(rng, s, others, duration, species)
    audio = np.clip(audio, -1, 1)
    speech_rng, spoken_s = np.random.default_rng([demo_seed, 5, s, k]), 0.0
    if speech_rng.random() < speech_share:
        speech = spoken_announcement(speech_rng)
        pause = np.zeros(int(speech_rng.uniform(0.2, 1.0) * SAMPLE_RATE), dtype=np.float32)
        spoken_s = len(speech) / SAMPLE_RATE
        audio = np.concatenate([speech, pause, audio])
    rate = SAMPLE_RATE
    if rng.random() < 0.1:  # a few recordings at 48 kHz stereo, as real uploads are
        audio = resample_poly(audio, 3, 2).astype(np.float32)
        audio = np.stack([audio, audio * 0.8], axis=1)
        rate = 48000
    filename = f"{name}/XC{demo_seed:02d}{s:02d}{k:03d}.ogg"
    write_ogg(os.path.join(tmp, "train_audio", filename), audio, rate)
    return (name, str(secondary), "['call']", filename, round(float(rng.uniform(2.5, 5)), 1), "demo",
            "demo-license"), spoken_s


def _demo_soundscape_file(job):
    """Render and write one soundscape; returns its test-label rows."""
    tmp, demo_seed, folder, prefix, kind, k, seconds, weights, species = job
    rng = np.random.default_rng([demo_seed, kind, k])
    audio, present = demo_soundscape(rng, seconds, weights, species)
    stem = f"{prefix}{demo_seed:02d}{k:04d}"
    write_ogg(os.path.join(tmp, folder, f"{stem}.ogg"), audio)
    return [[f"{stem}_{(w + 1) * WINDOW_SECONDS}"] + [int(s[0] in calling) for s in species]
            for w, calling in enumerate(present)]


def clock(seconds):
    """Seconds as Kaggle's site labels write them: 65 -> "00:01:05"."""
    return f"{int(seconds) // 3600:02d}:{int(seconds) % 3600 // 60:02d}:{int(seconds) % 60:02d}"


def site_labels(window_rows, names, n_files, folder_names):
    """BirdCLEF+ 2026's train_soundscapes_labels.csv for the first n_files soundscapes, as Kaggle writes it: one row
    per window of a labelled file (";"-separated labels, HH:MM:SS bounds; a window where nothing calls has none),
    every row twice, the last file labelled only in its first half."""
    rows = []
    for row in window_rows:
        stem, end = row[0].rsplit("_", 1)
        file_number = folder_names.index(stem) if stem in folder_names else n_files
        labels = [name for name, present in zip(names, row[1:]) if present]
        partial = file_number == n_files - 1 and int(end) > 30
        if file_number < n_files and not partial:
            rows += 2 * [(f"{stem}.ogg", clock(int(end) - WINDOW_SECONDS), clock(int(end)), ";".join(labels))]
    return pd.DataFrame(rows, columns=["filename", "start", "end", "primary_label"])


def speech_path(out):
    """Which training recordings of the demo at `out` open with speech, and for how long: <out>-speech.csv."""
    return out.rstrip("/") + "-speech.csv"


def labels_paths(out):
    """(test labels, unlabeled windows' labels) of the demo at `out`: <out>-test-labels.csv,
    <out>-unlabeled-labels.csv (row_id and one 0/1 column per species)."""
    return out.rstrip("/") + "-test-labels.csv", out.rstrip("/") + "-unlabeled-labels.csv"


def make_demo(out, demo_seed=0, per_species=30, n_unlabeled=60, n_test=60, soundscape_s=60, processes=None,
              layout="2024", n_labelled=0, speech_share=0.0, voice_like=False):
    """Write the demo dataset (BirdCLEF 2024 layout, or 2026's: to_layout_2026) to `out` and its test labels
    beside it. n_labelled > 0: the site also has a species no training recording has (SITE_ONLY_SPECIES), and
    the first n_labelled unlabeled soundscapes are labelled in train_soundscapes_labels.csv (site_labels).
    speech_share > 0: that share of the training recordings opens with 3-9 s of speech (spoken_announcement),
    listed beside the dataset (speech_path), and the metadata gets a collection column: a sound archive's (CSA)
    for them, Xeno-canto's (XC) for the others. voice_like: one more species, with a voice-like call (VOICE_LIKE_SPECIES).

    Files are rendered in parallel; each one's randomness comes from (seed, file), so the result does not
    depend on the number of processes.
    """
    from multiprocessing import get_context
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    train_species = DEMO_SPECIES + ([VOICE_LIKE_SPECIES] if voice_like else [])
    site_species = train_species + ([SITE_ONLY_SPECIES] if n_labelled else [])
    names = [s[0] for s in site_species]
    # the target site favours some species over others
    weights = np.random.default_rng([demo_seed, 1]).dirichlet(np.full(len(names), 2.0))
    if n_labelled:
        weights[-1] = max(weights[-1], SITE_ONLY_MIN_WEIGHT)
        weights /= weights.sum()
    train_jobs = [(tmp, demo_seed, s, k, speech_share, train_species) for s in range(len(train_species))
                  for k in range(per_species)]
    soundscape_jobs = [(tmp, demo_seed, "unlabeled_soundscapes", "U", 2, k, soundscape_s, weights, site_species)
                       for k in range(n_unlabeled)]
    test_jobs = [(tmp, demo_seed, "test_soundscapes", "T", 3, k, soundscape_s, weights, site_species)
                 for k in range(n_test)]
    for folder in ("unlabeled_soundscapes", "test_soundscapes"):
        os.makedirs(os.path.join(tmp, folder), exist_ok=True)
    with get_context("fork").Pool(processes or os.cpu_count() or 1) as pool:
        meta, spoken = zip(*progress(pool.imap(_demo_train_file, train_jobs), total=len(train_jobs),
                                 desc="demo train audio", unit="file"))
        unlabeled = [row for rows in progress(pool.imap(_demo_soundscape_file, soundscape_jobs),
                                          total=len(soundscape_jobs), desc="demo unlabeled soundscapes", unit="file")
                     for row in rows]
        labels = [row for rows in progress(pool.imap(_demo_soundscape_file, test_jobs), total=len(test_jobs),
                                       desc="demo test soundscapes", unit="file") for row in rows]
    meta_table = pd.DataFrame(meta, columns=["primary_label", "secondary_labels", "type", "filename", "rating",
                                             "author", "license"])
    if speech_share > 0:  # a sound archive's recordings come with a collection column, as 2025's train.csv has
        meta_table.insert(4, "collection", np.where(np.array(spoken) > 0, "CSA", "XC"))
    meta_table.to_csv(os.path.join(tmp, "train_metadata.csv"), index=False)
    pd.DataFrame([[f"soundscape_0_{(w + 1) * 5}"] + [1.0 / len(names)] * len(names) for w in range(3)],
                 columns=["row_id"] + names).to_csv(os.path.join(tmp, "sample_submission.csv"), index=False)
    # labels live next to the dataset, never inside it: the test windows' (the score), the unlabeled windows'
    # (how good a round's pseudo labels are: a diagnostic that training never reads)
    if n_labelled:
        stems = [f"U{demo_seed:02d}{k:04d}" for k in range(n_unlabeled)]
        site_labels(unlabeled, names, n_labelled, stems).to_csv(os.path.join(tmp, "train_soundscapes_labels.csv"),
                                                                index=False)
    labels_path, unlabeled_path = labels_paths(out)
    pd.DataFrame(labels, columns=["row_id"] + names).to_csv(labels_path + ".tmp", index=False)
    if speech_share > 0:
        pd.DataFrame({"filename": [row[3] for row in meta], "speech_seconds": spoken}).query(
            "speech_seconds > 0").to_csv(speech_path(out), index=False)
    pd.DataFrame(unlabeled, columns=["row_id"] + names).to_csv(unlabeled_path + ".tmp", index=False)
    if layout == "2026":
        to_layout_2026(tmp, hidden_tests_path(out), names)
    swap_in(tmp, out)
    os.replace(labels_path + ".tmp", labels_path)
    os.replace(unlabeled_path + ".tmp", unlabeled_path)
    print(f"demo dataset {out}: {len(meta)} train files"
          f"{f' ({sum(t > 0 for t in spoken)} opening with speech)' if speech_share > 0 else ''}, {n_unlabeled} unlabeled and {n_test} test soundscapes"
          f"{f' ({n_labelled} of the unlabeled labelled)' if n_labelled else ''}; test labels {labels_path}")


def hidden_tests_path(out):
    """Where a 2026-layout demo keeps its labelled test soundscapes: beside the dataset, as Kaggle keeps its own."""
    return out.rstrip("/") + "-test_soundscapes"


def to_layout_2026(folder, tests_out, names):
    """Reshape a demo `folder` written in the 2024 layout into the 2026 one, as Kaggle ships it: train.csv (with
    collection, XC where the demo has none) and taxonomy.csv, unlabeled_soundscapes/ as train_soundscapes/,
    test_soundscapes/ left empty; the labelled test soundscapes move to `tests_out`."""
    meta = pd.read_csv(os.path.join(folder, "train_metadata.csv"))
    if "collection" not in meta:
        meta.insert(4, "collection", "XC")
    meta.to_csv(os.path.join(folder, "train.csv"), index=False)
    os.remove(os.path.join(folder, "train_metadata.csv"))
    pd.DataFrame({"primary_label": names, "inat_taxon_id": range(1, len(names) + 1), "scientific_name": names,
                  "common_name": names, "class_name": "Aves"}).to_csv(os.path.join(folder, "taxonomy.csv"),
                                                                      index=False)
    os.rename(os.path.join(folder, "unlabeled_soundscapes"), os.path.join(folder, "train_soundscapes"))
    shutil.rmtree(tests_out, ignore_errors=True)
    os.rename(os.path.join(folder, "test_soundscapes"), tests_out)
    os.makedirs(os.path.join(folder, "test_soundscapes"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(parser, "--out", default="data/demo")
    add_flag(parser, "--seed", default=0)
    add_flag(parser, "--per-species", default=30)
    add_flag(parser, "--unlabeled", default=60)
    add_flag(parser, "--test", default=60)
    add_flag(parser, "--soundscape-seconds", default=60)
    parser.add_argument("--layout", default="2024", choices=["2024", "2026"], help="the dataset's layout: 2024 "
                        "(train_metadata.csv, test_soundscapes/ filled) or 2026 (train.csv, taxonomy.csv, an empty "
                        "test_soundscapes/, the test soundscapes beside the folder)")
    add_flag(parser, "--labelled-soundscapes", default=0)
    add_flag(parser, "--speech-share", default=0.0)
    parser.add_argument("--voice-like", action="store_true", help=f"one more species, {VOICE_LIKE_SPECIES[0]}, whose "
                        f"call a speech detector can take for a voice (harmonics shaped by formants, in syllables)")
    args = parser.parse_args(argv)
    if not 0 <= args.speech_share <= 1:
        parser.error(f"--speech-share is a share, 0 to 1, not {args.speech_share:g}")
    if not 0 <= args.labelled_soundscapes <= args.unlabeled:
        parser.error(f"--labelled-soundscapes must be 0 to --unlabeled ({args.unlabeled})")
    make_demo(args.out, args.seed, args.per_species, args.unlabeled, args.test, args.soundscape_seconds,
              layout=args.layout, n_labelled=args.labelled_soundscapes, speech_share=args.speech_share,
              voice_like=args.voice_like)




if __name__ == "__main__":
    run_main(main)
