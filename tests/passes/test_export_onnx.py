"""export-onnx: structure, dynamic axes, parity on real audio, DFT compaction, config errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from secompile.compiler.core.errors import ConfigError
from secompile.compiler.runtime.parity import parity_error
from secompile.compiler.runtime.runners import OrtRunner
from secompile.passes.export_onnx import ExportOnnx, ExportOnnxConfig
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
    assert result.metrics["prelu_rewritten"] == 1
    assert "PRelu" not in {n.op_type for n in model.graph.node}
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
    from secompile.calibration.audio import read_audio
    from secompile.models.registry import load_model

    art = load_model("gtcrn", GTCRN_DIR / "gtcrn_vctk.pt")
    audio = read_audio(min((VBDEMAND / "noisy").glob("*.wav")), 16000)[None, :]
    result = ExportOnnx().run(art, make_ctx(art, audio))
    assert parity_error(art, result.artifact, audio, 1) <= 1e-4
    assert result.artifact.size_bytes() < 400_000  # weights + graph, no stored DFT bases


@pytest.mark.parametrize("options", [
    {"opset": 7}, {"simplify": "magic"}, {"ort_level": "max"}, {"parity_tolerance": -1},
    {"compact_dft": "yes"}, {"fast_prelu": 0}, {"unknown": 1},
])
def test_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match="export-onnx"):
        ExportOnnxConfig.from_options(options, "export-onnx")


@pytest.mark.parametrize("slope, op", [
    (np.array([0.25], np.float32), "LeakyRelu"),
    (np.array([0.1, 0.9, 0.0], np.float32).reshape(3, 1), "Max"),
    (np.array([0.1, -0.5, 2.0], np.float32).reshape(3, 1), "PRelu"),  # not provably Max(x, ax)
])
def test_prelu_rewrite_is_exact(slope: np.ndarray, op: str, tmp_path) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from secompile.compiler.lowering.onnx_export import rewrite_prelu

    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"], name="act")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
        [numpy_helper.from_array(slope, "slope")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    rewritten = rewrite_prelu(model)
    assert rewritten == (op != "PRelu")
    assert op in {n.op_type for n in model.graph.node}
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(before, after)


def test_simplifier_falls_back_and_says_which_ran(tiny, make_ctx, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxsim", None)  # as if onnxsim could not install
    monkeypatch.setitem(sys.modules, "onnxslim", None)
    result = ExportOnnx().run(tiny, make_ctx(tiny))
    assert result.metrics["simplifier"] == "none"
    assert result.metrics["ort_offline_level"] == "basic"
    assert parity_error(tiny, result.artifact, noise_audio(), 1) <= 1e-4
    with pytest.raises(ConfigError, match="onnxsim is not installed"):
        ExportOnnxConfig(simplify="onnxsim")  # refused up front, before any work
