"""INT8 support for the ``quantize`` pass: the per-layer plan on ONNX graphs and the INT8 GRU
lowering ONNX Runtime lacks (the INT8 layout comes from ``targets.cpu_features``)."""
