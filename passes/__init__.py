"""Built-in passes; importing this package registers them (one module per pass)."""

from passes import (
    export_onnx,
    fuse_conv_bn,
    merge_grouped_gru,
    ort_format,
    quantize,
    stream,
    validate,
)

__all__ = ["export_onnx", "fuse_conv_bn", "merge_grouped_gru", "ort_format", "quantize", "stream",
           "validate"]
