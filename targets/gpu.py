"""The ``gpu`` target: what ML engineers deploy on NVIDIA GPUs, measured on one.

Artifacts, all from the same model:

* ``model.onnx``: FP16 ONNX with float32 inputs and outputs, the spectral front/back end and
  numerically sensitive operators kept fp32 (``fp16``), for ``trtexec`` or ONNX Runtime's
  TensorRT/CUDA providers;
* ``model_aoti.pt2``: ``torch.export`` + AOTInductor package, FP16 autocast, dynamic batch and
  length (``aot-inductor``), replayable as a CUDA graph for fixed-shape chunks;
* ``model_trt.ep``: a Torch-TensorRT exported program where Torch-TensorRT is installed
  (``tensorrt``; the ``gpu`` extra), with its op-coverage table.

``validate-gpu`` measures them on the GPU. On a machine without a CUDA GPU the target is
unavailable (``TargetError``, exit 2); ``--allow-cpu-only-artifacts`` then builds the FP16 ONNX
alone (``cpu_only_pipeline``), checks its quality with FP16 simulated on the CPU, and marks it
unvalidated on a GPU.
"""

from __future__ import annotations

from secompile.targets.base import Target
from secompile.targets.hardware import detect


def _gpu_availability() -> str | None:
    hw = detect()
    if not hw.cuda:
        return f"no CUDA GPU ({hw.cuda_reason})"
    return None


GPU = Target(
    name="gpu",
    description="NVIDIA GPUs: FP16 ONNX, AOTInductor package (CUDA graphs), Torch-TensorRT",
    precision="fp16 (fp32 I/O, sensitive ops fp32)",
    artifact_format="onnx",
    opset=17,
    execution_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    default_pipeline=("fuse-conv-bn,merge-grouped-gru,aot-inductor,tensorrt,export-onnx,fp16,"
                      "validate-gpu"),
    supported_passes=frozenset(
        {"fuse-conv-bn", "merge-grouped-gru", "prune", "distill", "aot-inductor", "tensorrt",
         "export-onnx", "fp16",
         "validate", "validate-gpu"}),
    availability=_gpu_availability,
    cpu_only_pipeline=("fuse-conv-bn,merge-grouped-gru,export-onnx,fp16,"
                       "validate{speed=false memory=false streaming=false}"),
)
