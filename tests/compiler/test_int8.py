"""INT8 building blocks: CPU-feature detection, the GRU lowering, quality gates."""

from __future__ import annotations

from xml.etree import ElementTree

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from secompile.compiler.quantization.int8_gru import (
    gru_lowering_refusal,
    lower_gru_int8,
    store_gru_weights_int8,
)
from secompile.compiler.reporting.gates import GateCheck, Gates, check_quality, failed, write_junit
from secompile.targets.cpu_features import detect, int8_layout, parse_features

AVX2_ONLY = "processor : 0\nflags : fpu sse4_1 sse4_2 avx avx2 fma\n"
VNNI = "processor : 0\nflags : fpu sse4_1 avx2 avx512f avx512bw avx512_vnni\n"
ARM_DOT = "processor : 0\nFeatures : fp asimd asimddp i8mm\n"


@pytest.mark.parametrize(("arch", "cpuinfo", "kernel", "reduce_range"), [
    ("x86_64", AVX2_ONLY, "x86-avx2", True),
    ("x86_64", VNNI, "x86-vnni", False),
    ("AMD64", "flags : sse4_1 avx2 avx_vnni\n", "x86-vnni", False),
    ("aarch64", ARM_DOT, "arm-dotprod", False),
    ("aarch64", "Features : fp asimd\n", "arm-neon", True),
    ("x86_64", "flags : sse4_1\n", "x86-sse", True),
])
def test_int8_layout_follows_detected_instructions(arch, cpuinfo, kernel, reduce_range) -> None:
    features = parse_features(arch, cpuinfo)
    assert features.int8_kernel() == kernel
    layout = int8_layout(features)
    assert layout.reduce_range is reduce_range
    assert (layout.activation_type, layout.weight_type) == ("uint8", "int8")
    assert layout.reason


def test_this_machine_is_detected_not_assumed() -> None:
    features = detect()
    assert features.arch
    if features.arch == "x86_64":
        with open("/proc/cpuinfo") as info:
            text = info.read()
        assert ("avx2" in features.flags) == (" avx2" in text)


def _gru_model(hidden: int, inputs: int, direction: str = "forward", lbr: int = 1,
               initial_state: bool = False, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, 3 * hidden, inputs)) * 0.3).astype(np.float32)
    r = (rng.standard_normal((1, 3 * hidden, hidden)) * 0.3).astype(np.float32)
    b = (rng.standard_normal((1, 6 * hidden)) * 0.1).astype(np.float32)
    names = ["X", "W", "R", "B", "", "H0" if initial_state else ""]
    node = helper.make_node("GRU", names, ["Y", "Y_h"], hidden_size=hidden,
                            linear_before_reset=lbr, direction=direction, name="gru")
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", inputs])]
    if initial_state:
        graph_inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT,
                                                          [1, "B", hidden]))
    graph = helper.make_graph(
        [node], "g", graph_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", hidden]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "B", hidden])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
         numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.mark.parametrize("initial_state", [False, True])
def test_gru_lowering_matches_the_gru_op(initial_state) -> None:
    model = _gru_model(32, 12, initial_state=initial_state)
    rng = np.random.default_rng(1)
    feed = {"X": rng.standard_normal((25, 3, 12)).astype(np.float32)}
    if initial_state:
        feed["H0"] = (rng.uniform(-0.5, 0.5, (1, 3, 32))).astype(np.float32)
    expected = _run(model, feed)
    assert gru_lowering_refusal(model.graph.node[0], {t.name: t for t in model.graph.initializer}
                                ) is None
    lower_gru_int8(model, "gru", reduce_range=False)
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "GRU" not in ops and {"Scan", "DynamicQuantizeMatMul"} <= ops
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] >= 12
                   for t in model.graph.initializer), "fp32 weight matrices must be gone"
    got = _run(model, feed)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert np.abs(g - e).max() < 0.05  # INT8 weights and activations, |h| <= 1


def test_gru_weight_storage_keeps_the_op_and_shrinks_the_weights() -> None:
    model = _gru_model(16, 8)
    feed = {"X": np.random.default_rng(2).standard_normal((10, 2, 8)).astype(np.float32)}
    expected = _run(model, feed)
    store_gru_weights_int8(model, "gru", reduce_range=True)
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 2
    assert {t.name for t in model.graph.initializer}.isdisjoint({"W", "R"})
    got = _run(model, feed)
    assert np.abs(got[0] - expected[0]).max() < 0.05


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"direction": "bidirectional"}, "direction"),
    ({"lbr": 0}, "linear_before_reset"),
])
def test_gru_lowering_refuses_what_it_cannot_express(kwargs, reason) -> None:
    model = _gru_model(8, 4, **kwargs)
    inits = {t.name: t for t in model.graph.initializer}
    assert reason in gru_lowering_refusal(model.graph.node[0], inits)


def _quality(delta_by_bucket: dict[str, float]) -> dict:
    base = {"si_sdr": 10.0, "pesq": 2.0, "stoi": 0.9}
    buckets = {name: {"files": 2, "baseline": base,
                      "artifact": {**base, "si_sdr": 10.0 + d}}
               for name, d in delta_by_bucket.items()}
    mean = float(np.mean(list(delta_by_bucket.values())))
    return {"files": 2 * len(buckets), "baseline": base,
            "artifact": {**base, "si_sdr": 10.0 + mean}, "buckets": buckets}


def test_gates_use_the_worst_bucket_not_the_average(tmp_path) -> None:
    quality = _quality({"<5dB": 0.3, "5-10dB": 0.1, ">=15dB": -0.25})
    checks = check_quality("cpu", quality, Gates(max_si_sdr_drop=0.2))
    bad = failed(checks)
    assert [(c.metric, c.bucket) for c in bad] == [("si_sdr", ">=15dB")]
    assert next(c for c in checks if c.bucket == "all" and c.metric == "si_sdr").status == \
        "passed"  # the mean (+0.05 dB) hides it
    assert ">=15dB" in bad[0].describe() and "-0.2" in bad[0].describe()
    write_junit(checks, tmp_path / "gates.xml")
    root = ElementTree.parse(tmp_path / "gates.xml").getroot()
    assert root.get("failures") == "1" and root.get("tests") == str(len(checks))
    failures = [case.get("name") for case in root if case.find("failure") is not None]
    assert failures == ["si_sdr[>=15dB]"]


def test_gates_are_skipped_without_quality_and_reject_bad_limits() -> None:
    checks = check_quality("cpu", None, Gates())
    assert {c.status for c in checks} == {"skipped"}
    assert not failed(checks)
    with pytest.raises(ValueError):
        Gates(max_si_sdr_drop=-1)
    assert GateCheck("cpu", "pesq", "all", 1, float("nan"), 0.05).status == "skipped"
