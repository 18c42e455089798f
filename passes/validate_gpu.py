"""``validate-gpu``: measure the gpu artifacts against the fp32 PyTorch model on a CUDA GPU."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secompile.calibration.audio import looped_clip
from secompile.compiler.core.artifact import Artifact, file_sha256
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import TargetError
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.core.versions import machine_info
from secompile.compiler.distributed.scoring import score_pair, summarize
from secompile.compiler.lowering.torch_export import AOTI_FILE, TRT_FILE, HopPadded, shape_range
from secompile.compiler.runtime.gpu import (
    CudaGraphRunner,
    DeviceRunner,
    Model,
    NvmlSampler,
    cuda_latency,
    strict_fp32,
    throughput,
)


@dataclass(frozen=True)
class ValidateGpuConfig(PassConfig):
    """Options of ``validate-gpu``: latency repetitions (batch 1, ``clip_seconds`` of audio),
    the batch sizes whose throughput is measured (each for ``throughput_seconds``), whether to
    replay the AOTInductor model as a CUDA graph, whether to score quality."""

    repeats: int = 50
    batches: tuple[int, ...] = (1, 8, 32)
    clip_seconds: float = 1.0
    throughput_seconds: float = 2.0
    cuda_graph: bool = True
    quality: bool = True

    def check(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be positive sizes, got {self.batches}")
        for name in ("clip_seconds", "throughput_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class _OrtCuda:
    """The FP16 ONNX model on ONNX Runtime's CUDA provider, as a tensor-in, tensor-out model."""

    def __init__(self, path: Any) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input: x.cpu().numpy()})
        return torch.from_numpy(out).to(x.device)


def _candidates(artifact: Artifact, ctx: PassContext, hop: int) -> tuple[dict[str, Model],
                                                                         dict[str, str]]:
    """The gpu artifacts this pipeline wrote that run here, and why the others do not."""
    found: dict[str, Model] = {}
    missing: dict[str, str] = {}
    if TRT_FILE in ctx.outputs:
        import torch_tensorrt

        found["tensorrt"] = HopPadded(torch_tensorrt.load(str(ctx.outputs[TRT_FILE])).module(),
                                      hop)
    else:
        missing["tensorrt"] = "no model_trt.ep in this pipeline (tensorrt did not run or apply)"
    if AOTI_FILE in ctx.outputs:
        # registers the RNN operators the package calls
        import secompile.compiler.lowering.torch_export  # noqa: F401

        package = torch._inductor.aoti_load_package(str(ctx.outputs[AOTI_FILE]))
        found["aot-inductor"] = HopPadded(package, hop)
    else:
        missing["aot-inductor"] = "no model_aoti.pt2 in this pipeline"
    import onnxruntime as ort

    if artifact.format != "onnx":
        missing["onnx"] = "the pipeline's artifact is not ONNX"
    elif "CUDAExecutionProvider" not in ort.get_available_providers():
        missing["onnx"] = ("onnxruntime has no CUDAExecutionProvider here (install "
                           "onnxruntime-gpu to time the FP16 ONNX on this GPU)")
    else:
        found["onnx"] = _OrtCuda(artifact.path)
    return found, missing


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


class ValidateGpu(Pass):
    """Measure every gpu artifact of the pipeline against the fp32 eager model on the GPU.

    Rewrite rules: none (``modified`` is false). On CUDA device 0 it times, side by side, the
    fp32 eager model and each artifact that exists and runs here (Torch-TensorRT program,
    AOTInductor package, FP16 ONNX on ONNX Runtime's CUDA provider): latency p50/p99 of one
    ``clip_seconds`` clip with CUDA events, calls interleaved; the AOTInductor package again
    replayed as a CUDA graph (fixed-shape chunks, as a streaming server sends them) with its
    output checked against the plain call; throughput in clips/s at each batch size with the
    allocator's peak memory; GPU utilisation from NVML sampled during the largest batch; and
    SI-SDR/PESQ/ESTOI of each artifact against the fp32 model on the evaluation pairs. The
    first artifact found of TensorRT, AOTInductor, ONNX is the one the summary and the quality
    gates use.
    """

    name = "validate-gpu"
    Config = ValidateGpuConfig
    input_formats = ("onnx", "torch")
    summary = "GPU latency p50/p99 (CUDA events), throughput at batch 1/8/32, NVML, quality"
    checks_parity = False

    def requires_cuda(self) -> bool:
        return True

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        from secompile.targets.hardware import detect

        return {
            "evaluation": ctx.evaluation.fingerprint() if ctx.evaluation else None,
            "machine": machine_info(),
            "gpus": [d.name for d in detect().cuda_devices],
            "baseline": ctx.baseline.content_hash(),
            "artifacts": {name: file_sha256(path) for name, path in sorted(ctx.outputs.items())
                          if name in (AOTI_FILE, TRT_FILE)},
        }

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: ValidateGpuConfig = self.config
        if not torch.cuda.is_available():
            raise TargetError("validate-gpu needs a CUDA GPU; this machine has none")
        from secompile.targets.hardware import detect

        device = next(d for d in detect().cuda_devices if d.index == 0)
        rate = artifact.info.sample_rate
        hop = shape_range(ctx.baseline, 1, 1, 1, 2).hop
        baseline = copy.deepcopy(ctx.baseline.module).to("cuda").eval()
        found, missing = _candidates(artifact, ctx, hop)
        pairs = ctx.evaluation.load() if ctx.evaluation else []
        audio = [p.noisy for p in pairs] or [np.asarray(ctx.parity_audio)[0]]
        clip = torch.from_numpy(looped_clip(audio, int(cfg.clip_seconds * rate))).to("cuda")
        models: dict[str, Model] = {"fp32-eager": baseline, **found}
        with strict_fp32():  # the reference is fp32, not TF32
            metrics = self._measure(models, found, ctx, hop, clip, cfg)
            metrics["not_measured"] = missing
            if cfg.quality and pairs and found:
                metrics["quality_by_artifact"] = {
                    name: {**summarize([score_pair(p.name, p.noisy, p.clean, rate,
                                                   DeviceRunner(baseline, "cuda"),
                                                   DeviceRunner(model, "cuda")) for p in pairs]),
                           "eval_set": str(ctx.evaluation.root),
                           "execution": {"executor": "serial", "tasks": 1, "device": "cuda"}}
                    for name, model in found.items()}
        metrics["device"] = {"name": device.name, "capability": ".".join(map(str,
                                                                             device.capability)),
                             "memory_gib": round(device.memory_bytes / 2**30, 1),
                             "torch": torch.__version__, "cuda": torch.version.cuda,
                             "tf32": "off for every measurement"}
        metrics.update(self._summary(metrics, next(iter(found), None)))
        return PassResult(artifact, False, metrics)

    def _measure(self, models: dict[str, Model], found: dict[str, Model], ctx: PassContext,
                 hop: int, clip: torch.Tensor, cfg: ValidateGpuConfig) -> dict[str, Any]:
        """Latency of every model (and of the CUDA-graph replay) and throughput per batch."""
        graph_note = self._add_cuda_graph(models, ctx, hop, clip, cfg)
        latency = cuda_latency(models, clip, cfg.repeats)
        return {
            "artifacts": sorted(found), "cuda_graph": graph_note,
            "latency_ms": {name: stats.summary() for name, stats in latency.items()},
            "clip_seconds": cfg.clip_seconds,
            "throughput": self._throughput(models, clip, cfg),
        }

    @staticmethod
    def _add_cuda_graph(models: dict[str, Model], ctx: PassContext, hop: int,
                        clip: torch.Tensor, cfg: ValidateGpuConfig) -> dict[str, Any]:
        if not cfg.cuda_graph or AOTI_FILE not in ctx.outputs:
            return {"captured": False, "why": "off" if not cfg.cuda_graph else
                    "no AOTInductor package"}
        # a second instance in single-threaded mode: the default container polls CUDA events
        single = HopPadded(torch._inductor.aoti_load_package(
            str(ctx.outputs[AOTI_FILE]), run_single_threaded=True), hop)
        x = clip[None, :] if clip.dim() == 1 else clip
        try:
            graph = CudaGraphRunner(single, x)
        except RuntimeError as exc:
            return {"captured": False, "why": str(exc)}
        with torch.inference_mode():
            max_abs = float((graph(x) - models["aot-inductor"](x)).abs().max())
        models["aot-inductor+cuda-graph"] = graph
        return {"captured": True, "shape": list(x.shape), "max_abs_vs_plain_call": max_abs}

    @staticmethod
    def _throughput(models: dict[str, Model], clip: torch.Tensor,
                    cfg: ValidateGpuConfig) -> dict[str, Any]:
        rows: dict[str, Any] = {}
        largest = max(cfg.batches)
        for name, model in models.items():
            if name.endswith("cuda-graph"):
                continue  # captured for batch 1 only
            rows[name] = {}
            for size in cfg.batches:
                batch = clip.reshape(1, -1).repeat(size, 1)
                try:
                    if size == largest:
                        with NvmlSampler() as sampler:
                            row = throughput(model, batch, cfg.throughput_seconds)
                        row["gpu_utilisation"] = (sampler.samples.summary() if sampler.available
                                                  else {"samples": 0, "why": sampler.reason})
                    else:
                        row = throughput(model, batch, cfg.throughput_seconds)
                except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. beyond max_batch
                    row = {"error": str(exc).splitlines()[0]}
                rows[name][str(size)] = row
        return rows

    @staticmethod
    def _summary(metrics: dict[str, Any], primary: str | None) -> dict[str, Any]:
        """The headline numbers in the shape the report's summary table and gates read."""
        if primary is None:
            return {"primary": None}
        latency = metrics["latency_ms"]
        sizes = [b for b, row in metrics["throughput"][primary].items()
                 if "rps" in row and "rps" in metrics["throughput"]["fp32-eager"].get(b, {})]
        if not sizes:
            return {"primary": primary,
                    "speedup": _ratio(latency["fp32-eager"]["p50"], latency[primary]["p50"]),
                    "quality": (metrics.get("quality_by_artifact") or {}).get(primary)}
        largest = max(sizes, key=int)
        rps = {"baseline": metrics["throughput"]["fp32-eager"][largest]["rps"],
               "artifact": metrics["throughput"][primary][largest]["rps"],
               "batch": int(largest), "clip_seconds": metrics["clip_seconds"]}
        quality = (metrics.get("quality_by_artifact") or {}).get(primary)
        return {
            "primary": primary,
            "speedup": _ratio(latency["fp32-eager"]["p50"], latency[primary]["p50"]),
            "throughput_speedup": _ratio(rps["artifact"], rps["baseline"]),
            "throughput_rps": rps,
            "quality": quality,
        }
