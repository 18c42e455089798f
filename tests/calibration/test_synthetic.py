"""Tests for the synthetic mixture generator (no espeak-ng needed except where marked)."""

from __future__ import annotations

import numpy as np
import pytest

from secompile.calibration import synthetic
from secompile.calibration.synthetic import (
    NOISE_KINDS,
    SyntheticMixtures,
    espeak_speech,
    make_noise,
    mix_at_snr,
)
from tests.conftest import requires_espeak

SR = 16000


def _toy_speech(n_utterances: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Harmonic tone bursts standing in for speech."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_utterances):
        n = int(rng.uniform(0.5, 1.5) * SR)
        t = np.arange(n) / SR
        f0 = rng.uniform(90, 250)
        wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 10))
        out.append((wave * np.hanning(n) * 0.5).astype(np.float32))
    return out


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean64, noise64 = clean.astype(np.float64), noisy.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean64**2) / np.mean(noise64**2)))


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_mix_at_snr_hits_requested_snr(snr: float) -> None:
    rng = np.random.default_rng(1)
    clean = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    noise = make_noise("pink", SR, SR, rng)
    noisy, clean_out = mix_at_snr(clean, noise, snr)
    assert noisy.dtype == np.float32 and clean_out.dtype == np.float32
    assert abs(_snr_db(clean_out, noisy) - snr) < 0.1
    np.testing.assert_allclose(clean_out, clean, atol=1e-7)  # no rescale needed here


def test_mix_at_snr_rescales_instead_of_clipping() -> None:
    rng = np.random.default_rng(2)
    clean = 0.9 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)
    noisy, clean_out = mix_at_snr(clean, rng.standard_normal(SR), 0.0)
    assert np.max(np.abs(noisy)) <= 1.0
    assert np.max(np.abs(clean_out)) < 0.9  # scaled down together
    assert abs(_snr_db(clean_out, noisy) - 0.0) < 0.1


def test_mix_at_snr_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        mix_at_snr(np.ones(10), np.ones(11), 0.0)
    with pytest.raises(ValueError):
        mix_at_snr(np.zeros(10), np.ones(10), 0.0)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_kinds(kind: str) -> None:
    noise = make_noise(kind, 8000, SR, np.random.default_rng(3))
    assert noise.dtype == np.float32 and noise.shape == (8000,)
    assert np.all(np.isfinite(noise))
    assert abs(float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) - 1.0) < 1e-3
    again = make_noise(kind, 8000, SR, np.random.default_rng(3))
    np.testing.assert_array_equal(noise, again)


def test_noise_kinds_differ_and_babble_uses_speech() -> None:
    rng_seed = 4
    spectra = {}
    for kind in ("white", "brown", "hum"):
        noise = make_noise(kind, SR, SR, np.random.default_rng(rng_seed))
        spectra[kind] = np.abs(np.fft.rfft(noise))
    low, high = slice(20, 400), slice(4000, 8000)
    assert spectra["brown"][low].mean() > 10 * spectra["brown"][high].mean()
    assert spectra["white"][low].mean() < 2 * spectra["white"][high].mean()
    babble = make_noise("babble", SR, SR, np.random.default_rng(5), speech=_toy_speech())
    assert babble.shape == (SR,)
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noise("traffic", SR, SR, np.random.default_rng(0))


def test_synthetic_mixtures_deterministic() -> None:
    speech = _toy_speech()
    a = SyntheticMixtures(speech, length=SR, seed=7)
    b = SyntheticMixtures(speech, length=SR, seed=7)
    noisy, clean = a.pair(5)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape == (SR,)
    assert np.max(np.abs(noisy)) <= 1.0
    b.pair(0)  # drawing other pairs first must not matter
    np.testing.assert_array_equal(noisy, b.pair(5)[0])
    np.testing.assert_array_equal(clean, b.pair(5)[1])
    other = SyntheticMixtures(speech, length=SR, seed=8).pair(5)[0]
    assert not np.array_equal(noisy, other)
    batch_noisy, _ = a.batch([5, 6])
    assert batch_noisy.shape == (2, SR)
    np.testing.assert_array_equal(batch_noisy[0], noisy)
    first = next(a.batches(3))
    np.testing.assert_array_equal(first[0][2], a.pair(2)[0])


def test_synthetic_mixtures_snr_choices() -> None:
    mixtures = SyntheticMixtures(_toy_speech(), length=SR, seed=0, snr_choices=[2.5, 12.5])
    for i in range(6):
        noisy, clean = mixtures.pair(i)
        assert min(abs(_snr_db(clean, noisy) - s) for s in (2.5, 12.5)) < 0.1


def test_synthetic_mixtures_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticMixtures([], length=SR)
    with pytest.raises(ValueError):
        SyntheticMixtures(_toy_speech(), length=SR, noise_kinds=["nope"])
    with pytest.raises(ValueError):
        SyntheticMixtures(_toy_speech(), length=SR, snr_range=(10.0, 0.0))


def test_espeak_missing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic.shutil, "which", lambda _: None)
    with pytest.raises(RuntimeError, match="espeak-ng"):
        espeak_speech("hello")


@requires_espeak
def test_espeak_speech() -> None:
    audio = espeak_speech("Hello there.", voice="en-us+f2", rate_wpm=170, pitch=60)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.3 * SR < audio.size < 3 * SR
    assert 0.01 < np.max(np.abs(audio)) <= 1.0
    corpus = synthetic.espeak_corpus(2, seed=0)
    again = synthetic.espeak_corpus(2, seed=0)
    assert len(corpus) == 2
    np.testing.assert_array_equal(corpus[0], again[0])
