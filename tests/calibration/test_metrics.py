"""Tests for quality metrics and SNR buckets (``calibration.metrics``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secompile.calibration.audio import read_audio
from secompile.calibration.metrics import (
    SNR_BUCKETS,
    bucket_name,
    estoi,
    mean_metrics,
    pesq_wb,
    quality,
    si_sdr,
    snr_db,
)
from tests.conftest import SHARED_DATA as DATA

VBDEMAND = DATA / "audio" / "vbdemand"
RATE = 16000
needs_vbdemand = pytest.mark.skipif(
    not VBDEMAND.is_dir(), reason=f"shared VoiceBank-DEMAND pairs not found at {VBDEMAND}"
)


def _signal(n: int = 32000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _noise_at(reference: np.ndarray, snr: float, seed: int = 1) -> np.ndarray:
    """White noise scaled so that ``reference`` is ``snr`` dB above it."""
    noise = np.random.default_rng(seed).standard_normal(len(reference))
    power = np.mean(reference.astype(np.float64) ** 2) / 10 ** (snr / 10)
    return (noise * np.sqrt(power / np.mean(noise**2))).astype(np.float32)


@pytest.fixture(scope="module")
def vb_pair() -> tuple[np.ndarray, np.ndarray]:
    if not VBDEMAND.is_dir():
        pytest.skip(f"shared VoiceBank-DEMAND pairs not found at {VBDEMAND}")
    clean = read_audio(VBDEMAND / "clean" / "p232_010.wav", RATE)
    noisy = read_audio(VBDEMAND / "noisy" / "p232_010.wav", RATE)
    n = min(len(clean), len(noisy))
    return clean[:n], noisy[:n]


def test_si_sdr_identical_is_very_high() -> None:
    x = _signal()
    assert si_sdr(x, x) > 100.0


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0, 250.0])
def test_si_sdr_is_scale_invariant(scale: float) -> None:
    ref = _signal()
    est = ref + _noise_at(ref, 10.0)
    assert si_sdr(scale * est, ref) == pytest.approx(si_sdr(est, ref), abs=1e-3)
    assert si_sdr(scale * ref, ref) > 100.0


def test_si_sdr_ignores_dc_offset() -> None:
    ref = _signal()
    est = ref + _noise_at(ref, 5.0)
    assert si_sdr(est + 0.3, ref) == pytest.approx(si_sdr(est, ref), abs=1e-3)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 5.0, 10.0, 20.0])
def test_si_sdr_of_white_noise_mixture(snr: float) -> None:
    ref = _signal(n=64000)
    assert si_sdr(ref + _noise_at(ref, snr), ref) == pytest.approx(snr, abs=0.2)


def test_si_sdr_of_a_negated_signal_is_very_high() -> None:
    # The optimal scale may be negative: a sign flip is not a distortion.
    x = _signal()
    assert si_sdr(-x, x) > 100.0


def test_si_sdr_accepts_float64_input() -> None:
    ref = _signal().astype(np.float64)
    est = ref + _noise_at(ref.astype(np.float32), 10.0)
    assert isinstance(si_sdr(est, ref), float)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 15.0])
def test_snr_db_matches_constructed_mixture(snr: float) -> None:
    clean = _signal(seed=3)
    noise = _noise_at(clean, snr, seed=4)
    assert snr_db(clean + noise, clean) == pytest.approx(snr, abs=1e-3)


def test_snr_db_is_not_scale_invariant() -> None:
    clean = _signal()
    noisy = clean + _noise_at(clean, 10.0)
    assert snr_db(2.0 * noisy, clean) < 5.0


@needs_vbdemand
def test_pesq_wb_on_real_speech(vb_pair) -> None:
    clean, noisy = vb_pair
    perfect = pesq_wb(clean, clean, RATE)
    degraded = pesq_wb(noisy, clean, RATE)
    assert perfect > 4.0
    assert 1.0 <= degraded < perfect - 0.5


def test_pesq_wb_without_speech_is_nan() -> None:
    silence = np.zeros(RATE, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert math.isnan(pesq_wb(silence, silence, RATE))


@needs_vbdemand
def test_estoi_on_real_speech(vb_pair) -> None:
    clean, noisy = vb_pair
    perfect = estoi(clean, clean, RATE)
    degraded = estoi(noisy, clean, RATE)
    assert 0.0 <= degraded <= 1.0 and 0.0 <= perfect <= 1.0
    assert perfect == pytest.approx(1.0, abs=1e-6)
    assert degraded < perfect


@needs_vbdemand
def test_quality_trims_and_reports_all_metrics(vb_pair) -> None:
    clean, noisy = vb_pair
    scores = quality(np.concatenate([noisy, np.zeros(500, np.float32)]), clean, RATE)
    assert set(scores) == {"si_sdr", "pesq", "stoi"}
    assert scores["si_sdr"] == pytest.approx(si_sdr(noisy, clean), abs=1e-6)
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())


@pytest.mark.parametrize(
    ("snr", "name"),
    [
        (-np.inf, "<5dB"),
        (-20.0, "<5dB"),
        (4.99, "<5dB"),
        (5.0, "5-10dB"),
        (9.999, "5-10dB"),
        (10.0, "10-15dB"),
        (14.99, "10-15dB"),
        (15.0, ">=15dB"),
        (60.0, ">=15dB"),
    ],
)
def test_bucket_name_edges(snr: float, name: str) -> None:
    assert bucket_name(snr) == name


def test_bucket_names_are_distinct_and_cover_the_buckets() -> None:
    names = [bucket_name(low if np.isfinite(low) else high - 1) for low, high in SNR_BUCKETS]
    assert names == ["<5dB", "5-10dB", "10-15dB", ">=15dB"]


def test_bucket_name_rejects_nan() -> None:
    with pytest.raises(ValueError):
        bucket_name(float("nan"))


def test_mean_metrics_ignores_nan() -> None:
    rows = [
        {"si_sdr": 10.0, "pesq": float("nan"), "stoi": 0.8},
        {"si_sdr": 20.0, "pesq": 3.0, "stoi": 0.9},
        {"si_sdr": 30.0, "pesq": 2.0, "stoi": float("nan")},
    ]
    means = mean_metrics(rows)
    assert means == pytest.approx({"si_sdr": 20.0, "pesq": 2.5, "stoi": 0.85})
    assert all(isinstance(v, float) for v in means.values())


def test_mean_metrics_of_no_rows_is_empty() -> None:
    assert mean_metrics([]) == {}


def test_estoi_is_nan_for_clips_too_short_to_score() -> None:
    from secompile.calibration.metrics import estoi

    rng = np.random.default_rng(0)
    for n in (300, 4000):
        clip = rng.standard_normal(n).astype(np.float32)
        assert np.isnan(estoi(clip, clip, 16000))
