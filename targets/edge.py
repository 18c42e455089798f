"""The ``edge`` target: live, hop-by-hop enhancement on small CPUs with ONNX Runtime.

Its default pipeline writes the streaming artifact (``model_stream.onnx``, one hop in, one hop
out, state carried explicitly) next to the offline ``model.onnx``. Weight quantization for
edge devices is not part of it yet: the artifacts are fp32.
"""

from __future__ import annotations

from targets.base import Target
from targets.cpu import onnxruntime_cpu_availability

EDGE = Target(
    name="edge",
    description="streaming fp32 ONNX (model_stream.onnx + model.onnx) for live use on CPUs",
    precision="fp32",
    artifact_format="onnx",
    opset=17,
    execution_providers=("CPUExecutionProvider",),
    default_pipeline="fuse-conv-bn,merge-grouped-gru,stream,export-onnx,validate",
    supported_passes=frozenset(
        {"fuse-conv-bn", "merge-grouped-gru", "stream", "export-onnx", "validate"}),
    availability=onnxruntime_cpu_availability,
)
