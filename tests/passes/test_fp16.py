"""fp16: fp32 I/O, fp16 weights, sensitive ops and spectral ends fp32, range check, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from secompile.calibration.audio import read_audio
from secompile.compiler.core.artifact import Artifact, ModelInfo, onnx_props
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError, PassError
from secompile.compiler.quantization.int8_plan import signal_nodes
from secompile.compiler.runtime.runners import OrtRunner
from secompile.models.registry import DEMO_DIR, load_model
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.fp16 import DEFAULT_SENSITIVE_OPS, FP16_MAX, Fp16, Fp16Config
from secompile.targets import get_target
from tests.conftest import noise_audio

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _ctx(baseline: Artifact, workdir: Path, audio: np.ndarray, index: int = 0) -> PassContext:
    ctx = PassContext(target=get_target("cpu"), workdir=workdir, baseline=baseline,
                      parity_audio=audio, threads=1)
    return ctx.with_pass_dir(index, "fp16")


@pytest.fixture(scope="module")
def default_fp16(tmp_path_factory):
    """The project's default model exported by ``export-onnx`` on the demo clip, and the fp16
    pass's result on it; plus a context factory."""
    workdir = tmp_path_factory.mktemp("fp16")
    art = load_model("default")
    clip = read_audio(DEMO_DIR / "noisy" / "demo.wav", 16000, allow_resample=True)
    audio = clip[None, : 4 * 16000].astype(np.float32)
    onnx_art = ExportOnnx().run(art, _ctx(art, workdir, audio, 0)).artifact
    result = Fp16().run(onnx_art, _ctx(art, workdir, audio, 1))
    return onnx_art, result, lambda index: _ctx(art, workdir, audio, index)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def test_default_model_becomes_fp16_with_fp32_edges(default_fp16) -> None:
    source, result, _ = default_fp16
    assert result.modified and result.artifact.path.name == "model.onnx"
    assert result.artifact.lineage[-1] == "fp16" and result.artifact.metadata["precision"] == "fp16"
    model = onnx.load(str(result.artifact.path))
    onnx.checker.check_model(model, full_check=True)
    # graph inputs and outputs stay float32; the weights are float16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [FLOAT]
    assert sum(t.data_type == HALF for t in model.graph.initializer) >= 10
    # export-onnx's metadata props are kept, the precision is added
    props = {p.key: p.value for p in model.metadata_props}
    assert props["secompile.precision"] == "fp16" and props["secompile.model"] == "default"
    assert props["secompile.stft"] == onnx_props(source.path)["secompile.stft"]
    # sensitive ops read float32 tensors, never float16
    types = _types(model)
    sensitive = [n for n in model.graph.node if n.op_type in DEFAULT_SENSITIVE_OPS]
    assert {n.op_type for n in sensitive} >= {"Pow", "ReduceSum", "Div"}
    for node in sensitive:
        assert all(types.get(i) != HALF for i in node.input if i), node.name
    # the spectral front end: the first Conv on the signal path keeps an fp32 DFT basis that
    # is computed in fp32, not cast down from fp16
    producer = {o: n for n in model.graph.node for o in n.output}
    on_signal = signal_nodes(model)
    stft = next(n for n in model.graph.node if n.op_type == "Conv" and n.name in on_signal)
    assert types[stft.input[0]] == FLOAT and types[stft.input[1]] == FLOAT
    assert producer[stft.input[1]].op_type != "Cast"
    assert any(types.get(n.input[1]) == HALF for n in model.graph.node
               if n.op_type == "Conv" and n is not stft), "learned convolutions are fp16"
    kept = result.metrics["kept_fp32"]
    assert stft.name in kept["spectral front end"]
    assert any(n.startswith("/ConvTranspose") for n in kept["spectral back end"])


def test_default_model_parity_and_size(default_fp16) -> None:
    source, result, _ = default_fp16
    metrics = result.metrics
    assert metrics["agreement_db"] >= 40
    assert min(metrics["agreement_db_by_run"].values()) == metrics["agreement_db"]
    assert set(metrics["agreement_db_by_run"]) == {
        "ort_cpu/parity", "fp16_storage/parity", "ort_cpu/parity_peak_1.0",
        "fp16_storage/parity_peak_1.0"}
    assert 0 < metrics["max_abs"] < 1e-2 and "ONNX Runtime CPU" in metrics["simulation"]
    assert metrics["size_bytes"]["fp32"] == source.size_bytes()
    assert metrics["size_reduction"] >= 1.8  # weights halve; the graph itself does not
    assert metrics["nodes_fp16"] + metrics["nodes_kept_fp32"] == metrics["nodes_float"]
    assert metrics["nodes_fp16"] > 20 and metrics["cast_nodes_inserted"] > 0
    assert metrics["kept_fp32"]["range overflow"] == []
    # any batch and length, like the fp32 model
    wav = np.repeat(noise_audio(1.3), 2, axis=0)
    assert OrtRunner(result.artifact.path, 1)(wav).shape == wav.shape


def test_already_fp16_model_is_not_modified(default_fp16) -> None:
    _, result, ctx = default_fp16
    again = Fp16().run(result.artifact, ctx(2))
    assert not again.modified and again.artifact is result.artifact


def test_too_strict_agreement_fails_naming_the_numbers(default_fp16) -> None:
    source, _, ctx = default_fp16
    with pytest.raises(PassError, match=r"dB SI-SDR from the fp32 output.*needs >= 200"):
        Fp16(Fp16Config(min_agreement_db=200.0)).run(source, ctx(3))


def _overflow_model(path: Path) -> Artifact:
    """``noisy [B, L]`` -> linear -> tanh -> x 300 -> x 300 -> x 1e-5 (+ tanh) -> linear: the
    second product reaches ~9e4 on loud input, beyond fp16's 65504 (no weight does)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "axis"),
        numpy_helper.from_array(rng.uniform(1.0, 2.0, (1, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array(300, np.float32), "up"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "down"),
        numpy_helper.from_array(rng.uniform(0.1, 0.3, (8, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["noisy", "axis"], ["x"], name="frame"),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
        helper.make_node("Mul", ["t", "up"], ["mid"], name="scale_mid"),
        helper.make_node("Mul", ["mid", "up"], ["big"], name="scale_up"),
        helper.make_node("Mul", ["big", "down"], ["small"], name="scale_down"),
        helper.make_node("Add", ["small", "t"], ["s"], name="add"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="last"),
        helper.make_node("Squeeze", ["y", "axis"], ["enhanced"], name="unframe"),
    ]
    graph = helper.make_graph(
        nodes, "overflow", [helper.make_tensor_value_info("noisy", FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("enhanced", FLOAT, ["batch", "samples"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    info = ModelInfo(name="overflow", sample_rate=16000, source={})
    return Artifact("onnx", info, path=path, lineage=("export-onnx",))


def test_range_check_keeps_overflowing_nodes_fp32(tmp_path) -> None:
    art = _overflow_model(tmp_path / "overflow.onnx")
    result = Fp16().run(art, _ctx(art, tmp_path / "work", noise_audio(0.5)))
    kept = result.metrics["kept_fp32"]
    (overflow,) = kept["range overflow"]
    assert overflow["node"] == "scale_up" and overflow["readers"] == ["scale_down"]
    assert overflow["max_abs"] > FP16_MAX  # an fp16 copy of it would be inf
    assert kept["by_reason"]["range overflow"] == 1
    assert kept["by_reason"]["reads an out-of-range tensor"] == 1
    model = onnx.load(str(result.artifact.path))
    types = _types(model)
    node = {n.name: n for n in model.graph.node}
    assert types[node["scale_up"].output[0]] == FLOAT  # never stored in fp16
    assert types[node["tanh"].output[0]] == HALF and types["w1"] == HALF
    assert types[node["scale_mid"].output[0]] == HALF  # 300x is within range: fp16
    assert result.metrics["agreement_db"] >= 40


def test_without_the_range_check_the_storage_simulation_fails(tmp_path, monkeypatch) -> None:
    """ONNX Runtime CPU runs the fp16 chain in fp32 and hides the overflow; the fp16 storage
    simulation shows it."""
    from secompile.passes import fp16

    art = _overflow_model(tmp_path / "overflow.onnx")
    monkeypatch.setattr(fp16, "_overflows", lambda *args: [])
    with pytest.raises(PassError, match=r"fp16_storage/parity_peak_1.0 non-finite"):
        Fp16().run(art, _ctx(art, tmp_path / "work", noise_audio(0.5)))


@pytest.mark.parametrize("options", [
    {"min_agreement_db": -1}, {"min_agreement_db": 0}, {"range_margin": 0},
    {"range_margin": 1.5}, {"keep_fp32_ops": ["log"]}, {"keep_fp32_ops": "Log"},
    {"spectral_fp32": "yes"}, {"unknown": 1},
])
def test_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match="fp16"):
        Fp16Config.from_options(options, "fp16")
