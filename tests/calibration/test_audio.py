"""Tests for reading, resampling and writing audio (``calibration.audio``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from secompile.calibration.audio import read_audio, resample, write_audio
from secompile.compiler.core.errors import DataError, UserError
from tests.conftest import SHARED_DATA as DATA

VBDEMAND = DATA / "audio" / "vbdemand"
RATE = 16000


def _tone(n: int = 1600, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(n) / rate
    return (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def test_reads_good_mono_wav(tmp_path: Path) -> None:
    path = tmp_path / "good.wav"
    tone = _tone()
    sf.write(path, tone, RATE, subtype="FLOAT")
    wav = read_audio(path, RATE)
    assert wav.dtype == np.float32
    assert wav.ndim == 1 and wav.shape == (1600,)
    assert wav.flags.c_contiguous
    np.testing.assert_allclose(wav, tone, atol=1e-7)


def test_reads_pcm16_within_quantisation(tmp_path: Path) -> None:
    path = tmp_path / "pcm.wav"
    tone = _tone()
    sf.write(path, tone, RATE, subtype="PCM_16")
    wav = read_audio(str(path), RATE)  # a str path is accepted too
    np.testing.assert_allclose(wav, tone, atol=1.0 / 32768 + 1e-7)


def _stereo(path: Path) -> None:
    sf.write(path, np.zeros((800, 2), np.float32), RATE)


def _empty(path: Path) -> None:
    sf.write(path, np.zeros(0, np.float32), RATE)


def _nan(path: Path) -> None:
    wav = _tone()
    wav[100] = np.nan
    sf.write(path, wav, RATE, subtype="FLOAT")


def _inf(path: Path) -> None:
    wav = _tone()
    wav[7] = np.inf
    sf.write(path, wav, RATE, subtype="FLOAT")


def _wrong_rate(path: Path) -> None:
    sf.write(path, _tone(rate=8000), 8000)


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2048))


def _text(path: Path) -> None:
    path.write_text("this is not audio\n")


def _missing(path: Path) -> None:
    """Leave the file absent."""


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_stereo, "2 channels"),
        (_empty, "empty"),
        (_nan, "NaN"),
        (_inf, "infinite"),
        (_wrong_rate, "8000 Hz"),
        (_random_bytes, "cannot read"),
        (_text, "cannot read"),
        (_missing, "cannot read"),
        (_directory, "cannot read"),
    ],
    ids=["stereo", "empty", "nan", "inf", "wrong-rate", "random-bytes", "text", "missing", "dir"],
)
def test_bad_audio_raises_data_error_naming_the_file(tmp_path: Path, make, fragment) -> None:
    path = tmp_path / "bad input.wav"  # a space in the name: the message must keep it intact
    make(path)
    with pytest.raises(DataError) as info:
        read_audio(path, RATE)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message
    assert isinstance(info.value, UserError)
    assert info.value.exit_code == 2


def test_wrong_rate_message_names_both_rates(tmp_path: Path) -> None:
    path = tmp_path / "eight.wav"
    _wrong_rate(path)
    with pytest.raises(DataError, match="8000 Hz.*16000 Hz"):
        read_audio(path, RATE, allow_resample=False)


def test_resampling_8k_to_16k(tmp_path: Path) -> None:
    path = tmp_path / "eight.wav"
    tone = _tone(n=8000, rate=8000)  # one second at 8 kHz
    sf.write(path, tone, 8000, subtype="FLOAT")
    wav = read_audio(path, RATE, allow_resample=True)
    assert wav.dtype == np.float32
    assert wav.shape == (16000,)
    # The 440 Hz tone survives: compare with the ideal tone away from the filter's edges.
    np.testing.assert_allclose(wav[1000:-1000], _tone(n=16000)[1000:-1000], atol=0.02)


def test_resampling_still_checks_the_content(tmp_path: Path) -> None:
    path = tmp_path / "eight_stereo.wav"
    sf.write(path, np.zeros((800, 2), np.float32), 8000)
    with pytest.raises(DataError, match="channels"):
        read_audio(path, RATE, allow_resample=True)


def test_same_rate_is_untouched_by_resample() -> None:
    wav = _tone()
    assert resample(wav, RATE, RATE) is wav


@pytest.mark.parametrize(("source", "target"), [(8000, 16000), (48000, 16000), (22050, 16000)])
def test_resample_length(source: int, target: int) -> None:
    wav = np.zeros(source, np.float32)  # one second
    out = resample(wav, source, target)
    assert out.dtype == np.float32
    assert out.shape == (target,)


def test_write_audio_round_trip_clips(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    wav = np.array([0.0, 0.25, -0.5, 1.7, -3.0, 0.999, -1.0], np.float32)
    write_audio(path, wav, RATE)
    info = sf.info(path)
    assert info.samplerate == RATE
    assert info.channels == 1
    assert info.subtype == "PCM_16"
    back = read_audio(path, RATE)
    assert back.shape == wav.shape
    assert back.max() <= 1.0 and back.min() >= -1.0
    np.testing.assert_allclose(back, np.clip(wav, -1.0, 1.0), atol=1.0 / 32768 + 1e-6)
    assert back[3] == pytest.approx(1.0, abs=1e-4)
    assert back[4] == pytest.approx(-1.0, abs=1e-4)


@pytest.mark.skipif(not VBDEMAND.is_dir(), reason=f"shared audio not found at {VBDEMAND}")
def test_reads_real_voicebank_file() -> None:
    wav = read_audio(VBDEMAND / "clean" / "p232_010.wav", RATE)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) > RATE  # more than a second of speech
    assert np.all(np.abs(wav) <= 1.0)
    assert float(np.sqrt(np.mean(wav**2))) > 1e-3


def test_shorter_than_min_samples_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), 16000)
    assert read_audio(path, 16000, min_samples=100).size == 100
    with pytest.raises(DataError, match=r"too short: 100 samples, the model needs at least 257"):
        read_audio(path, 16000, min_samples=257)
