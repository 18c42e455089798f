"""quantize: tiers per layer, grouped/transposed convolutions, INT8 GRUs, fallbacks, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from secompile.calibration.datasets import AudioFolder
from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.runtime.parity import parity_error
from secompile.compiler.runtime.runners import OrtRunner
from secompile.models.registry import DEMO_DIR
from secompile.models.spectral import SpectralEnhancer, StftSpec
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.quantize import Quantize, QuantizeConfig
from tests.conftest import noise_audio

FAST = {"timing_repeats": 3, "calibration_clips": 4, "calibration_seconds": 2.0}


@pytest.fixture
def exported(tiny, make_ctx):
    """The tiny model (Conv, grouped ConvTranspose, GRU) exported to ONNX, and a context
    factory whose calibration audio is the project's own calibration set."""
    onnx_art = ExportOnnx().run(tiny, make_ctx(tiny)).artifact
    calibration = AudioFolder.scan(DEMO_DIR / "calib", 16000)

    def ctx(index: int = 1):
        return make_ctx(tiny, calibration=calibration).with_pass_dir(index, "quantize")

    return onnx_art, ctx


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _run(art, ctx, **options):
    return Quantize(QuantizeConfig(**{**FAST, "min_speedup": 0.0, **options})).run(art, ctx)


def test_quantizes_grouped_transposed_conv_per_channel_and_keeps_the_output(exported) -> None:
    art, ctx = exported
    result = _run(art, ctx(), per_channel=True, io_layers="int8", min_fidelity_db=15.0)
    assert result.modified and result.metrics["shipped"] == "int8"
    layers = {layer["kind"]: layer for layer in result.metrics["layers"]}
    assert layers["conv-transpose"]["tier"] == "int8"  # the grouped one: per-tensor weights
    model = onnx.load(str(result.artifact.path))
    producers = {o: n for n in model.graph.node for o in n.output}
    deconv = next(n for n in model.graph.node if n.op_type == "ConvTranspose"
                  and n.input[1] in producers and producers[n.input[1]].op_type
                  == "DequantizeLinear")
    assert any(a.name == "group" and a.i == 2 for a in deconv.attribute)
    scale = next(t for t in model.graph.initializer
                 if t.name == producers[deconv.input[1]].input[1])
    assert list(scale.dims) in ([], [1])  # per-tensor: ORT's per-channel path crashes here
    assert result.metrics["fidelity_db"]["min"] >= 15.0
    clip = noise_audio(1.5)
    assert OrtRunner(result.artifact.path, 1)(clip).shape == clip.shape
    # the spectral front/back end (computed DFT bases) is never quantized
    assert any("spectral front/back end" in note for note in result.metrics["kept_fp32_always"])


def test_small_gru_stays_fp32_arithmetic_and_big_enough_gru_is_lowered(exported) -> None:
    art, ctx = exported
    default = _run(art, ctx(1), min_fidelity_db=0.0)
    gru = next(layer for layer in default.metrics["layers"] if layer["kind"] == "gru")
    assert gru["tier"] == "weights" and "gru_min_weights" in gru["notes"][1]
    assert "ONNX Runtime cannot quantize GRU" in gru["notes"][0]
    lowered = _run(art, ctx(2), gru_min_weights=0, min_fidelity_db=0.0)
    gru = next(layer for layer in lowered.metrics["layers"] if layer["kind"] == "gru")
    assert gru["tier"] == "int8"
    ops = _ops(lowered.artifact.path)
    assert "GRU" not in ops and "Scan" in ops and "DynamicQuantizeMatMul" in ops


def test_io_layers_start_at_their_cap(exported) -> None:
    art, ctx = exported
    result = _run(art, ctx(), io_layers="fp32", min_fidelity_db=0.0)
    roles = {layer["role"]: layer["tier"] for layer in result.metrics["layers"]}
    assert roles["input"] == "fp32" and roles["output"] == "fp32"


def test_an_int8_model_that_is_not_faster_is_not_shipped(exported) -> None:
    art, ctx = exported
    result = _run(art, ctx(), min_speedup=50.0, min_fidelity_db=0.0)
    assert not result.modified and result.artifact is art
    assert result.metrics["shipped"] == "fp32"
    assert "x the fp32 speed" in result.metrics["reason"]
    assert result.metrics["speed"]["speedup"] < 50.0


def test_layers_fall_back_most_sensitive_first_until_the_floor_holds(exported) -> None:
    art, ctx = exported
    strict = _run(art, ctx(), min_fidelity_db=200.0)  # unreachable: everything falls back
    assert not strict.modified and strict.metrics["shipped"] == "fp32"
    assert "no INT8 plan keeps" in strict.metrics["reason"]
    tiers = [layer["tier"] for layer in strict.metrics["layers"]]
    assert set(tiers) == {"fp32"}
    demoted = [layer for layer in strict.metrics["layers"] if layer["notes"]
               and "fell back" in layer["notes"][-1]]
    # the first demotion hit the layer that was worst alone
    first = min((layer for layer in strict.metrics["layers"]
                 if layer["fidelity_alone_db"] is not None),
                key=lambda layer: layer["fidelity_alone_db"])
    assert first in demoted


def test_without_calibration_audio_it_is_a_config_error(exported, tiny, make_ctx) -> None:
    art, _ = exported
    with pytest.raises(ConfigError, match="calibration"):
        Quantize().run(art, make_ctx(tiny).with_pass_dir(3, "quantize"))


def test_int8_output_stays_close_to_fp32(exported) -> None:
    art, ctx = exported
    result = _run(art, ctx(), min_fidelity_db=20.0)
    assert result.modified
    error = parity_error(art, result.artifact, noise_audio(), 1)
    peak = float(np.abs(OrtRunner(art.path, 1)(noise_audio())).max())
    assert error < 0.1 * peak


@pytest.mark.parametrize("options", [
    {"method": "kl"}, {"reduce_range": "maybe"}, {"gru": "int4"}, {"io_layers": "bf16"},
    {"min_speedup": -1}, {"calibration_clips": 0}, {"timing_repeats": 1}, {"unknown": 1},
])
def test_config_errors(options) -> None:
    with pytest.raises(ConfigError):
        QuantizeConfig.from_options(options, "quantize")


class _LstmCore(torch.nn.Module):
    """Magnitude mask from an LSTM over time: the dynamic-INT8 path (DynamicQuantizeLSTM)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(65, 32, batch_first=True)
        self.out = torch.nn.Linear(32, 65)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # [B, F, T, 2]
        magnitude = (spec.pow(2).sum(-1) + 1e-8).sqrt().transpose(1, 2)  # [B, T, F]
        h, _ = self.lstm(torch.log1p(magnitude))
        mask = torch.sigmoid(self.out(h)).transpose(1, 2).unsqueeze(-1)
        return spec * mask


def test_lstm_gets_onnx_runtime_dynamic_int8(make_ctx) -> None:
    torch.manual_seed(0)
    module = SpectralEnhancer(_LstmCore(), StftSpec(128, 64), 16000).eval()
    info = ModelInfo(name="lstm", sample_rate=16000, source={"model": "test", "weights": None})
    art = Artifact("torch", info, module=module, lineage=("load:test",))
    onnx_art = ExportOnnx().run(art, make_ctx(art)).artifact
    calibration = AudioFolder.scan(DEMO_DIR / "calib", 16000)
    ctx = make_ctx(art, calibration=calibration).with_pass_dir(1, "quantize")
    result = _run(onnx_art, ctx, min_fidelity_db=0.0, io_layers="int8")  # LSTM is first
    lstm = next(layer for layer in result.metrics["layers"] if layer["kind"] == "lstm")
    assert lstm["tier"] == "int8"
    assert "DynamicQuantizeLSTM" in _ops(result.artifact.path)


def test_clip_reader_is_an_onnx_runtime_calibration_reader() -> None:
    from onnxruntime.quantization import CalibrationDataReader

    from secompile.calibration.readers import ClipReader

    reader = ClipReader("noisy", [noise_audio(0.1), noise_audio(0.2)])
    assert isinstance(reader, CalibrationDataReader)
    assert [f["noisy"].shape[1] for f in reader] == [1600, 3200]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["noisy"].shape == (1, 1600)
