"""The built-in passes, one module per pass, and the explicit list that registers them.

Importing this package registers nothing: the application calls :func:`register_builtin`
(``secompile build``, the CLI's listings and the Python API do), so the core's registry never
imports this package and a pass never imports another pass.
"""

from __future__ import annotations

from secompile.compiler.core.pass_base import Pass
from secompile.compiler.core.registry import register_pass
from secompile.passes.aot_inductor import AotInductor
from secompile.passes.distill import Distill
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.fp16 import Fp16
from secompile.passes.fuse_conv_bn import FuseConvBn
from secompile.passes.merge_grouped_gru import MergeGroupedGru
from secompile.passes.ort_format import OrtFormat
from secompile.passes.prune import Prune
from secompile.passes.quantize import Quantize
from secompile.passes.stream import Stream
from secompile.passes.tensorrt import TensorRt
from secompile.passes.validate import Validate
from secompile.passes.validate_gpu import ValidateGpu

BUILTIN_PASSES: tuple[type[Pass], ...] = (
    FuseConvBn,
    MergeGroupedGru,
    Prune,
    Distill,
    Stream,
    AotInductor,
    TensorRt,
    ExportOnnx,
    Quantize,
    Fp16,
    OrtFormat,
    Validate,
    ValidateGpu,
)


def register_builtin() -> None:
    """Register every built-in pass (idempotent)."""
    for cls in BUILTIN_PASSES:
        register_pass(cls)


__all__ = [
    "BUILTIN_PASSES",
    "AotInductor",
    "Distill",
    "ExportOnnx",
    "Fp16",
    "FuseConvBn",
    "MergeGroupedGru",
    "OrtFormat",
    "Prune",
    "Quantize",
    "Stream",
    "TensorRt",
    "Validate",
    "ValidateGpu",
    "register_builtin",
]
