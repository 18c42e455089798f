"""The gpu target on a machine without a CUDA GPU: a clear refusal, or, when allowed, the FP16
ONNX alone, quality-checked with FP16 simulated on the CPU and marked unvalidated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from secompile.compiler.app.cli import main
from secompile.compiler.core.errors import TargetError
from secompile.passes.aot_inductor import AotInductor, AotInductorConfig
from secompile.passes.tensorrt import TensorRt
from secompile.passes.validate_gpu import ValidateGpu
from secompile.targets import TARGETS, require_available, require_cuda_passes

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_gpu_target_declares_its_pipelines() -> None:
    gpu = TARGETS["gpu"]
    for name in ("aot-inductor", "tensorrt", "export-onnx", "fp16", "validate-gpu"):
        assert name in gpu.default_pipeline and gpu.supports(name)
    assert "validate-gpu" not in gpu.cpu_only_pipeline and "fp16" in gpu.cpu_only_pipeline
    assert TARGETS["cpu"].cpu_only_pipeline is None


@no_gpu
def test_refusal_names_the_reason_and_the_way_out() -> None:
    gpu = TARGETS["gpu"]
    with pytest.raises(TargetError, match="no CUDA GPU.*--allow-cpu-only-artifacts"):
        require_available(gpu)
    assert "no CUDA GPU" in require_available(gpu, allow_cpu_only=True)
    assert require_available(TARGETS["cpu"], allow_cpu_only=True) is None


@no_gpu
@pytest.mark.parametrize("gpu_pass", [AotInductor(), TensorRt(), ValidateGpu()])
def test_passes_that_need_cuda_are_refused_before_work(gpu_pass) -> None:
    with pytest.raises(TargetError, match=f"pass '{gpu_pass.name}'.*needs a CUDA GPU"):
        require_cuda_passes(TARGETS["gpu"], [gpu_pass])
    require_cuda_passes(TARGETS["gpu"], [AotInductor(AotInductorConfig(device="cpu"))])


@no_gpu
def test_cli_refuses_gpu_target_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli("build", "--target", "gpu", "--out", str(out), "--no-ray", "--no-cache")
    assert result.exit_code == 2
    assert "target 'gpu' cannot be built on this machine: no CUDA GPU" in result.output
    assert not out.exists()
    pipeline = "fuse-conv-bn,aot-inductor,export-onnx"
    result = _cli("build", "--target", "gpu", "--pipeline", pipeline, "--out", str(out),
                  "--allow-cpu-only-artifacts", "--no-ray", "--no-cache")
    assert result.exit_code == 2 and "pass 'aot-inductor'" in result.output
    assert not out.exists()


@no_gpu
def test_cpu_only_build_ships_fp16_onnx_marked_unvalidated(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli("build", "--target", "gpu", "--out", str(out), "--allow-cpu-only-artifacts",
                  "--no-ray", "--no-cache", "--quiet")
    assert result.exit_code == 0, result.output
    assert "UNVALIDATED" in result.output
    manifest = json.loads((out / "gpu" / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "unvalidated"
    assert "no CUDA GPU" in manifest["validation"]["why"]
    model = onnx.load(str(out / "gpu" / "model.onnx"))
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in model.graph.input] == [float32]
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [float32]
    assert any(t.data_type == float16 for t in model.graph.initializer)
    report = json.loads((out / "report.json").read_text())
    entry = report["targets"]["gpu"]
    assert entry["speedup"] is None and entry["latency_ms"] is None  # nothing timed on a CPU
    assert entry["quality_delta"]["si_sdr"] > -0.05  # FP16 simulated: no audible loss
    assert entry["gpu"]["fp16_onnx"]["agreement_db"] >= 40
    assert np.isfinite(entry["size_reduction"]) and entry["size_reduction"] > 1.5
    markdown = (out / "report.md").read_text()
    assert "**Unvalidated:**" in markdown and "FP16 ONNX:" in markdown


def test_targets_command_lists_machine_and_reasons() -> None:
    result = _cli("targets", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["machine"]["torch"] == torch.__version__
    gpu = data["targets"]["gpu"]
    assert gpu["available"] == torch.cuda.is_available()
    assert gpu["cpu_only_pipeline"].startswith("fuse-conv-bn")
    text = _cli("targets").output
    assert "machine:" in text and "cuda" in text and "gpu" in text


def test_cpu_aot_inductor_package_ships_next_to_the_onnx_and_is_cached(tmp_path: Path) -> None:
    """The package is a side file of the build (copied, listed in the manifest with its
    sha256), and a second build serves the pass from the cache with the same bytes."""
    pipeline = ("fuse-conv-bn,aot-inductor{device=cpu precision=fp32 max_frames=1000},"
                "export-onnx")
    manifests = []
    for run in ("first", "second"):
        out = tmp_path / run
        result = _cli("build", "--target", "cpu", "--pipeline", pipeline, "--out", str(out),
                      "--cache-dir", str(tmp_path / "cache"), "--no-ray", "--quiet")
        assert result.exit_code == 0, result.output
        assert (out / "cpu" / "model_aoti.pt2").is_file()
        manifests.append(json.loads((out / "cpu" / "manifest.json").read_text()))
    (first,), (second,) = ([f for f in m["side_files"] if f["file"] == "model_aoti.pt2"]
                           for m in manifests)
    assert first["sha256"] == second["sha256"] and first["size_bytes"] > 0
    assert "aot-inductor" in result.output  # cache hits are listed
