"""The ``edge`` target: the smallest artifact that keeps quality, for small CPUs, live use
included.

It is the ``cpu`` target with three differences in its default pipeline:

* the streaming artifact (``model_stream.onnx``: one hop in, one hop out, state carried
  explicitly, fp32) is written next to the offline model;
* ``quantize{min_speedup=0.0 min_size_reduction=1.5}`` ships INT8 weights wherever the quality
  floor allows even when INT8 is not faster on the build machine, provided the file gets at
  least 1.5x smaller (INT8 that saves little is not worth its error);
* ``ort-format`` adds ONNX Runtime's mobile ``model.ort`` and the reduced-operator config for a
  minimal runtime build.
"""

from __future__ import annotations

from dataclasses import replace

from targets.cpu import CPU

EDGE = replace(
    CPU,
    name="edge",
    description="smallest ONNX/.ort that keeps quality (INT8 weights), plus a streaming model",
    precision="int8 where quality allows",
    default_pipeline=("fuse-conv-bn,merge-grouped-gru,stream,export-onnx,"
                      "quantize{min_speedup=0.0 min_size_reduction=1.5},ort-format,validate"),
)
