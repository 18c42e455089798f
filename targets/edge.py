"""The ``edge`` target: live, hop-by-hop enhancement on small CPUs with ONNX Runtime.

It is the ``cpu`` target plus the streaming artifact: its default pipeline writes
``model_stream.onnx`` (one hop in, one hop out, state carried explicitly) next to the offline
``model.onnx``. Weight quantization for edge devices is not part of it yet: both are fp32.
"""

from __future__ import annotations

from dataclasses import replace

from targets.cpu import CPU

EDGE = replace(
    CPU,
    name="edge",
    description="streaming fp32 ONNX (model_stream.onnx + model.onnx) for live use on CPUs",
    default_pipeline="fuse-conv-bn,merge-grouped-gru,stream,export-onnx,validate",
)
