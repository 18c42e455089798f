"""The ``cpu`` target: an fp32 ONNX model run by ONNX Runtime's CPU execution provider."""

from __future__ import annotations

from targets.base import Target


def _cpu_availability() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "CPUExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CPUExecutionProvider"
    return None


CPU = Target(
    name="cpu",
    description="fp32 ONNX for ONNX Runtime on x86/ARM CPUs",
    precision="fp32",
    artifact_format="onnx",
    opset=17,
    execution_providers=("CPUExecutionProvider",),
    default_pipeline="fuse-conv-bn,merge-grouped-gru,export-onnx,validate",
    supported_passes=frozenset(
        {"fuse-conv-bn", "merge-grouped-gru", "stream", "export-onnx", "validate"}),
    availability=_cpu_availability,
)
