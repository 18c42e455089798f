"""Tests for the target registry and the cpu target (``targets``)."""

from __future__ import annotations

import dataclasses

import pytest

from secompile.compiler.core.errors import TargetError
from secompile.compiler.core.pipeline import PipelineSpec
from secompile.targets import TARGETS, Target, get_target, require_available


def test_cpu_target_is_registered() -> None:
    cpu = get_target("cpu")
    assert isinstance(cpu, Target)
    assert cpu.name == "cpu"
    assert cpu is TARGETS["cpu"]
    assert cpu.artifact_format == "onnx"
    assert cpu.precision == "int8 or fp32 (measured)"
    assert "quantize" in cpu.default_pipeline and "ort-format" in get_target("edge").default_pipeline
    assert "CPUExecutionProvider" in cpu.execution_providers


def test_cpu_target_is_available_here() -> None:
    pytest.importorskip("onnxruntime", reason="the cpu target needs onnxruntime")
    cpu = get_target("cpu")
    assert cpu.unavailable_reason() is None
    require_available(cpu)  # does not raise


@pytest.mark.parametrize("name", ["tpu", "CPU", "", "cpu "])
def test_unknown_target_lists_known_ones(name: str) -> None:
    with pytest.raises(TargetError) as info:
        get_target(name)
    message = str(info.value)
    assert f"'{name}'" in message
    assert "cpu" in message.split("known targets:")[1]
    assert info.value.exit_code == 2


def test_require_available_names_target_and_reason() -> None:
    broken = dataclasses.replace(
        get_target("cpu"), name="broken", availability=lambda: "no such runtime"
    )
    with pytest.raises(TargetError, match="'broken'.*no such runtime"):
        require_available(broken)


def test_target_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_target("cpu").opset = 9  # type: ignore[misc]


def test_cpu_supports_its_default_passes() -> None:
    cpu = get_target("cpu")
    spec = PipelineSpec.parse(cpu.default_pipeline)
    assert all(cpu.supports(p.name) for p in spec.passes)
    assert not cpu.supports("no-such-pass")


def test_cpu_default_pipeline_resolves() -> None:
    cpu = get_target("cpu")
    passes = PipelineSpec.parse(cpu.default_pipeline).resolve(cpu)
    assert [p.name for p in passes] == [
        "fuse-conv-bn", "merge-grouped-gru", "export-onnx", "quantize", "validate"]


def test_edge_target_streams_by_default() -> None:
    edge = get_target("edge")
    assert edge.artifact_format == "onnx" and edge.supports("stream")
    names = [p.name for p in PipelineSpec.parse(edge.default_pipeline).resolve(edge)]
    assert names.index("stream") < names.index("export-onnx")
    assert names[-3:] == ["quantize", "ort-format", "validate"]
    quantize = PipelineSpec.parse(edge.default_pipeline).resolve(edge)[-3]
    assert quantize.config.min_speedup == 0 and quantize.config.min_size_reduction == 1.5
    assert get_target("cpu").supports("stream")
