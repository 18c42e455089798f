"""``validate``: measure the artifact against the fp32 torch model, side by side."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secompile.calibration.audio import looped_clip
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import PassError
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.core.versions import machine_info
from secompile.compiler.distributed.scoring import AudioRules, score_on, score_pair, summarize
from secompile.compiler.runtime.rss_probe import ProbeError, probe_peak_rss, torch_probe_args
from secompile.compiler.runtime.runners import Runner, TorchRunner, make_runner
from secompile.compiler.runtime.streaming import (
    STREAM_FILE,
    StreamSession,
    equivalence,
    measure_latency,
    within_tolerance,
)
from secompile.compiler.runtime.timing import measure_interleaved


@dataclass(frozen=True)
class ValidateConfig(PassConfig):
    """Options of ``validate``: repetitions, batch size for throughput, what to measure
    (``speed=false`` skips latency and throughput: a build for hardware this machine lacks)."""

    repeats: int = 40
    long_repeats: int = 10
    batch: int = 8
    speed: bool = True
    memory: bool = True
    quality: bool = True
    streaming: bool = True
    distribute_min_seconds: float = 300.0

    def check(self) -> None:
        if self.distribute_min_seconds < 0:
            raise ValueError(f"distribute_min_seconds must be >= 0, got "
                             f"{self.distribute_min_seconds}")
        for name in ("repeats", "long_repeats", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _state_bytes(module: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def _state_dict_bytes(module: Any) -> int:
    return len(_state_bytes(module))


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("nan")


class Validate(Pass):
    """Measure speed, memory, size and quality of the artifact against the fp32 torch model.

    Rewrite rules: none; the artifact passes through unchanged (``modified`` is false). Both
    sides run in this process on the same thread count, timed interleaved with a load guard
    (``compiler.runtime.timing``); peak RSS comes from a fresh process per side; quality from the
    evaluation pairs (SI-SDR, PESQ-WB, ESTOI) as absolute values, deltas and SNR buckets.

    With a Ray executor in the context and at least ``distribute_min_seconds`` of evaluation
    audio, the quality scoring runs as Ray tasks split by duration
    (``compiler.distributed.scoring``); the metrics are the ones the serial path gives. Below
    that, starting Ray costs more than it saves (measured: on the 22 shared pairs, 80 s of
    audio, Ray ran at 0.74x the serial speed with its start included;
    ``benchmarks/bench_distributed.py``).

    When an earlier pass wrote a streaming artifact (``model_stream.onnx``), it is proven and
    timed too: streamed against offline output on every evaluation file (max abs error,
    ΔSI-SDR; the pass fails beyond the stream's tolerance), per-hop latency p50/p99 on one
    thread, real-time factor, its cost against the offline artifact on the same audio, and
    the share of hops that miss their deadline (one hop of audio) with every core loaded.
    """

    name = "validate"
    Config = ValidateConfig
    input_formats = ("onnx", "torch")
    summary = "latency p50/p99 (1 s, 10 s), throughput, peak RSS, size, SI-SDR/PESQ/ESTOI deltas"
    checks_parity = False

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        return {
            "evaluation": ctx.evaluation.fingerprint() if ctx.evaluation else None,
            "threads": ctx.threads,
            "machine": machine_info(),
            "baseline": ctx.baseline.content_hash(),
        }

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: ValidateConfig = self.config
        rate = artifact.info.sample_rate
        baseline = TorchRunner(ctx.baseline.module, ctx.threads)
        candidate = make_runner(artifact, ctx.threads)
        pairs = ctx.evaluation.load() if ctx.evaluation else []
        audio = [p.noisy for p in pairs] or [ctx.parity_audio[0]]
        metrics: dict[str, Any] = {"threads": ctx.threads}
        if cfg.speed:
            with ctx.progress(3, "validate: timing (1 s, 10 s, batch)") as bar:
                metrics.update(self._speed(baseline, candidate, audio, rate, cfg, bar.update))
        metrics["size_bytes"] = {
            "baseline": _state_dict_bytes(ctx.baseline.module),
            "artifact": artifact.size_bytes() if artifact.path else _state_dict_bytes(
                artifact.module),
        }
        metrics["size_reduction"] = _ratio(
            metrics["size_bytes"]["baseline"], metrics["size_bytes"]["artifact"])
        if cfg.memory:
            metrics["peak_rss_mb"] = self._memory(artifact, ctx)
            metrics["memory_reduction"] = _ratio(
                metrics["peak_rss_mb"]["baseline"], metrics["peak_rss_mb"]["artifact"])
        if cfg.quality and pairs:
            metrics["quality"] = self._quality(baseline, candidate, artifact, pairs, ctx, cfg)
            metrics["quality"]["eval_set"] = str(ctx.evaluation.root)
            skipped = metrics["quality"]["skipped_files"]
            if skipped:  # the build prints it as a warning; the report lists the files
                names = ", ".join(r["file"] for r in skipped[:3])
                more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
                metrics["warning"] = (f"{len(skipped)} evaluation pair(s) left out of the "
                                      f"quality metrics, silent clean reference: {names}{more}")
        if cfg.streaming and STREAM_FILE in ctx.outputs:
            one_thread = candidate if ctx.threads == 1 else make_runner(artifact, 1)
            metrics["streaming"] = self._streaming(
                StreamSession(ctx.outputs[STREAM_FILE], threads=1), one_thread, ctx, pairs,
                audio)
        return PassResult(artifact, False, metrics)

    def _streaming(self, session: StreamSession, offline: Runner, ctx: PassContext,
                   pairs: list, audio: list[np.ndarray]) -> dict[str, Any]:
        tolerance = 1e-4 if np.isnan(session.tolerance) else session.tolerance
        clips = [p.noisy for p in pairs] or [np.asarray(ctx.parity_audio)[0]]
        source = ctx.torch_model or ctx.baseline  # the model the stream was written from
        proof = equivalence(session, source.module, clips,
                            [p.clean for p in pairs] if pairs else None)
        if not within_tolerance(proof, tolerance):
            raise PassError(self.name, (
                f"{STREAM_FILE} differs from the offline model by {proof['max_abs']:.3g} max "
                f"abs on the evaluation audio ({proof['max_abs_vs_float64']:.3g} from a float64 "
                f"run; tolerance {tolerance:g})"))
        audio_name = "evaluation pairs" if pairs else "parity clip"
        return {
            "equivalence": {**proof, "tolerance": tolerance, "audio": audio_name},
            "latency": measure_latency(session, offline,
                                       looped_clip(audio, 10 * session.sample_rate)[0]),
        }

    def _speed(
        self, baseline: Runner, candidate: Runner, audio: list[np.ndarray], rate: int,
        cfg: ValidateConfig, done: Any = lambda: None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"latency_ms": {}}
        noisy_blocks = loaded_blocks = 0
        for label, seconds, repeats in (("1s", 1, cfg.repeats), ("10s", 10, cfg.long_repeats)):
            clip = looped_clip(audio, seconds * rate)
            timed = measure_interleaved(
                {"baseline": lambda c=clip: baseline(c), "artifact": lambda c=clip: candidate(c)},
                repeats=repeats,
            )
            noisy_blocks += timed.noisy_blocks
            loaded_blocks += timed.loaded_blocks
            out["latency_ms"][label] = {k: s.summary() for k, s in timed.stats.items()}
            out["speedup" if label == "1s" else "speedup_10s"] = round(
                timed.p50_ratio("baseline", "artifact"), 3)
            done()
        batch = np.repeat(looped_clip(audio, rate), cfg.batch, axis=0)
        timed = measure_interleaved(
            {"baseline": lambda: baseline(batch), "artifact": lambda: candidate(batch)},
            repeats=max(5, cfg.repeats // 4),
        )
        noisy_blocks += timed.noisy_blocks
        loaded_blocks += timed.loaded_blocks
        rps = {k: round(cfg.batch / (s.percentile(50) / 1e3), 2) for k, s in timed.stats.items()}
        out["throughput_rps"] = {**rps, "batch": cfg.batch, "clip_seconds": 1}
        out["throughput_speedup"] = _ratio(rps["artifact"], rps["baseline"])
        done()
        out["timing"] = {"blocks_rerun_for_outside_load": noisy_blocks,
                         "blocks_measured_under_outside_load": loaded_blocks}
        return out

    def _memory(self, artifact: Artifact, ctx: PassContext) -> dict[str, float]:
        rate = artifact.info.sample_rate
        try:  # a probe that fails (or a model that cannot be traced for it) fails the pass
            torch_args = torch_probe_args(ctx.baseline.info, ctx.baseline.module, ctx.workdir)
            artifact_args = (["onnx", str(artifact.path)] if artifact.format == "onnx"
                             else torch_args)
            return {
                "baseline": probe_peak_rss(torch_args, ctx.threads, rate),
                "artifact": probe_peak_rss(artifact_args, ctx.threads, rate),
                "seconds_of_audio": 10,
            }
        except ProbeError as exc:
            raise PassError("validate", f"memory probe failed: {exc}") from None

    def _quality(self, baseline: Runner, candidate: Runner, artifact: Artifact, pairs: list,
                 ctx: PassContext, cfg: ValidateConfig) -> dict[str, Any]:
        evaluation = ctx.evaluation
        rate = evaluation.sample_rate
        executor = ctx.executor
        durations = [len(p.noisy) / rate for p in pairs]
        spread = (sum(durations) >= cfg.distribute_min_seconds and len(pairs) > 1
                  and artifact.format == "onnx" and executor.workers > 1)
        if not spread:
            scoring = ctx.progress(len(pairs), "validate: scoring evaluation pairs")
            rows = [score_pair(p.name, p.noisy, p.clean, rate, baseline, candidate,
                               evaluation.min_samples)
                    for p in scoring.wrap(pairs)]
            return {**summarize(rows), "execution": {"executor": "serial", "tasks": 1}}
        root = evaluation.root.resolve()  # workers may run in another working directory
        files = [(p.name, str(root / "noisy" / p.name), str(root / "clean" / p.name))
                 for p in pairs]
        rules = AudioRules(rate, evaluation.allow_resample, evaluation.min_samples)
        rows, tasks = score_on(executor, files, durations, rules, artifact.path.read_bytes(),
                               ctx.baseline.info.source, _state_bytes(ctx.baseline.module),
                               ctx.threads)
        summary = summarize(rows)
        for failed in summary["failed_files"]:  # the driver read them: a worker could not
            ctx.logger.warning("validate: a Ray worker could not score %s: %s",
                               failed["file"], failed["error"])
        return {**summary, "execution": {**executor.describe(), "tasks": tasks}}

