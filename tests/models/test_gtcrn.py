"""Tests for the GTCRN re-implementation against the public checkpoints and golden pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from secompile.models.gtcrn import GTCRN, HOP, N_FFT
from tests.conftest import SHARED_DATA as DATA
from tests.conftest import assert_core_exports

GTCRN_DIR = DATA / "models" / "gtcrn"
CHECKPOINTS = ["gtcrn_dns3.pt", "gtcrn_vctk.pt", "gtcrn_dns3_stream.pt"]
needs_data = pytest.mark.skipif(
    not GTCRN_DIR.is_dir(), reason=f"shared GTCRN data not found at {GTCRN_DIR}"
)


def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT).pow(0.5)


def _stft(wav: torch.Tensor) -> torch.Tensor:
    """Waveform ``[N]`` -> real spectrum ``[1, 257, T, 2]``."""
    spec = torch.stft(wav, N_FFT, HOP, N_FFT, _window(), center=True, return_complex=True)
    return torch.view_as_real(spec).unsqueeze(0)


def _istft(spec: torch.Tensor) -> torch.Tensor:
    """Real spectrum ``[1, 257, T, 2]`` -> waveform."""
    cspec = torch.view_as_complex(spec[0].contiguous())
    return torch.istft(cspec, N_FFT, HOP, N_FFT, _window(), center=True)


def _load(name: str) -> GTCRN:
    model = GTCRN().eval()
    state = torch.load(GTCRN_DIR / name, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


def _read_wav(path: Path) -> torch.Tensor:
    sf = pytest.importorskip("soundfile")
    data, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    return torch.from_numpy(data)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@needs_data
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_strict_load(name: str) -> None:
    _load(name)


@needs_data
def test_golden_pair() -> None:
    model = _load("gtcrn_dns3_stream.pt")
    mix = _read_wav(GTCRN_DIR / "golden" / "mix.wav")
    ref = _read_wav(GTCRN_DIR / "golden" / "enh.wav").numpy().astype(np.float64)
    with torch.no_grad():
        out = _istft(model(_stft(mix))).numpy().astype(np.float64)
    n = min(len(out), len(ref))
    err = ref[:n] - out[:n]
    snr = 10 * np.log10(np.sum(ref[:n] ** 2) / np.sum(err**2))
    assert snr >= 45.0, f"golden SNR {snr:.2f} dB, max abs error {np.abs(err).max():.2e}"


def test_output_shape() -> None:
    torch.manual_seed(0)
    model = GTCRN().eval()
    spec = torch.randn(2, 257, 37, 2)
    with torch.no_grad():
        out = model(spec)
    assert out.shape == spec.shape
    assert torch.isfinite(out).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    if GTCRN_DIR.is_dir():
        model = _load("gtcrn_dns3.pt")
        wav = _read_wav(GTCRN_DIR / "golden" / "mix.wav")[: 2 * 16000]
    else:  # random weights and noise still exercise the export
        torch.manual_seed(0)
        model = GTCRN().eval()
        wav = 0.1 * torch.randn(2 * 16000)

    # 2 s of audio: a different frame count (126) than the export example (20)
    assert_core_exports(model, torch.randn(1, 257, 20, 2), _stft(wav), tmp_path / "gtcrn.onnx")
