"""The ``cpu`` target: an ONNX model run by ONNX Runtime's CPU execution provider, INT8 where
INT8 is measured faster and keeps quality (``quantize``), fp32 otherwise."""

from __future__ import annotations

from secompile.targets.base import Target


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
    description="ONNX for ONNX Runtime on x86/ARM CPUs: INT8 when measured faster, else fp32",
    precision="int8 or fp32 (measured)",
    artifact_format="onnx",
    opset=17,
    execution_providers=("CPUExecutionProvider",),
    default_pipeline="fuse-conv-bn,merge-grouped-gru,export-onnx,quantize,validate",
    supported_passes=frozenset(
        {"fuse-conv-bn", "merge-grouped-gru", "prune", "distill", "stream", "aot-inductor",
         "export-onnx", "quantize", "ort-format", "validate"}),
    availability=_cpu_availability,
)
