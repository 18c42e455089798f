"""The ``edge`` target: the smallest artifact that keeps quality, for small CPUs, live use
included.

It is the ``cpu`` target with four differences in its default pipeline:

* ``prune{macs_reduction=0.25 steps=300 max_si_sdr_loss=0.1 max_pesq_loss=0.025}`` removes
  channels until the counted MACs fall by a quarter and fine-tunes the smaller model by
  distillation from the original on the project's synthetic mixtures
  (``secompile build --target edge --out build`` on the default model: 30% fewer MACs,
  -0.07 dB SI-SDR and -0.005 PESQ against the original on its demo pair, 85 s on 2 cores). A
  pruning that loses more than half the build's default quality gates (the other half is
  INT8's) is refused, and so is one that cannot get its training audio (espeak-ng missing):
  the unpruned model goes on, with the reason printed and reported;
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

from secompile.targets.cpu import CPU

EDGE = replace(
    CPU,
    name="edge",
    description=("smallest ONNX/.ort that keeps quality (pruned, INT8 weights), plus a "
                 "streaming model"),
    precision="int8 where quality allows",
    default_pipeline=("fuse-conv-bn,merge-grouped-gru,"
                      "prune{macs_reduction=0.25 steps=300 max_si_sdr_loss=0.1 "
                      "max_pesq_loss=0.025},"
                      "stream,export-onnx,"
                      "quantize{min_speedup=0.0 min_size_reduction=1.5},ort-format,validate"),
)
