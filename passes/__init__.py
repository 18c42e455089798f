"""Built-in passes; importing this package registers them (one module per pass)."""

from passes import (
    aot_inductor,
    distill,
    export_onnx,
    fp16,
    fuse_conv_bn,
    merge_grouped_gru,
    ort_format,
    prune,
    quantize,
    stream,
    tensorrt,
    validate,
    validate_gpu,
)

__all__ = [
    "aot_inductor",
    "distill",
    "export_onnx",
    "fp16",
    "fuse_conv_bn",
    "merge_grouped_gru",
    "ort_format",
    "prune",
    "quantize",
    "stream",
    "tensorrt",
    "validate",
    "validate_gpu",
]
