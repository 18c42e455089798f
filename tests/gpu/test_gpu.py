"""On an NVIDIA GPU: CUDA-graph replay, CUDA-event timing, NVML sampling, the AOTInductor and
Torch-TensorRT artifacts, and a whole gpu build. Everything here skips without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from secompile.compiler.app.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs an NVIDIA GPU with CUDA; this machine has none"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (1, -1)), nn.Conv1d(1, 4, 9, padding=4), nn.Tanh(),
                         nn.Conv1d(4, 1, 9, padding=4), nn.Flatten()).cuda().eval()


def test_cuda_graph_replay_matches_the_plain_call() -> None:
    from secompile.compiler.runtime.gpu import CudaGraphRunner

    model = _conv_model()
    x = torch.randn(1, 16000, device="cuda")
    graph = CudaGraphRunner(model, x)
    with torch.inference_mode():
        torch.testing.assert_close(graph(x), model(x))
        y = torch.randn_like(x)
        torch.testing.assert_close(graph(y), model(y))
    with pytest.raises(ValueError, match="captured for"):
        graph(torch.randn(2, 16000, device="cuda"))


def test_cuda_event_latency_and_throughput() -> None:
    from secompile.compiler.runtime.gpu import cuda_latency, throughput

    model = _conv_model()
    x = torch.randn(1, 16000, device="cuda")
    stats = cuda_latency({"a": model, "b": model}, x, repeats=7)
    assert len(stats["a"].samples_ms) == 7 and stats["a"].percentile(50) > 0
    row = throughput(model, x.repeat(8, 1), min_seconds=0.2)
    assert row["rps"] > 0 and row["peak_working_mib"] >= 0


def test_nvml_sampler_sees_the_gpu_busy() -> None:
    from secompile.compiler.runtime.gpu import NvmlSampler, throughput

    with NvmlSampler(period_s=0.01) as sampler:
        throughput(_conv_model(), torch.randn(32, 16000, device="cuda"), min_seconds=0.5)
    if not sampler.available:
        pytest.skip(sampler.reason)
    summary = sampler.samples.summary()
    assert summary["samples"] > 5 and summary["max_percent"] > 0


def test_aot_inductor_fp16_package_on_cuda(tiny, make_ctx) -> None:
    from secompile.passes.aot_inductor import AotInductor, AotInductorConfig

    result = AotInductor(AotInductorConfig(max_frames=800)).run(tiny, make_ctx(tiny))
    assert result.metrics["device"] == "cuda" and result.metrics["precision"] == "fp16"
    assert result.metrics["agreement_db"] >= 30


def test_tensorrt_program_and_op_coverage(tiny, make_ctx) -> None:
    pytest.importorskip("torch_tensorrt", reason="Torch-TensorRT is not installed (gpu extra)")
    from secompile.passes.tensorrt import TensorRt, TensorRtConfig

    result = TensorRt(TensorRtConfig(max_frames=800, require=True)).run(tiny, make_ctx(tiny))
    coverage = result.metrics["op_coverage"]
    assert coverage["engines"] >= 1 and coverage["ops_in_tensorrt"] > 0
    gru = next(r for r in coverage["ops"] if r["op"] == "secompile.gru")
    assert gru["pytorch"] == gru["total"]  # no TensorRT converter: runs in PyTorch


def test_gpu_build_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline = ("fuse-conv-bn,merge-grouped-gru,aot-inductor{max_frames=1500},tensorrt,"
                "export-onnx,fp16,validate-gpu{repeats=10 throughput_seconds=0.3}")
    result = CliRunner().invoke(main, ["build", "--target", "gpu", "--pipeline", pipeline,
                                       "--out", str(out), "--no-ray", "--no-cache"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    entry = report["targets"]["gpu"]
    assert entry["validation"]["status"] == "validated on GPU"
    measured = entry["gpu"]["measured"]
    assert {"fp32-eager", "aot-inductor"} <= set(measured["latency_ms"])
    assert measured["cuda_graph"]["captured"], measured["cuda_graph"]
    assert measured["cuda_graph"]["max_abs_vs_plain_call"] < 1e-3
    assert entry["speedup"] is not None and entry["quality_delta"] is not None
    assert (out / "gpu" / "model_aoti.pt2").is_file() and (out / "gpu" / "model.onnx").is_file()
