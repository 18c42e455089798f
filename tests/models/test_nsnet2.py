"""Tests for the NSNet2 port: ONNX weight conversion, parity with the official ONNX file, quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from secompile.calibration.metrics import si_sdr
from secompile.compiler.core.errors import ModelError
from secompile.models.nsnet2 import (
    HOP,
    N_FFT,
    SAMPLE_RATE,
    NSNet2Core,
    build_nsnet2,
    state_dict_from_onnx,
)
from secompile.models.registry import load_model
from secompile.models.spectral import SpectralEnhancer
from tests.conftest import SHARED_DATA as DATA
from tests.conftest import assert_core_exports

ONNX_FILE = DATA / "models" / "nsnet2" / "nsnet2-16k.onnx"
VBD = DATA / "audio" / "vbdemand"
PARITY_FILES = ["p232_010.wav", "p232_052.wav", "p257_418.wav"]
QUALITY_FILES = ["p232_035.wav", "p232_121.wav", "p232_169.wav"]
needs_data = pytest.mark.skipif(
    not (ONNX_FILE.is_file() and VBD.is_dir()),
    reason=f"shared NSNet2 model or VoiceBank-DEMAND audio not found under {DATA}",
)


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


def _read_wav(path: Path) -> torch.Tensor:
    sf = pytest.importorskip("soundfile")
    data, sr = sf.read(path, dtype="float32")
    assert sr == SAMPLE_RATE
    return torch.from_numpy(data)


@pytest.fixture(scope="module")
def onnx_state() -> dict[str, torch.Tensor]:
    if not ONNX_FILE.is_file():
        pytest.skip(f"shared NSNet2 ONNX file not found: {ONNX_FILE}")
    return state_dict_from_onnx(ONNX_FILE)


@pytest.fixture(scope="module")
def model(onnx_state) -> SpectralEnhancer:
    enhancer = build_nsnet2().eval()
    enhancer.core.load_state_dict(onnx_state, strict=True)
    return enhancer


def test_constants_and_wrapper() -> None:
    enhancer = build_nsnet2()
    assert isinstance(enhancer.core, NSNet2Core)
    assert enhancer.sample_rate == SAMPLE_RATE == 16000
    assert (enhancer.stft.n_fft, enhancer.stft.hop, enhancer.stft.window) == (320, 160, "sqrt_hann")
    assert (N_FFT, HOP) == (320, 160)


def test_forward_shape_and_gain_clip() -> None:
    torch.manual_seed(0)
    core = NSNet2Core().eval()
    spec = torch.randn(2, 161, 7, 2)
    with torch.no_grad():
        out = core(spec)
        gain = core.gain(core.features(spec))
    assert out.shape == spec.shape
    assert gain.shape == (2, 7, 161)
    # The output is the input scaled per bin by one real gain in [1e-4, 1].
    ratio = out.norm(dim=-1) / spec.norm(dim=-1)
    assert float(ratio.min()) >= 1e-4 * (1 - 1e-5) and float(ratio.max()) <= 1 + 1e-5
    zero = core(torch.zeros(1, 161, 3, 2))  # log10 floor keeps silence finite
    assert torch.isfinite(zero).all()


# --- ONNX conversion --------------------------------------------------------------------------


@needs_data
def test_converter_covers_every_parameter(onnx_state) -> None:
    expected = NSNet2Core().state_dict()
    assert set(onnx_state) == set(expected)
    for name, tensor in expected.items():
        assert onnx_state[name].shape == tensor.shape, name
        assert onnx_state[name].dtype == torch.float32, name
    NSNet2Core().load_state_dict(onnx_state, strict=True)
    # 2,687,563 in the ONNX file, of which two 1-element shape constants are not weights
    assert sum(t.numel() for t in onnx_state.values()) == 2_687_561


@needs_data
def test_gain_matches_onnx_original(model: SpectralEnhancer) -> None:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(ONNX_FILE), options, providers=["CPUExecutionProvider"])
    core = model.core
    for name in PARITY_FILES:
        wav = _read_wav(VBD / "noisy" / name).unsqueeze(0)
        with torch.no_grad():
            features = core.features(model.analyse(wav))
            got = core.gain(features).numpy()
        (expected,) = session.run(None, {"input": features.numpy()})
        max_err = float(np.abs(got - expected).max())
        assert max_err <= 1e-4, f"{name}: port differs from the ONNX original by {max_err:.2e}"


@needs_data
def test_enhancement_improves_si_sdr(model: SpectralEnhancer) -> None:
    for name in QUALITY_FILES:
        noisy = _read_wav(VBD / "noisy" / name)
        clean = _read_wav(VBD / "clean" / name).numpy()
        with torch.no_grad():
            enhanced = model(noisy.unsqueeze(0))[0].numpy()
        assert enhanced.shape == clean.shape
        before, after = si_sdr(noisy.numpy(), clean), si_sdr(enhanced, clean)
        assert after > before + 3.0, f"{name}: SI-SDR {before:.2f} dB -> {after:.2f} dB"


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.onnx"
    path.write_text("definitely not an ONNX model\n")
    with pytest.raises(ModelError) as info:
        state_dict_from_onnx(path)
    assert str(path) in str(info.value)


def test_missing_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.onnx"
    with pytest.raises(ModelError) as info:
        state_dict_from_onnx(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_onnx_file_of_another_model(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    path = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(3, 4), (torch.randn(1, 3),), str(path), dynamo=False)
    with pytest.raises(ModelError) as info:
        state_dict_from_onnx(path)
    assert str(path) in str(info.value) and "NSNet2" in str(info.value)


def test_registry_rejects_non_onnx_weights(tmp_path: Path) -> None:
    path = tmp_path / "nsnet2.onnx"
    path.write_bytes(b"\x00\x01garbage" * 16)
    with pytest.raises(ModelError) as info:
        load_model("nsnet2", weights=path)
    assert info.value.exit_code == 2 and str(path) in str(info.value)
    other = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), other)
    with pytest.raises(ModelError, match="does not match architecture 'nsnet2'"):
        load_model("nsnet2", weights=other)


def test_registry_without_weights() -> None:
    with pytest.raises(ModelError, match="--weights"):
        load_model("nsnet2")


# --- registry -------------------------------------------------------------------------------


@needs_data
def test_load_model_from_onnx(model: SpectralEnhancer, tmp_path: Path) -> None:
    artifact = load_model("nsnet2", weights=ONNX_FILE)
    assert artifact.info.name == "nsnet2"
    assert artifact.info.sample_rate == 16000
    assert artifact.info.stft == {"n_fft": 320, "hop": 160, "window": "sqrt_hann", "center": True}
    assert not artifact.module.training
    loaded = artifact.module.core.state_dict()
    for name, tensor in model.core.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    # the port's own state_dict round-trips through a .pt file
    saved = tmp_path / "nsnet2.pt"
    torch.save(model.core.state_dict(), saved)
    again = load_model("nsnet2", weights=saved).module.core.state_dict()
    assert torch.equal(again["gru.weight_hh_l1"], loaded["gru.weight_hh_l1"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_dynamic_time(tmp_path: Path) -> None:
    torch.manual_seed(0)
    core = NSNet2Core().eval()
    # another frame count (37) than the export example (10)
    assert_core_exports(core, torch.randn(1, 161, 10, 2), torch.randn(1, 161, 37, 2),
                        tmp_path / "nsnet2_core.onnx")
