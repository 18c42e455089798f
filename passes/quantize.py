"""``quantize``: calibrated INT8 that is measured faster and sounds the same, or is not shipped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from secompile.calibration.audio import looped_clip
from secompile.calibration.metrics import si_sdr
from secompile.calibration.readers import ClipReader, calibration_clips
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.core.versions import machine_info
from secompile.compiler.quantization.int8_plan import (
    TIERS,
    Layer,
    StaticSettings,
    apply_plan,
    ensure_node_names,
    find_layers,
)
from secompile.compiler.runtime.runners import OrtRunner
from secompile.compiler.runtime.timing import measure_interleaved
from secompile.targets.cpu_features import Int8Layout, detect, int8_layout

METHODS = ("minmax", "entropy", "percentile")
BACKEND = {
    "name": "onnxruntime static QDQ + secompile INT8 GRU lowering",
    "why": ("compared with Intel Neural Compressor's accuracy-aware autotune (PT2E, "
            "X86InductorQuantizer) in benchmarks/bench_int8.py on GTCRN and NSNet2: INC leaves "
            "GRUs, ConvTranspose, LayerNorm and PReLU in fp32, needs a fixed input length, "
            "saves no smaller file (fp32 weights plus quantize ops), lost 1.4 dB (NSNet2) and "
            "3.7 dB (GTCRN) SI-SDR and ran 0.86x (NSNet2) / 1.29x (GTCRN, compiled) its own "
            "torch eager run, while this path keeps ONNX, shrinks NSNet2 3.9x and runs it 1.7x "
            "faster than its fp32 ONNX export at -0.05 dB"),
}
SWITCH = ("auto", "on", "off")


@dataclass(frozen=True)
class QuantizeConfig(PassConfig):
    """Options of ``quantize``.

    ``gru`` and ``io_layers`` cap the tier of GRUs and of the first/last learned layer
    (``int8``, ``weights`` or ``fp32``); ``min_fidelity_db`` is the SI-SDR the INT8 output must
    keep against the fp32 output on every calibration clip (35 dB leaves a margin: on GTCRN a
    plan at 34 dB on DNS3 calibration clips gave 27 dB on VoiceBank-DEMAND files and lost
    0.3-0.4 dB SI-SDR against clean speech); ``min_speedup`` is how much faster than the fp32
    model INT8 must run to ship (0: no speed condition), ``min_size_reduction`` how much
    smaller its file must be.
    """

    method: str = "percentile"
    per_channel: bool = True
    symmetric_activations: bool = False
    reduce_range: str = "auto"
    gru: str = "int8"
    io_layers: str = "weights"
    min_fidelity_db: float = 35.0
    min_speedup: float = 1.1
    min_size_reduction: float = 0.0
    calibration_seconds: float = 4.0
    calibration_clips: int = 16
    gru_min_weights: int = 65536
    timing_repeats: int = 20

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.reduce_range not in SWITCH:
            raise ValueError(f"reduce_range must be one of {SWITCH}, got {self.reduce_range!r}")
        for name in ("gru", "io_layers"):
            if getattr(self, name) not in TIERS:
                raise ValueError(f"{name} must be one of {TIERS}, got {getattr(self, name)!r}")
        if self.min_speedup < 0 or self.min_size_reduction < 0:
            raise ValueError(f"min_speedup and min_size_reduction must be >= 0, got "
                             f"{self.min_speedup} and {self.min_size_reduction}")
        if not self.calibration_seconds > 0 or self.calibration_clips < 1:
            raise ValueError("calibration_seconds must be > 0 and calibration_clips >= 1")
        if self.gru_min_weights < 0 or self.timing_repeats < 3:
            raise ValueError("gru_min_weights must be >= 0 and timing_repeats >= 3")


def _initial_tier(layer: Layer, cfg: QuantizeConfig) -> str:
    """The highest tier the layer can take within the caps that apply to it."""
    caps = ["int8"]
    if layer.role in ("input", "output"):
        caps.append(cfg.io_layers)
    if layer.kind == "gru":
        caps.append(cfg.gru)
    floor = max(TIERS.index(c) for c in caps)
    allowed = [t for t in layer.tiers if TIERS.index(t) >= floor]
    return allowed[0] if allowed else "fp32"


def _keep_fp32(artifact: Artifact, metrics: dict[str, Any], reason: str) -> PassResult:
    """The fp32 model passes through unchanged; the metrics say why."""
    return PassResult(artifact, False, {**metrics, "shipped": "fp32", "reason": reason})


class _Fidelity:
    """SI-SDR of a candidate's output against the fp32 model's, per calibration clip.

    Keeps the fp32 session (``reference``) and the last candidate's (``last``), which the
    speed comparison reuses."""

    def __init__(self, reference: Path, clips: list[np.ndarray], threads: int) -> None:
        self.clips = clips
        self.threads = threads
        self.reference = OrtRunner(reference, threads)
        self.references = [self.reference(c)[0] for c in clips]
        self.last: OrtRunner | None = None

    def __call__(self, candidate: Path) -> list[float]:
        self.last = OrtRunner(candidate, self.threads)
        return [round(si_sdr(self.last(c)[0], ref), 2) for c, ref in zip(
            self.clips, self.references, strict=True)]


class Quantize(Pass):
    """Post-training INT8 for ONNX Runtime on CPUs, decided layer by layer and by measurement.

    Rewrite rules:

    1. The INT8 layout follows the CPU's detected instructions (:mod:`targets.cpu_features`):
       7-bit weights (``reduce_range``) where ``VPMADDUBSW`` would saturate, 8-bit with VNNI or
       ARM dot products.
    2. Every learned layer gets a tier (:mod:`compiler.quantization.int8_plan`): linear and
       convolution layers static QDQ with activation ranges calibrated on ``ctx.calibration`` audio
       (MinMax, Entropy or Percentile; per-channel weights; a grouped ``ConvTranspose`` gets a
       per-tensor weight scale, which avoids ONNX Runtime's per-channel crash on it); GRUs,
       which ONNX Runtime cannot quantize, are lowered to INT8 GEMM + ``Scan``
       (:mod:`compiler.quantization.int8_gru`) or keep fp32 arithmetic with INT8 storage; LSTMs
       get ONNX Runtime's dynamic INT8. The spectral front/back end (computed DFT bases) stays
       fp32, and the first and last learned layers start at ``io_layers`` (INT8 weights, fp32
       activations by default): quantizing them hurts quality most.
    3. Sensitivity: each layer is quantized alone and the output's SI-SDR against the fp32
       output is measured on the calibration clips. While the whole plan's worst clip is below
       ``min_fidelity_db``, the most sensitive layer still quantized drops one tier.
    4. Never slower: the INT8 model and its fp32 input are timed interleaved on the same audio
       and threads; unless INT8 is ``min_speedup`` times faster, the fp32 model is shipped
       (``modified`` false) and the metrics say why; likewise when its file is not
       ``min_size_reduction`` times smaller.
    """

    name = "quantize"
    Config = QuantizeConfig
    input_formats = ("onnx",)
    summary = "calibrated INT8 (static QDQ, INT8 GRUs), per-layer fp32 fallback, never slower"
    checks_parity = False  # INT8 changes the output by design; fidelity is measured instead

    def reads_calibration(self) -> bool:
        return True

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        return {
            "calibration": ctx.calibration.fingerprint() if ctx.calibration else None,
            "threads": ctx.threads,
            "machine": machine_info(),
        }

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: QuantizeConfig = self.config
        if ctx.calibration is None:
            raise ConfigError("quantize needs calibration audio: pass --calib FOLDER")
        source = ctx.pass_dir / "fp32.onnx"
        model = onnx.load(str(artifact.path))
        ensure_node_names(model)
        onnx.save(model, str(source))
        layers, fixed = find_layers(model, cfg.gru_min_weights)
        layout = self._layout(cfg)
        rate = artifact.info.sample_rate
        clips = calibration_clips(ctx.calibration.load(), cfg.calibration_seconds, rate,
                                  cfg.calibration_clips)
        input_name = artifact.metadata.get("input", "noisy")
        calibrating = ctx.progress(len(clips), "quantize: calibration clips")
        settings = StaticSettings(ClipReader(input_name, clips, calibrating.update), cfg.method,
                                  cfg.per_channel, cfg.symmetric_activations, layout,
                                  ctx.pass_dir / "calibration_ranges.json")
        metrics: dict[str, Any] = {
            "cpu": {"kernel": detect().int8_kernel(), "flags": sorted(detect().flags)},
            "backend": BACKEND,
            "layout": layout.as_dict(), "method": cfg.method, "per_channel": cfg.per_channel,
            "calibration": {"clips": len(clips), "seconds": round(
                sum(c.shape[1] for c in clips) / rate, 2)},
            "kept_fp32_always": fixed,
        }
        plan = {layer.name: _initial_tier(layer, cfg) for layer in layers}
        if all(t == "fp32" for t in plan.values()):
            return _keep_fp32(artifact, metrics, "no layer can be quantized")
        fidelity = _Fidelity(source, clips, ctx.threads)
        counter = iter(range(10_000))

        def build(candidate_plan: dict[str, str]) -> Path:
            path = ctx.pass_dir / f"candidate_{next(counter)}.onnx"
            apply_plan(source, path, candidate_plan, layers, settings, ctx.pass_dir)
            return path

        fp32_bytes = artifact.path.stat().st_size
        all_int8 = build(plan)  # calibrates: the ranges are cached for every later plan
        calibrating.close()
        best_case = fp32_bytes / all_int8.stat().st_size  # falling back only adds bytes
        if best_case < cfg.min_size_reduction:
            return _keep_fp32(artifact, metrics, (
                f"even the plan with every layer quantized is only {best_case:.2f}x smaller "
                f"(shipping needs >= {cfg.min_size_reduction}x)"))
        tested = [layer for layer in layers if plan[layer.name] != "fp32"]
        with ctx.progress(len(tested), "quantize: per-layer sensitivity") as bar:
            alone = self._sensitivity(tested, plan, build, fidelity, bar.update)
        plan, final, scores, fallbacks = self._fall_back(layers, plan, all_int8, alone, build,
                                                         fidelity, cfg.min_fidelity_db)
        metrics["layers"] = [
            {"name": layer.name, "kind": layer.kind, "params": layer.params, "role": layer.role,
             "tier": plan[layer.name], "fidelity_alone_db": alone.get(layer.name),
             "notes": layer.notes + fallbacks.get(layer.name, [])}
            for layer in layers]
        metrics["fidelity_db"] = {"min": min(scores), "mean": round(float(np.mean(scores)), 2),
                                  "floor": cfg.min_fidelity_db}
        metrics["size_bytes"] = {"fp32": fp32_bytes,
                                 "int8": final.stat().st_size if final else None}
        if final is None:
            return _keep_fp32(artifact, metrics,
                              f"no INT8 plan keeps {cfg.min_fidelity_db} dB fidelity")
        reduction = metrics["size_bytes"]["fp32"] / metrics["size_bytes"]["int8"]
        if reduction < cfg.min_size_reduction:
            return _keep_fp32(artifact, metrics, (
                f"the INT8 plan that keeps quality is only {reduction:.2f}x smaller (shipping "
                f"needs >= {cfg.min_size_reduction}x)"))
        # the final plan is the last one scored: its session is fidelity.last
        speed = self._speed(fidelity.reference, fidelity.last, clips, rate, ctx.threads, cfg)
        metrics["speed"] = speed
        if cfg.min_speedup and speed["speedup"] < cfg.min_speedup:
            reason = (f"INT8 runs {speed['speedup']:.2f}x the fp32 speed (p50 "
                      f"{speed['int8_p50_ms']:.2f} vs {speed['fp32_p50_ms']:.2f} ms on "
                      f"{speed['clip_seconds']} s, {ctx.threads} thread(s)); shipping needs "
                      f">= {cfg.min_speedup}x")
            return _keep_fp32(artifact, metrics, reason)
        shipped = ctx.pass_dir / "model.onnx"
        final.replace(shipped)
        metrics["shipped"] = "int8"
        metrics["size_reduction"] = round(metrics["size_bytes"]["fp32"] / shipped.stat().st_size,
                                          3)
        metadata = {"precision": "int8", "int8_layout": layout.as_dict()}
        new = artifact.derive(self.name, path=shipped, metadata=metadata)
        return PassResult(new, True, metrics)

    @staticmethod
    def _layout(cfg: QuantizeConfig) -> Int8Layout:
        layout = int8_layout(detect())
        if cfg.reduce_range == "auto":
            return layout
        forced = cfg.reduce_range == "on"
        return Int8Layout(layout.activation_type, layout.weight_type, forced,
                          f"reduce_range={cfg.reduce_range} set in the pipeline "
                          f"(detected: {layout.reason})")

    @staticmethod
    def _sensitivity(layers: list[Layer], plan: dict[str, str], build: Any,
                     fidelity: _Fidelity, done: Callable[[], object]) -> dict[str, float]:
        """Worst-clip fidelity with each of ``layers`` alone at its planned tier."""
        alone = {}
        for layer in layers:
            single = {name: "fp32" for name in plan} | {layer.name: plan[layer.name]}
            alone[layer.name] = min(fidelity(build(single)))
            done()
        return alone

    @staticmethod
    def _fall_back(layers: list[Layer], plan: dict[str, str], candidate: Path,
                   alone: dict[str, float], build: Any, fidelity: _Fidelity, floor: float
                   ) -> tuple[dict[str, str], Path | None, list[float], dict[str, list[str]]]:
        """Demote the most sensitive layer one tier until the worst clip keeps ``floor``;
        ``candidate`` is ``plan`` already built."""
        plan = dict(plan)
        notes: dict[str, list[str]] = {}
        by_layer = {layer.name: layer for layer in layers}
        while True:
            scores = fidelity(candidate)
            if min(scores) >= floor:
                return plan, candidate, scores, notes
            active = [n for n, t in plan.items() if t != "fp32"]
            if not active:
                return plan, None, scores, notes
            worst = min(active, key=lambda n: alone.get(n, np.inf))
            lower = by_layer[worst].demoted(plan[worst])
            notes.setdefault(worst, []).append(
                f"fell back {plan[worst]} -> {lower}: whole-model fidelity {min(scores)} dB < "
                f"{floor} dB and this layer is the most sensitive still quantized "
                f"({alone.get(worst)} dB alone)")
            plan[worst] = lower
            candidate = build(plan)

    @staticmethod
    def _speed(fp32: OrtRunner, int8: OrtRunner, clips: list[np.ndarray], rate: int,
               threads: int, cfg: QuantizeConfig) -> dict[str, Any]:
        seconds = 2
        clip = looped_clip([c[0] for c in clips], seconds * rate)
        runners = {"fp32": fp32, "int8": int8}
        timed = measure_interleaved({k: (lambda r=r: r(clip)) for k, r in runners.items()},
                                    repeats=cfg.timing_repeats)
        return {
            "fp32_p50_ms": round(timed.stats["fp32"].percentile(50), 3),
            "int8_p50_ms": round(timed.stats["int8"].percentile(50), 3),
            "speedup": round(timed.p50_ratio("fp32", "int8"), 3),
            "clip_seconds": seconds, "threads": threads, "runs": cfg.timing_repeats,
            "blocks_rerun_for_outside_load": timed.noisy_blocks,
        }
