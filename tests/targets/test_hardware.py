"""Hardware detection: what the machine has and why the rest is missing, read, not assumed."""

from __future__ import annotations

import torch

from secompile.targets.hardware import CudaDevice, Hardware, describe, detect, package_version


def _machine(**changes) -> Hardware:
    fields = {"torch": "2.11.0", "torch_cuda": "13.0", "cuda_devices": (),
              "cuda_reason": "none here", "mps": False, "xpu": False, "tensorrt": None,
              "torch_tensorrt": None, "nvml": None, "ort_providers": ("CPUExecutionProvider",),
              "cpu_arch": "x86_64", "cpu_int8_kernel": "x86-vnni",
              "cpu_flags": ("avx2", "avx512_vnni")}
    return Hardware(**{**fields, **changes})


def test_detect_agrees_with_torch_and_onnxruntime() -> None:
    import onnxruntime

    hw = detect()
    assert hw.torch == torch.__version__ and hw.torch_cuda == torch.version.cuda
    assert hw.cuda == torch.cuda.is_available()
    assert hw.cuda == (hw.cuda_reason is None)
    assert hw.ort_providers == tuple(onnxruntime.get_available_providers())
    assert hw.cpu_arch and hw.cpu_int8_kernel
    data = hw.as_dict()
    assert set(data) >= {"cuda_devices", "cuda_reason", "tensorrt", "torch_tensorrt",
                         "ort_providers", "mps", "xpu", "nvml"}
    if not hw.cuda:
        assert "CPU-only build" in hw.cuda_reason or "no device" in hw.cuda_reason


def test_describe_names_the_device_or_the_reason() -> None:
    h100 = CudaDevice(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
    assert h100.fp16_tensor_cores and h100.bf16
    assert not CudaDevice(0, "Tesla P100", (6, 0), 16 * 2**30).fp16_tensor_cores
    lines = describe(_machine(cuda_devices=(h100,), cuda_reason=None, tensorrt="10.9.0",
                              nvml="12.575.51"))
    text = "\n".join(lines)
    assert "NVIDIA H100 80GB HBM3, compute capability 9.0, 80.0 GiB" in text
    assert "tensorrt 10.9.0" in text and "nvidia-ml-py 12.575.51" in text
    assert _machine(cuda_devices=(h100,), cuda_reason=None).as_dict()["cuda_devices"][0][
        "capability"] == "9.0"
    text = "\n".join(describe(_machine()))
    assert "cuda    none: none here" in text
    assert "tensorrt not installed" in text and "torch-tensorrt not installed" in text
    assert "onnxruntime providers: CPUExecutionProvider" in text


def test_package_version_is_none_for_a_missing_package() -> None:
    assert package_version("secompile-no-such-package") is None
    assert package_version("onnx") is not None
