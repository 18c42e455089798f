"""Leaving torch: the ONNX export (TorchScript exporter, simplifiers, ORT offline optimization,
DFT compaction) and ``torch.export`` programs with opaque RNN operators (AOTInductor,
Torch-TensorRT)."""
