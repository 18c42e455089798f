"""``secompile.PerformanceOptimizer``: the profile -> optimize -> validate loop in three calls.

1. :meth:`PerformanceOptimizer.profile_pipeline` profiles the torch model layer by layer and
   returns the bottlenecks: the fewest layers that take over half the time, each with its time
   share and its *potential* (the share of the total it would give back at its roofline bound).
2. :meth:`PerformanceOptimizer.optimize_component` applies a named strategy (a pipeline of
   passes, see :data:`STRATEGIES`) chosen for that bottleneck, through a real build.
3. :meth:`PerformanceOptimizer.validate_optimization` measures the result against the torch
   model: speedup (interleaved medians), memory saved (a fresh process per side) and whether
   the output still matches (SI-SDR of the artifact's output against the model's).

Strategies act on the whole model, as the passes do: the component names the bottleneck that
motivates one and must be a layer kind the strategy rewrites.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secompile.compiler.app.api import (
    BuildResult,
    ModelRef,
    _model_arg,
    _path,
    build,
    cache_folder,
    demo_wav,
)
from secompile.compiler.core.errors import ConfigError

LEARNED = ("Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "Linear", "GRU", "LSTM")
LOWERING = "fuse-conv-bn,merge-grouped-gru"


@dataclass(frozen=True)
class Strategy:
    """A named way to speed a component up: the pipeline it builds and the layer kinds it
    rewrites (``None``: any, the whole graph)."""

    name: str
    pipeline: str
    summary: str
    kinds: tuple[str, ...] | None = None

    def applies_to(self, kind: str) -> bool:
        """Whether this strategy rewrites layers of ``kind``."""
        return self.kinds is None or kind in self.kinds


STRATEGIES = {s.name: s for s in (
    Strategy("onnx", f"{LOWERING},export-onnx",
             "lower to ONNX Runtime fp32: BatchNorm folded, grouped GRUs merged, the STFT as a "
             "DFT convolution, ORT's graph fusions"),
    Strategy("int8", f"{LOWERING},export-onnx,quantize",
             "calibrated INT8 for convolutions, linear layers and GRUs (refused where it is not "
             "faster or not faithful)", LEARNED),
    Strategy("prune", f"{LOWERING},prune{{macs_reduction=0.25}},export-onnx",
             "remove 25% of the counted MACs by structured pruning, fine-tuned by distillation",
             LEARNED),
)}


@dataclass(frozen=True)
class Bottleneck:
    """One layer that takes a large share of the time.

    ``potential`` is ``time_share * (1 - attained)``: the share of the whole run it would give
    back at its roofline bound (``None`` where its FLOPs are not counted, such as glue code).
    """

    name: str
    kind: str
    time_ms: float
    time_share: float
    potential: float | None
    strategies: tuple[str, ...]


@dataclass(frozen=True)
class Optimization:
    """A strategy applied for a component: the build it ran and the artifact it made."""

    component: str
    strategy: str
    pipeline: str
    build: BuildResult

    @property
    def artifact(self) -> Path:
        """The optimized model (ONNX)."""
        return self.build.artifacts["cpu"]


@dataclass(frozen=True)
class Validation:
    """What an optimization is worth, measured against the torch model on the same audio.

    ``speedup``: p50 of eager over p50 of the artifact, interleaved, same thread count.
    ``memory_saved_mb``/``memory_ratio``: peak RSS of a fresh process serving each side.
    ``agreement_db``: SI-SDR of the artifact's output against the model's; ``quality_match``
    when it reaches ``min_agreement_db``.
    """

    speedup: float
    latency_ms: dict[str, float]
    memory_mb: dict[str, float] | None
    memory_saved_mb: float | None
    memory_ratio: float | None
    agreement_db: float
    min_agreement_db: float
    quality_match: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


class PerformanceOptimizer:
    """Profile a model, optimize its bottleneck with a named strategy, validate the gain.

    >>> opt = secompile.PerformanceOptimizer("default")        # doctest: +SKIP
    >>> top = opt.profile_pipeline()[0]                         # doctest: +SKIP
    >>> done = opt.optimize_component(top.name, "onnx")         # doctest: +SKIP
    >>> opt.validate_optimization(done).speedup                 # doctest: +SKIP

    ``model`` is anything :func:`secompile.build` takes (an ``nn.Module`` too); ``audio`` the
    wav profiled and timed (default: the project's demo clip), ``seconds`` long (looped);
    builds go to ``workdir`` (default: a new temporary folder).
    """

    def __init__(self, model: ModelRef = None, *, weights: str | Path | None = None,
                 audio: str | Path | None = None, seconds: float = 1.0, threads: int = 1,
                 calib: str | Path | None = None, workdir: str | Path | None = None,
                 cache_dir: str | Path | None | bool = True) -> None:
        from secompile.calibration.audio import looped_clip, read_audio
        from secompile.models.registry import load_model

        if not 0.05 <= seconds <= 600:
            raise ConfigError(f"seconds must be within [0.05, 600], got {seconds}")
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.model, self.weights, self.threads = model, _path(weights), threads
        self.calib, self.cache_dir = _path(calib), cache_dir
        self.baseline = load_model(_model_arg(model), self.weights)
        rate = self.baseline.info.sample_rate
        source = _path(audio) or demo_wav()
        wav = read_audio(source, rate, allow_resample=True,
                         min_samples=self.baseline.info.min_samples)
        self.audio = looped_clip([wav], max(round(seconds * rate), self.baseline.info.min_samples))
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="secompile-opt-"))
        self.profile: Any = None

    def profile_pipeline(self, share: float = 0.5) -> list[Bottleneck]:
        """Profile the torch model per layer (``torch.profiler``, one thread) and return the
        fewest layers whose time adds up to over ``share`` of the run, slowest first."""
        from secompile.compiler.analysis.profile import machine_peak, profile_torch

        cache = cache_folder(self.cache_dir)
        peak = machine_peak(cache / "machine.json" if cache else None)
        info = self.baseline.info
        self.profile = profile_torch(self.baseline.module, self.audio, peak, name=info.name,
                                     sample_rate=info.sample_rate, threads=max(2, self.threads))
        return [Bottleneck(r.name, r.kind, r.time_ms, r.share,
                           None if r.attained is None else r.share * (1 - min(r.attained, 1.0)),
                           tuple(n for n, s in STRATEGIES.items() if s.applies_to(r.kind)))
                for r in self.profile.bottlenecks(share)]

    def optimize_component(self, component: str, strategy: str) -> Optimization:
        """Apply ``strategy`` (a name in :data:`STRATEGIES`) for ``component`` (a layer name
        from the profile, or ``"model"``) and build the cpu artifact. ``ConfigError`` for an
        unknown strategy or component, or a strategy that does not rewrite that layer kind."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{strategy}' (known: "
                              f"{', '.join(sorted(STRATEGIES))})")
        chosen = STRATEGIES[strategy]
        if component != "model":
            kinds = self._layer_kinds()
            if component not in kinds:
                shown = ", ".join(list(kinds)[:8])
                raise ConfigError(f"unknown component '{component}' (profiled layers: {shown}"
                                  f"{' ...' if len(kinds) > 8 else ''}; or 'model')")
            if not chosen.applies_to(kinds[component]):
                raise ConfigError(f"strategy '{strategy}' does not rewrite {component} "
                                  f"({kinds[component]}); it rewrites {', '.join(chosen.kinds)}")
        out = self.workdir / f"{strategy}-{len(list(self.workdir.glob(f'{strategy}-*')))}"
        result = build(self.model, targets=("cpu",), out=out, weights=self.weights,
                       calib=self.calib, pipeline=chosen.pipeline, threads=self.threads,
                       cache_dir=self.cache_dir)
        return Optimization(component, strategy, chosen.pipeline, result)

    def _layer_kinds(self) -> dict[str, str]:
        if self.profile is None:
            self.profile_pipeline()
        return {r.name: r.kind for r in self.profile.rows}

    def validate_optimization(self, optimization: Optimization, *, repeats: int = 30,
                              memory: bool = True, min_agreement_db: float = 20.0
                              ) -> Validation:
        """Measure ``optimization`` against the torch model on the optimizer's audio: speedup
        (interleaved, load-checked medians), peak RSS of a fresh process per side, and the
        SI-SDR of the artifact's output against the model's."""
        from secompile.calibration.metrics import si_sdr
        from secompile.compiler.runtime.rss_probe import probe_peak_rss, torch_probe_args
        from secompile.compiler.runtime.runners import OrtRunner, TorchRunner
        from secompile.compiler.runtime.timing import measure_interleaved

        eager = TorchRunner(self.baseline.module, self.threads)
        compiled = OrtRunner(optimization.artifact, self.threads)
        clip = self.audio
        timed = measure_interleaved({"torch": lambda: eager(clip),
                                     "artifact": lambda: compiled(clip)}, repeats=repeats)
        latency = {k: round(s.percentile(50), 4) for k, s in timed.stats.items()}
        reference, output = eager(clip)[0], compiled(clip)[0]
        agreement = float(si_sdr(output.astype(np.float64), reference.astype(np.float64)))
        rss = saved = ratio = None
        if memory:
            rate = self.baseline.info.sample_rate
            args = torch_probe_args(self.baseline.info, self.baseline.module, self.workdir)
            rss = {"torch": probe_peak_rss(args, self.threads, rate),
                   "artifact": probe_peak_rss(["onnx", str(optimization.artifact)],
                                              self.threads, rate)}
            saved = round(rss["torch"] - rss["artifact"], 1)
            ratio = round(rss["torch"] / rss["artifact"], 3)
        return Validation(round(timed.p50_ratio("torch", "artifact"), 3), latency, rss, saved,
                          ratio, round(agreement, 2), min_agreement_db,
                          agreement >= min_agreement_db)
