"""The torch mel front end against a plain numpy reference written independently here."""
import numpy as np
import torch

import infer
from common import WINDOW_SAMPLES, MelFrontEnd, MelSettings


def numpy_reference(wave, s):
    # STFT: reflect-pad n_fft/2 each side, periodic Hann, frame every hop, rfft
    half = s.n_fft // 2
    padded = np.pad(wave, half, mode="reflect")
    n = np.arange(s.n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / s.n_fft)
    frames = 1 + (len(padded) - s.n_fft) // s.hop_length
    power = np.stack([np.abs(np.fft.rfft(padded[i * s.hop_length:i * s.hop_length + s.n_fft] * window)) ** 2
                      for i in range(frames)], axis=1)
    # mel matrix, one triangle at a time, HTK mel scale
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    points = [hz(m) for m in np.linspace(mel(s.f_min), mel(s.f_max), s.n_mels + 2)]
    freqs = np.fft.rfftfreq(s.n_fft, 1 / s.sample_rate)
    fb = np.zeros((s.n_mels, len(freqs)))
    for m in range(s.n_mels):
        lo, mid, hi = points[m], points[m + 1], points[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= mid:
                fb[m, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[m, k] = (hi - f) / (hi - mid)
    db = 10 * np.log10(np.maximum(fb @ power, 1e-10))
    db = np.maximum(db, db.max() - s.top_db)
    if s.normalize == "standard":
        return (db - db.mean()) / (db.std() + 1e-6)
    return (db - db.min()) / (db.max() - db.min() + 1e-6)


def test_mel_matches_numpy_reference():
    rng = np.random.default_rng(0)
    t = np.arange(WINDOW_SAMPLES) / 32000
    wave = (0.3 * np.sin(2 * np.pi * (2000 + 3000 * t / 5) * t) + 0.05 * rng.standard_normal(WINDOW_SAMPLES))
    for settings in (MelSettings(n_mels=64, hop_length=1024), MelSettings(n_mels=128, hop_length=512),
                     MelSettings(n_mels=64, hop_length=1250, f_min=50, f_max=14000, normalize="standard")):
        ours = MelFrontEnd(settings)(torch.tensor(wave[None], dtype=torch.float32))[0, 0].numpy()
        reference = numpy_reference(wave, settings)
        assert ours.shape == (settings.n_mels, settings.frames) == reference.shape
        scale = 1 if settings.normalize == "minmax" else 4  # standardised values span about +-4
        assert np.abs(ours - reference).max() < 2e-3 * scale


def test_standardised_mel_has_mean_0_std_1_and_its_own_key():
    waves = torch.tensor(np.random.default_rng(2).standard_normal((2, WINDOW_SAMPLES)), dtype=torch.float32)
    settings = MelSettings(n_mels=32, hop_length=1024, normalize="standard")
    image = MelFrontEnd(settings)(waves * torch.tensor([[0.01], [1.0]]))
    assert torch.allclose(image.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(image.std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)
    assert settings.key != MelSettings(n_mels=32, hop_length=1024).key  # never shares a cached mel with minmax
    try:
        MelFrontEnd(MelSettings(normalize="zscore"))
    except ValueError as err:
        assert "minmax" in str(err)
    else:
        raise AssertionError("an unknown normalization must be refused")


def test_mel_is_per_sample_and_batch_independent():
    rng = np.random.default_rng(1)
    waves = torch.tensor(rng.standard_normal((3, WINDOW_SAMPLES)) * [[0.01], [1.0], [0.2]], dtype=torch.float32)
    mel = MelFrontEnd(MelSettings(n_mels=32, hop_length=1024))
    batch = mel(waves)
    assert batch.shape == (3, 1, 32, 157)
    assert torch.allclose(batch[1], mel(waves[1:2])[0], atol=1e-5)
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1
    # on CPU a batch is computed a few windows at a time (infer.mel_chunk); across chunk edges it equals the
    # whole batch in one call (the path a GPU takes)
    many = waves.repeat(5, 1)[:, torch.randperm(WINDOW_SAMPLES)]
    assert len(many) > infer.mel_chunk
    whole = mel.image(mel.spectrogram(many))
    assert torch.allclose(mel(many), whole, atol=1e-5)
