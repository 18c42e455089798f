"""What this machine has to build and run artifacts on: GPUs, their software stacks, CPU features.

Everything is read from the libraries and the operating system when asked, never assumed, and
nothing here needs a GPU to import. Probing is split from reporting so tests can feed a made-up
machine (:func:`describe` takes a :class:`Hardware`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from secompile.targets.cpu_features import detect as detect_cpu


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device as PyTorch sees it."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def fp16_tensor_cores(self) -> bool:
        """Volta (7.0) and newer run FP16 matrix products on tensor cores."""
        return self.capability >= (7, 0)

    @property
    def bf16(self) -> bool:
        """Ampere (8.0) and newer compute in BF16 natively."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Hardware:
    """The accelerators and runtimes found on this machine, and why each missing one is missing.

    ``*_reason`` fields are ``None`` when the thing is there, else the reason it is not usable.
    Versions are ``None`` when the package is not installed.
    """

    torch: str | None
    torch_cuda: str | None  # CUDA version PyTorch was built with, None for a CPU build
    cuda_devices: tuple[CudaDevice, ...]
    cuda_reason: str | None
    mps: bool
    xpu: bool
    tensorrt: str | None
    torch_tensorrt: str | None
    nvml: str | None  # nvidia-ml-py (module pynvml), for GPU utilisation sampling
    ort_providers: tuple[str, ...]
    cpu_arch: str
    cpu_int8_kernel: str
    cpu_flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cuda(self) -> bool:
        """At least one CUDA device is usable."""
        return bool(self.cuda_devices)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for reports and ``secompile targets --json``."""
        data = asdict(self)
        data["cuda_devices"] = [
            {**asdict(d), "capability": f"{d.capability[0]}.{d.capability[1]}",
             "fp16_tensor_cores": d.fp16_tensor_cores, "bf16": d.bf16}
            for d in self.cuda_devices]
        return data


def package_version(distribution: str, module: str | None = None) -> str | None:
    """The installed version of ``distribution`` (``None`` when ``module`` cannot be found)."""
    if importlib.util.find_spec(module or distribution) is None:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _cuda_devices(torch: Any) -> tuple[tuple[CudaDevice, ...], str | None]:
    if torch.version.cuda is None:
        return (), f"PyTorch {torch.__version__} is a CPU-only build (no CUDA runtime)"
    try:
        count = torch.cuda.device_count()
    except Exception as exc:  # noqa: BLE001  (driver errors come in several types)
        return (), f"the CUDA driver could not be queried: {exc}"
    if count == 0:
        return (), (f"PyTorch is built with CUDA {torch.version.cuda} but finds no device "
                    "(no NVIDIA GPU, driver missing, or CUDA_VISIBLE_DEVICES hides it)")
    devices = []
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        devices.append(CudaDevice(index, props.name, (props.major, props.minor),
                                  int(props.total_memory)))
    return tuple(devices), None


def _backend_available(torch: Any, name: str) -> bool:
    backend = getattr(torch.backends, name, None) if name == "mps" else getattr(torch, name, None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # noqa: BLE001  (an unusable backend is an absent one)
        return False


@cache
def detect() -> Hardware:
    """Probe this machine once per process."""
    cpu = detect_cpu()
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        providers = ()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None:
        devices, reason = (), "PyTorch is not installed"
        torch_version = torch_cuda = None
        mps = xpu = False
    else:
        devices, reason = _cuda_devices(torch)
        torch_version, torch_cuda = torch.__version__, torch.version.cuda
        mps, xpu = _backend_available(torch, "mps"), _backend_available(torch, "xpu")
    return Hardware(
        torch=torch_version, torch_cuda=torch_cuda, cuda_devices=devices, cuda_reason=reason,
        mps=mps, xpu=xpu, tensorrt=package_version("tensorrt"),
        torch_tensorrt=package_version("torch-tensorrt", "torch_tensorrt"),
        nvml=package_version("nvidia-ml-py", "pynvml"), ort_providers=providers,
        cpu_arch=cpu.arch, cpu_int8_kernel=cpu.int8_kernel(), cpu_flags=tuple(sorted(cpu.flags)),
    )


def describe(hw: Hardware) -> list[str]:
    """What the machine has, one line per component, with the reason for each missing one."""
    lines = [(f"cpu     {hw.cpu_arch}, INT8 kernel {hw.cpu_int8_kernel}, flags: "
             f"{', '.join(hw.cpu_flags) or 'none of the INT8-relevant ones'}")]
    if hw.cuda:
        for d in hw.cuda_devices:
            lines.append(f"cuda:{d.index}  {d.name}, compute capability {d.capability[0]}."
                         f"{d.capability[1]}, {d.memory_bytes / 2**30:.1f} GiB "
                         f"(CUDA {hw.torch_cuda}, PyTorch {hw.torch})")
    else:
        lines.append(f"cuda    none: {hw.cuda_reason}")
    lines.append(f"mps     {'available' if hw.mps else 'not available'} "
                 "(Apple GPU; no secompile target uses it yet)")
    lines.append(f"xpu     {'available' if hw.xpu else 'not available'} "
                 "(Intel GPU; no secompile target uses it yet)")
    lines.append("tensorrt " + (hw.tensorrt or "not installed (pip install 'secompile[gpu]' on "
                                "a CUDA machine)"))
    lines.append("torch-tensorrt " + (hw.torch_tensorrt or "not installed (the gpu extra)"))
    lines.append("nvml    " + (f"nvidia-ml-py {hw.nvml}" if hw.nvml else
                               "not installed (GPU utilisation is not sampled without it)"))
    lines.append("onnxruntime providers: " + (", ".join(hw.ort_providers) or "onnxruntime "
                                              "is not installed"))
    return lines
