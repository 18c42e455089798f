"""What the gpu passes measure reaches report.json and report.md, checked on any machine with
metrics shaped exactly as ``validate-gpu`` writes them; and the CPU-safe parts of the GPU
runtime."""

from __future__ import annotations

from pathlib import Path

import torch

from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.manager import PipelineRun
from secompile.compiler.distributed.scoring import summarize
from secompile.compiler.reporting.report import (
    gpu_entry,
    render_markdown,
    target_entry,
    validation_entry,
)
from secompile.compiler.runtime.gpu import NvmlSampler, strict_fp32
from secompile.compiler.runtime.timing import TimingStats
from secompile.passes.validate_gpu import ValidateGpu


def _quality() -> dict:
    rows = [{"file": f"f{i}.wav", "input_snr_db": snr,
             "noisy": {"si_sdr": 5.0, "pesq": 1.5, "stoi": 0.7},
             "baseline": {"si_sdr": 12.0, "pesq": 2.5, "stoi": 0.85},
             "artifact": {"si_sdr": 11.99, "pesq": 2.49, "stoi": 0.85},
             "max_abs_vs_baseline": 1e-3}
            for i, snr in enumerate((2.0, 7.0, 12.0))]
    return {**summarize(rows), "eval_set": "/data/vbdemand",
            "execution": {"executor": "serial", "tasks": 1, "device": "cuda"}}


def _gpu_metrics() -> dict:
    latency = {name: TimingStats([p50, p50 * 1.1, p50 * 1.3]).summary()
               for name, p50 in (("fp32-eager", 4.0), ("aot-inductor", 1.0),
                                 ("aot-inductor+cuda-graph", 0.5))}
    row = {"rps": 100.0, "runs": 50, "seconds": 0.5, "peak_working_mib": 12.0}
    metrics = {
        "artifacts": ["aot-inductor"], "cuda_graph": {"captured": True, "shape": [1, 16000],
                                                      "max_abs_vs_plain_call": 0.0},
        "latency_ms": latency, "clip_seconds": 1.0,
        "throughput": {"fp32-eager": {"1": row, "32": {**row, "rps": 400.0}},
                       "aot-inductor": {"1": {**row, "rps": 300.0},
                                        "32": {**row, "rps": 2000.0, "gpu_utilisation": {
                                            "samples": 20, "mean_percent": 91.0,
                                            "max_percent": 99.0,
                                            "peak_memory_used_mib": 900.0}}}},
        "not_measured": {"tensorrt": "not installed"},
        "quality_by_artifact": {"aot-inductor": _quality()},
        "device": {"name": "NVIDIA H100", "capability": "9.0", "memory_gib": 79.1,
                   "torch": "2.11.0", "cuda": "13.0", "tf32": "off for every measurement"},
    }
    metrics.update(ValidateGpu._summary(metrics, "aot-inductor"))
    return metrics


def _run(records: list[dict]) -> PipelineRun:
    info = ModelInfo(name="m", sample_rate=16000, source={"model": "default", "weights": None})
    art = Artifact("onnx", info, path=Path("model.onnx"))
    return PipelineRun(art, "p", records=[{"cache": "off", "modified": False, "seconds": 1.0,
                                           **r} for r in records])


def test_validate_gpu_metrics_fill_the_summary_gates_and_markdown() -> None:
    metrics = _gpu_metrics()
    assert metrics["speedup"] == 4.0 and metrics["throughput_speedup"] == 5.0
    aoti = {"file": "model_aoti.pt2", "precision": "fp16", "agreement_db": 55.0,
            "size_bytes": 1000}
    trt = {"skipped": "Torch-TensorRT is not importable"}
    run = _run([{"name": "aot-inductor", "metrics": aoti}, {"name": "tensorrt", "metrics": trt},
                {"name": "validate-gpu", "metrics": metrics}])
    entry = target_entry("gpu", run, "gpu/model.onnx")
    assert entry["speedup"] == 4.0 and entry["quality_delta"]["si_sdr"] < 0
    assert entry["validation"] == {"status": "validated on GPU", "device": "NVIDIA H100"}
    assert entry["gpu"]["measured"] is metrics and entry["latency_ms"] is None
    report = {"baseline": {"latency_ms": {"p50": None}}, "model": {"name": "m"},
              "created": "now", "machine": {"cpu": "x", "cores": 2}, "secompile": "0",
              "targets": {"gpu": entry}}
    text = render_markdown(report)
    assert "| aot-inductor+cuda-graph | 0.550 |" in text
    assert "Measured on NVIDIA H100" in text and "91" in text
    assert "Torch-TensorRT: not built: Torch-TensorRT is not importable." in text
    assert "Quality on 3 pairs from `/data/vbdemand`" in text


def test_validation_status_without_gpu_or_validate() -> None:
    assert validation_entry(_run([]), None)["status"] == "not validated"
    assert validation_entry(_run([]), "no CUDA GPU")["status"] == "unvalidated"
    assert gpu_entry(_run([])) is None


def test_strict_fp32_restores_the_tf32_switches() -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with strict_fp32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_nvml_sampler_says_why_it_cannot_sample() -> None:
    with NvmlSampler() as sampler:
        pass
    if sampler.available:  # a machine with a GPU and nvidia-ml-py
        return
    assert sampler.reason and sampler.samples.summary() == {"samples": 0}
