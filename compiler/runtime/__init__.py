"""Running artifacts and measuring them: runners (ONNX Runtime, torch), interleaved timing,
the fresh-process memory probe, the parity verifier, the batching server, streaming sessions
and GPU timing."""
