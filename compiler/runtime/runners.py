"""Runners: call any artifact form as ``waveform [B, L] -> waveform [B, L]`` with NumPy arrays.

Validation, parity checks, ``secompile enhance`` and the benchmarks all run models through
these, so every side of a comparison is run the same way with the same thread count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Runner(Protocol):
    """A callable model: float32 ``[B, L]`` in, float32 ``[B, L]`` out."""

    def __call__(self, wav: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """Runs a torch module in inference mode on ``threads`` intra-op threads."""

    def __init__(self, module: object, threads: int) -> None:
        import torch

        self.module = module.eval() if hasattr(module, "eval") else module
        self.threads = threads
        self._torch = torch

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        torch = self._torch
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = self.module(torch.from_numpy(np.ascontiguousarray(wav, np.float32)))
            return out.numpy()
        finally:
            torch.set_num_threads(previous)


def session_options(threads: int, memory_pattern: bool = True) -> object:
    """ONNX Runtime session options every secompile measurement uses: ``threads`` intra-op
    threads, one inter-op thread, sequential execution, all graph optimizations, quiet logs.
    ``memory_pattern=False`` turns off ONNX Runtime's per-input-shape memory plan, which keeps
    one more block the size of a call's activations for every input length it has seen
    (measured on 38 s chunks of the default model: 372 MiB peak with it, 283 MiB without)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_pattern = memory_pattern
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class OrtRunner:
    """Runs an ONNX file in an ONNX Runtime CPU session with fixed thread counts."""

    def __init__(
        self,
        path: Path,
        threads: int,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        memory_pattern: bool = True,
    ) -> None:
        import onnxruntime as ort

        options = session_options(threads, memory_pattern)
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(wav, np.float32)}
        return self.session.run(None, feed)[0]


def make_runner(artifact: object, threads: int) -> Runner:
    """A runner for a torch or ONNX :class:`~compiler.artifact.Artifact`."""
    if artifact.format == "torch":
        return TorchRunner(artifact.module, threads)
    if artifact.format == "onnx":
        return OrtRunner(artifact.path, threads)
    raise ValueError(f"no runner for artifact format {artifact.format!r}")


def enhance_each(runner: Runner, clips: list[np.ndarray]) -> list[np.ndarray]:
    """Enhance clips one at a time (batch 1, full length), as a deployed model would."""
    return [runner(clip[None, :])[0] for clip in clips]
