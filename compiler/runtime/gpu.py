"""Running and timing compiled models on a CUDA GPU: CUDA-event latency, throughput, CUDA
graphs for fixed-shape chunks, and GPU utilisation sampled through NVML.

Importing this module needs no GPU; every function that runs something does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from secompile.compiler.runtime.timing import TimingStats

Model = Callable[[Tensor], Tensor]


class DeviceRunner:
    """A :class:`compiler.runtime.Runner` for a model on a torch device: numpy ``[B, L]`` in and
    out, so the project's scoring code can compare GPU outputs."""

    def __init__(self, model: Model, device: str) -> None:
        self.model = model
        self.device = device

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(wav, np.float32)).to(self.device)
            return self.model(x).float().cpu().numpy()


class CudaGraphRunner:
    """Replay one fixed-shape call of ``model`` as a captured CUDA graph.

    A streaming server sends chunks of one size; capturing the call once removes the per-kernel
    launch cost that dominates small chunks. Inputs are copied into the captured input buffer;
    the output is a fresh tensor (the graph's own buffer is overwritten on the next replay).
    Raises ``RuntimeError`` naming the cause when the model cannot be captured (it
    synchronizes, allocates from the host, or calls an operator that is not capture-safe).

    An AOTInductor package must be loaded with ``run_single_threaded=True`` to be captured: its
    default multi-model container polls CUDA events on every call, which capture forbids.
    """

    def __init__(self, model: Model, example: Tensor, warmup: int = 3) -> None:
        self.shape = tuple(example.shape)
        self.static_input = example.clone()
        caller = torch.cuda.current_stream()
        stream = torch.cuda.Stream()
        stream.wait_stream(caller)
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):  # allocator and cuBLAS/cuDNN workspaces before capture
                model(self.static_input)
        caller.wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(self.graph, stream=stream):
                self.static_output = model(self.static_input)
        except RuntimeError as exc:
            torch.cuda.set_stream(caller)  # a failed capture_end leaves the capture stream set
            cause = exc.__context__ or exc
            raise RuntimeError(f"CUDA graph capture failed: {str(cause).splitlines()[0]}") \
                from exc

    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape) != self.shape:
            raise ValueError(f"this CUDA graph was captured for {self.shape}, got "
                             f"{tuple(x.shape)}")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone()


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 that is fp32: cuDNN convolutions and cuBLAS matrix products default to TF32 on
    Ampere and newer, which would make the "fp32" reference itself a reduced-precision model.
    The previous settings come back on exit."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_latency(models: dict[str, Model], x: Tensor, repeats: int,
                 warmup: int = 5) -> dict[str, TimingStats]:
    """Per-call latency of each model on ``x`` in ms, measured with CUDA events, the models
    interleaved call by call so that clock and thermal drift hit them alike."""
    stats = {name: TimingStats() for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        torch.cuda.synchronize()
        for _ in range(repeats):
            for name, model in models.items():
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                end.synchronize()
                stats[name].samples_ms.append(start.elapsed_time(end))
    return stats


@dataclass
class UtilisationSamples:
    """GPU utilisation (percent of time a kernel ran) and memory in use, sampled by NVML."""

    utilisation: list[float] = field(default_factory=list)
    memory_used_bytes: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Mean and max utilisation, peak device memory in use, number of samples."""
        if not self.utilisation:
            return {"samples": 0}
        return {"samples": len(self.utilisation),
                "mean_percent": round(float(np.mean(self.utilisation)), 1),
                "max_percent": round(float(np.max(self.utilisation)), 1),
                "peak_memory_used_mib": round(max(self.memory_used_bytes) / 2**20, 1)}


class NvmlSampler:
    """Sample CUDA device ``index``'s utilisation every ``period_s`` on a thread while in the
    block.

    The device is found in NVML by its UUID (NVML numbers GPUs in PCI order and ignores
    ``CUDA_VISIBLE_DEVICES``). ``available`` is false (and ``reason`` says why) when
    nvidia-ml-py is not installed, NVML cannot start, or the device does not report
    utilisation (MIG slices do not); the block then runs unsampled. NVML refreshes its counters
    every 1/6 to 1 s, so consecutive samples may repeat; memory is the whole device's, every
    process included.
    """

    def __init__(self, index: int = 0, period_s: float = 0.05) -> None:
        self.period_s = period_s
        self.samples = UtilisationSamples()
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = _nvml_handle(pynvml, index)
            pynvml.nvmlDeviceGetUtilizationRates(self._handle)  # MIG raises NotSupported here
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
        except Exception as exc:  # noqa: BLE001  (NVMLError has many subclasses)
            self.reason = f"NVML cannot sample this GPU: {exc}"

    @property
    def available(self) -> bool:
        """Whether utilisation can be sampled here."""
        return self.reason is None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            except Exception as exc:  # noqa: BLE001  (NVMLError subclasses)
                self.reason = f"NVML stopped answering: {exc}"
                return
            self.samples.utilisation.append(float(rates.gpu))
            self.samples.memory_used_bytes.append(int(memory.used))
            time.sleep(self.period_s)

    def __enter__(self) -> Self:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None:
            self._nvml.nvmlShutdown()


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle of CUDA device ``index``: by UUID where PyTorch reports one."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else
                                                f"GPU-{text}")
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def throughput(model: Model, batch: Tensor, min_seconds: float = 1.0,
               warmup: int = 3) -> dict[str, float]:
    """Clips per second of ``model`` on ``batch`` ``[B, L]``: calls queued back to back for
    about ``min_seconds`` and synchronized once (a synchronization per call would serialize the
    host's launches with the GPU's work), and the most memory PyTorch's allocator held above
    what was already resident (weights, inputs) while it ran. Memory that a runtime allocates
    itself (TensorRT, ONNX Runtime) is not seen by PyTorch's allocator."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
        start = time.perf_counter()
        model(batch)
        torch.cuda.synchronize()
        one = max(time.perf_counter() - start, 1e-6)
        runs = max(3, int(min_seconds / one))
        start = time.perf_counter()
        for _ in range(runs):
            model(batch)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return {"rps": round(runs * batch.shape[0] / elapsed, 2), "runs": runs,
            "seconds": round(elapsed, 3),
            "peak_working_mib": round((torch.cuda.max_memory_allocated() - resident) / 2**20, 1)}
