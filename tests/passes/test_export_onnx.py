"""export-onnx: structure, dynamic axes, parity on real audio, DFT compaction, config errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.errors import ConfigError
from compiler.instruments import parity_error
from compiler.runtime import OrtRunner
from passes.export_onnx import ExportOnnx, ExportOnnxConfig
from tests.conftest import GTCRN_DIR, VBDEMAND, noise_audio, requires_shared


def test_exports_portable_onnx_with_dynamic_axes(tiny, make_ctx) -> None:
    result = ExportOnnx().run(tiny, make_ctx(tiny))
    art = result.artifact
    assert result.modified and art.format == "onnx" and art.module is None
    model = onnx.load(str(art.path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["noisy"]
    assert [o.name for o in model.graph.output] == ["enhanced"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "samples"]
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}, "standard ops only"
    assert result.metrics["opset"] == 17
    assert result.metrics["dft_bases_compacted"] == 2
    runner = OrtRunner(art.path, 1)
    for length in (8000, 16001, 23456):  # any length, any batch
        wav = np.repeat(noise_audio(length / 16000), 3, axis=0)
        assert runner(wav).shape == wav.shape
    assert parity_error(tiny, art, noise_audio(), 1) <= 1e-4


def test_dft_compaction_shrinks_file_and_keeps_output(tiny, make_ctx) -> None:
    compact = ExportOnnx().run(tiny, make_ctx(tiny)).artifact
    full_cfg = ExportOnnxConfig(compact_dft=False)
    full = ExportOnnx(full_cfg).run(tiny, make_ctx(tiny).with_pass_dir(1, "full")).artifact
    assert compact.size_bytes() < full.size_bytes() / 2
    assert parity_error(compact, full, noise_audio(), 1) <= 1e-5


@requires_shared
def test_gtcrn_parity_on_real_audio(make_ctx) -> None:
    from calibration.audio import read_audio
    from models.registry import load_model

    art = load_model("gtcrn", GTCRN_DIR / "gtcrn_vctk.pt")
    audio = read_audio(min((VBDEMAND / "noisy").glob("*.wav")), 16000)[None, :]
    result = ExportOnnx().run(art, make_ctx(art, audio))
    assert parity_error(art, result.artifact, audio, 1) <= 1e-4
    assert result.artifact.size_bytes() < 400_000  # weights + graph, no stored DFT bases


@pytest.mark.parametrize("options", [
    {"opset": 7}, {"simplify": "magic"}, {"ort_level": "max"}, {"parity_tolerance": -1},
    {"compact_dft": "yes"}, {"unknown": 1},
])
def test_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match="export-onnx"):
        ExportOnnxConfig.from_options(options, "export-onnx")
