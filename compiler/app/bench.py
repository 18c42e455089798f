"""Serving benchmark: the artifact against the torch eager model it was built from, as a
service under load, side by side in one run (``secompile bench``).

What one run measures, for each side (torch eager, the ONNX artifact):

* **batch-1 latency** p50/p90/p99 of requests run back to back, both sides interleaved with
  the load guard of :mod:`compiler.runtime.timing`, and the real-time factor (p50 / request length);
* **throughput at a latency SLO**: a :class:`BatchingServer` (a thread pool of model
  instances, a bounded request queue with backpressure, dynamic batching) is driven by an
  open-loop load generator (:func:`run_load`); :func:`search_best` looks for the serving
  configuration (thread split workers x intra-op threads, largest batch) and the highest
  offered rate whose p99 latency stays within the SLO, by measured trials under a time budget;
* **peak RSS** of a fresh process serving one request (``compiler.runtime.rss_probe``, as
  ``validate`` measures it).

The best configuration of each side is then re-run, both sides interleaved (A, B, A, B...), and
the medians of those confirmation runs are the headline: requests/s at the SLO and the ratio
artifact / torch.

The server and the load generator are :mod:`compiler.runtime.serving`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secompile.compiler.core.errors import ConfigError, ModelError
from secompile.compiler.runtime.runners import Runner
from secompile.compiler.runtime.serving import BatchingServer, LoadResult, run_load
from secompile.compiler.runtime.timing import measure_interleaved, other_load

# Default SLO: a service enhancing 1 s chunks (voice messages, call-centre audio, a chunked
# near-real-time pipeline) should add well under the chunk length; 100 ms p99 is 10% of a 1 s
# request and keeps the total inside the ~150 ms one-way delay ITU-T G.114 allows for speech.
DEFAULT_SLO_MS = 100.0
DEFAULT_BATCHES = (1, 2, 4, 8)

RunnerFactory = Callable[[int, int], list[Runner]]
"""``(workers, intra_threads) -> one runner per worker`` for one side of the comparison."""

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ----------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class ServeConfig:
    """One serving configuration: ``workers`` model instances with ``intra_threads`` threads
    each, batches of at most ``max_batch`` requests, waiting up to ``max_wait_ms`` to fill one."""

    workers: int
    intra_threads: int
    max_batch: int
    max_wait_ms: float

    @property
    def label(self) -> str:
        """Short form, e.g. ``2x1 b4 w10ms``: workers x threads, batch, batching wait."""
        return (f"{self.workers}x{self.intra_threads} b{self.max_batch} "
                f"w{self.max_wait_ms:g}ms")


@dataclass
class Trial:
    """One measured load trial of the search."""

    config: ServeConfig
    result: LoadResult
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"config": self.config.label, "passed": self.passed, **self.result.summary()}


@dataclass
class SearchResult:
    """The best configuration found and the trial that proved it (``None``: no configuration
    met the SLO at any rate tried), the service times measured, every trial."""

    best: ServeConfig | None
    best_result: LoadResult | None
    service_ms: dict[str, float]
    trials: list[Trial]
    seconds: float
    reason: str | None = None

    @property
    def rps(self) -> float:
        """The offered rate of the best passing trial; 0 when none passed."""
        return self.best_result.offered_rps if self.best_result else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "best": asdict(self.best) | {"label": self.best.label} if self.best else None,
            "rps": round(self.rps, 2),
            "best_trial": self.best_result.summary() if self.best_result else None,
            "service_ms": self.service_ms,
            "trials": [t.as_dict() for t in self.trials],
            "seconds": round(self.seconds, 2),
            "reason": self.reason,
        }


def thread_splits(cores: int) -> list[tuple[int, int]]:
    """Every ``(workers, intra_threads)`` whose product is ``cores``: ``N x 1`` ... ``1 x N``."""
    return [(cores // t, t) for t in range(1, cores + 1) if cores % t == 0]


def service_times(factory: RunnerFactory, clip: np.ndarray, threads: Sequence[int],
                  batches: Sequence[int], slo_ms: float, reps: int = 5) -> dict[tuple[int, int],
                                                                                 float]:
    """Median time (ms) of one call of a single instance per ``(threads, batch)``, after one
    warm-up call. Batches are tried in increasing size and stop at the first whose single
    call already exceeds ``slo_ms`` (larger ones can only be slower)."""
    out: dict[tuple[int, int], float] = {}
    for t in threads:
        runner = factory(1, t)[0]
        for b in sorted(batches):
            wav = np.repeat(clip[None, :], b, axis=0)
            _call(runner, wav)
            samples = []
            for _ in range(reps):
                t0 = time.perf_counter()
                _call(runner, wav)
                samples.append((time.perf_counter() - t0) * 1e3)
            out[(t, b)] = float(np.median(samples))
            if out[(t, b)] > slo_ms:
                break
    return out


TRIAL_REQUESTS = 200
OUTSIDE_LOAD_LIMIT = 0.12  # share of the CPU other processes may take during a trial
OUTSIDE_LOAD_RETRIES = 2


def _trial_seconds(rate: float) -> float:
    """A trial of :data:`TRIAL_REQUESTS` requests at ``rate``, whatever the side: a p99 from
    fewer requests is biased low, so a slower side given fewer requests per trial would be
    judged more leniently."""
    return TRIAL_REQUESTS / max(rate, 1e-9)


def search_best(
    factory: RunnerFactory,
    clip: np.ndarray,
    slo_ms: float = DEFAULT_SLO_MS,
    cores: int = 1,
    budget_s: float = 30.0,
    batches: Sequence[int] = DEFAULT_BATCHES,
    max_wait_ms: float | None = None,
    queue_size: int = 64,
    trial_s: float | None = None,
    max_trials_per_config: int = 6,
    seed: int = 0,
    log: Log = _quiet,
) -> SearchResult:
    """Find the configuration and offered rate with the most requests/s whose p99 latency is
    within ``slo_ms``, by measured trials, in about ``budget_s`` seconds.

    1. Measure the service time ``s(t, b)`` of one call per thread count and batch size.
    2. Each configuration ``w x t, batch b`` whose single call fits the SLO gets an optimistic
       capacity ``w * b / s(t, b)`` (perfect scaling, full batches); configurations are tried
       from the most promising, and one whose optimistic capacity is not 20% above the best
       measured rate is skipped (the slack absorbs noise in the service times).
    3. Per configuration, the offered rate starts at 70% of that capacity, ramps up x1.35
       while trials pass and bisects (geometrically) between the highest passing and the
       lowest failing rate until they are within 8%; a configuration failing at 2% of its
       capacity is infeasible.

    ``max_wait_ms`` (the batching wait) defaults to 10% of the SLO. Every trial offers
    :data:`TRIAL_REQUESTS` requests, so its length follows from the rate; ``trial_s`` (default:
    from the budget, 0.3-2 s) is only the estimate of a trial's length used to decide whether
    another configuration fits the budget. The budget is checked before each trial, but until
    some trial passes the search goes on up to 3x the budget (failing trials stop early, so
    this is cheap): a side reads 0 requests/s only when no rate down to 2% of a
    configuration's capacity met the SLO.
    """
    t_start = time.perf_counter()
    deadline = t_start + budget_s
    wait_ms = slo_ms * 0.1 if max_wait_ms is None else max_wait_ms
    splits = thread_splits(cores)
    service = service_times(factory, clip, sorted({t for _, t in splits}), batches, slo_ms)
    service_ms = {f"t{t}b{b}": round(ms, 3) for (t, b), ms in sorted(service.items())}
    log(f"  service times (ms): {service_ms}")
    candidates: list[tuple[float, ServeConfig]] = []
    for workers, threads in splits:
        for b in batches:
            ms = service.get((threads, b))
            if ms is None or ms > slo_ms:
                continue
            wait = wait_ms if b > 1 else 0.0
            candidates.append((workers * b / (ms / 1e3),
                               ServeConfig(workers, threads, b, wait)))
    candidates.sort(key=lambda c: (-c[0], c[1].max_batch))
    if not candidates:
        fastest = min(service.values())
        return SearchResult(None, None, service_ms, [], time.perf_counter() - t_start,
                            reason=f"one request alone takes {fastest:.1f} ms, above the "
                                   f"{slo_ms:g} ms SLO")
    remaining = deadline - time.perf_counter()
    base_s = trial_s or min(max(remaining / 12, 0.3), 2.0)
    trials: list[Trial] = []
    best: tuple[ServeConfig, LoadResult] | None = None
    for capacity, config in candidates:
        best_rps = best[1].offered_rps if best else 0.0
        if capacity <= best_rps * 1.2:
            log(f"  skip {config.label}: at most {capacity:.1f} rps, measured {best_rps:.1f}")
            continue
        # until a rate passes, the search may run past its budget (up to 3x): a side is
        # never reported at 0 requests/s only because its budget ran out
        if best is not None and time.perf_counter() + base_s > deadline:
            break
        if time.perf_counter() + base_s > t_start + 3 * budget_s:
            break
        found = _search_rate(factory, clip, config, capacity, slo_ms, queue_size, base_s,
                             (deadline, t_start + 3 * budget_s), best is not None,
                             max_trials_per_config, seed, trials, log)
        if found is not None and (best is None or found.offered_rps > best[1].offered_rps):
            best = (config, found)
    lowest = min((t.result.offered_rps for t in trials), default=0.0)
    reason = None if best else (f"no configuration met p99 <= {slo_ms:g} ms at any rate tried "
                                f"({len(trials)} trials, down to {lowest:.1f} requests/s)")
    return SearchResult(best[0] if best else None, best[1] if best else None, service_ms,
                        trials, time.perf_counter() - t_start, reason)


def _ms(result: LoadResult) -> str:
    """p99 for a log line: ms, or why there is none."""
    p99 = result.latency(99)
    return "over the SLO (stopped early)" if math.isinf(p99) else f"{p99:.1f} ms"


def warm_up(runners: list[Runner], clip: np.ndarray, max_batch: int) -> None:
    """One call of every runner at every batch size dynamic batching can form (PyTorch's first
    call at a new size is slower), turning a model that cannot take such a batch into a
    :class:`ModelError` naming it."""
    for runner in runners:
        for size in range(1, max_batch + 1):
            _call(runner, np.repeat(clip[None, :], size, axis=0))


def _call(runner: Runner, wav: np.ndarray) -> np.ndarray:
    try:
        return runner(wav)
    except Exception as exc:  # noqa: BLE001  (ORT and torch raise their own types)
        raise ModelError(f"the model failed on a batch of shape {list(wav.shape)}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None


def _measured_load(server: BatchingServer, clip: np.ndarray, rate: float, duration_s: float,
                   seed: int, slo_ms: float) -> LoadResult:
    """:func:`run_load`, with the share of the CPU other processes used meanwhile."""
    for _ in range(1 + OUTSIDE_LOAD_RETRIES):  # a trial under another process's load is redone
        box: list[LoadResult] = []
        load = other_load(lambda box=box: box.append(run_load(server, clip, rate, duration_s,
                                                              seed, slo_ms)))
        box[0].outside_load = load
        if load <= OUTSIDE_LOAD_LIMIT:
            break
    return box[0]


def _search_rate(factory: RunnerFactory, clip: np.ndarray, config: ServeConfig,
                 capacity: float, slo_ms: float, queue_size: int, base_s: float,
                 deadlines: tuple[float, float], side_passed: bool, max_trials: int,
                 seed: int, trials: list[Trial], log: Log) -> LoadResult | None:
    """The best passing trial of one configuration (see :func:`search_best`), or None.
    ``deadlines``: the side's budget, which applies once the side has a passing trial
    (``side_passed`` or one here), and the hard limit that applies before."""
    runners = factory(config.workers, config.intra_threads)
    warm_up(runners, clip, config.max_batch)  # fresh instances: first calls allocate
    passed_rate, failed_rate = 0.0, math.inf
    best: LoadResult | None = None
    rate = 0.7 * capacity
    with BatchingServer(runners, config.max_batch, config.max_wait_ms, queue_size) as server:
        for _ in range(max_trials):
            duration = _trial_seconds(rate)
            deadline = deadlines[0] if side_passed or best is not None else deadlines[1]
            if trials and time.perf_counter() + duration > deadline:
                break
            result = _measured_load(server, clip, rate, duration, seed + len(trials), slo_ms)
            load = result.outside_load
            ok = result.meets(slo_ms)
            trials.append(Trial(config, result, ok))
            log(f"  {config.label}: offered {rate:.1f} rps -> {result.achieved_rps:.1f} rps, "
                f"p99 {_ms(result)}, mean batch "
                f"{np.mean(result.batch_sizes) if result.batch_sizes else 0:.2f}, "
                f"backpressure {result.backpressure}, {'pass' if ok else 'FAIL'}"
                f", other load {load:.0%}")
            if result.failed and not result.completed:
                raise ModelError(f"the model fails on every request: {result.errors[0]}")
            if ok:
                passed_rate = max(passed_rate, rate)
                if best is None or result.offered_rps > best.offered_rps:
                    best = result
            else:
                failed_rate = min(failed_rate, rate)
            if math.isinf(failed_rate):
                if rate >= 1.2 * capacity:
                    break
                rate = min(rate * 1.35, 1.2 * capacity)
            elif passed_rate == 0.0:
                rate = failed_rate * 0.5
                if rate < 0.02 * capacity:
                    break
            else:
                if failed_rate / passed_rate <= 1.08:
                    break
                rate = math.sqrt(passed_rate * failed_rate)
    return best


def confirm(sides: dict[str, tuple[RunnerFactory, ServeConfig, float]], clip: np.ndarray,
            slo_ms: float, rounds: int, queue_size: int = 64,
            seed: int = 1000, log: Log = _quiet) -> dict[str, list[LoadResult]]:
    """Re-run each side's best configuration at its found rate ``rounds`` times, the sides
    interleaved (A, B, A, B...) so a slow period of the machine hits both alike."""
    servers: dict[str, BatchingServer] = {}
    results: dict[str, list[LoadResult]] = {name: [] for name in sides}
    try:
        for name, (factory, config, _) in sides.items():
            runners = factory(config.workers, config.intra_threads)
            warm_up(runners, clip, config.max_batch)
            servers[name] = BatchingServer(runners, config.max_batch, config.max_wait_ms,
                                           queue_size)
            servers[name].start()
        for r in range(rounds):
            names = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in names:
                _, config, rate = sides[name]
                result = _measured_load(servers[name], clip, rate,
                                        _trial_seconds(rate), seed + r, slo_ms)
                results[name].append(result)
                log(f"  confirm {name} {config.label}: offered {rate:.1f} rps -> "
                    f"{result.achieved_rps:.1f} rps, p99 {_ms(result)}, "
                    f"other load {result.outside_load:.0%}")
    finally:
        for server in servers.values():
            server.stop()
    return results


# --------------------------------------------------------------------------- the whole bench


@dataclass(frozen=True)
class BenchOptions:
    """What ``secompile bench`` was asked for (see the CLI's help for each)."""

    slo_ms: float = DEFAULT_SLO_MS
    budget_s: float = 60.0
    cores: int = 1
    request_seconds: float = 1.0
    threads: int = 1
    repeats: int = 30
    batches: tuple[int, ...] = DEFAULT_BATCHES
    max_wait_ms: float | None = None
    queue_size: int = 64
    confirm_rounds: int = 3
    rss: bool = True
    seed: int = 0

    def check(self) -> None:
        """Reject impossible settings with a :class:`ConfigError`."""
        if self.slo_ms <= 0 or self.budget_s <= 0 or self.request_seconds <= 0:
            raise ConfigError("--slo-ms, --budget-seconds and --request-seconds must be > 0")
        if self.cores < 1 or self.threads < 1 or self.repeats < 1 or self.queue_size < 1:
            raise ConfigError("--cores, --threads, --repeats and --queue-size must be >= 1")
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {self.batches}")


def baseline_source(artifact: Path, model: str | None = None,
                    weights: Path | None = None) -> dict[str, Any]:
    """The torch model ``artifact`` was built from, as ``{"model", "weights"}``: ``model``/
    ``weights`` when given, else ``model.source`` of the manifest next to the artifact or of
    the build's ``report.json`` (the artifact's folder or the one above it)."""
    if model is not None:
        return {"model": model, "weights": str(weights) if weights else None}
    if weights is not None:
        raise ConfigError("--weights needs --model (the architecture the checkpoint is for)")
    for path in (artifact.parent / "manifest.json", artifact.parent.parent / "report.json",
                 artifact.parent / "report.json"):
        try:
            source = json.loads(path.read_text())["model"]["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(source, dict) and source.get("model"):
            return {"model": source["model"], "weights": source.get("weights")}
    raise ModelError(f"no baseline model found for {artifact}: no manifest.json or report.json "
                     "with model.source beside it; pass --model (and --weights)")


def _ort_factory(path: Path) -> RunnerFactory:
    """Runners of ONNX Runtime sessions, one per worker, each with its own intra-op pool.

    Thread settings: ``session_options(threads)`` (intra-op ``threads``, one inter-op thread,
    sequential, all graph optimisations), and with several workers the pool threads do not
    spin-wait between calls: a spinning idle pool burns a core another worker needs.
    """

    from secompile.compiler.runtime.runners import session_options

    def make(workers: int, threads: int) -> list[Runner]:
        import onnxruntime as ort

        runners: list[Runner] = []
        for _ in range(workers):
            options = session_options(threads)
            if workers > 1:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            runners.append(lambda wav, s=session, n=name: s.run(None, {n: wav})[0])
        return runners

    return make


def _torch_factory(module: Any) -> RunnerFactory:
    """Torch eager runners sharing one module (read-only in inference mode), as a torch
    service would; each sets its own intra-op thread count on its own thread."""
    from secompile.compiler.runtime.runners import TorchRunner

    def make(workers: int, threads: int) -> list[Runner]:
        return [TorchRunner(module, threads) for _ in range(workers)]

    return make


def fresh_process_rss(args: list[str], threads: int, sample_rate: int,
                      seconds: float) -> dict[str, Any]:
    """Peak RSS (MiB) of a fresh ``compiler.runtime.rss_probe`` process, or the reason it failed."""
    from secompile.compiler.runtime.rss_probe import ProbeError, probe_peak_rss

    try:
        return {"peak_rss_mb": probe_peak_rss(args, threads, sample_rate, seconds)}
    except ProbeError as exc:
        return {"peak_rss_mb": None, "error": f"memory probe failed: {exc}"}


def load_request_clip(sample_rate: int, seconds: float, min_samples: int,
                      audio: Path | None = None) -> np.ndarray:
    """One request, ``[L]`` float32: ``audio`` (default: the project's noisy demo clip),
    resampled to the model's rate where it differs, looped to ``seconds``."""
    from secompile.calibration.audio import looped_clip, read_audio
    from secompile.models.registry import DEMO_DIR

    samples = round(seconds * sample_rate)
    if samples < min_samples:
        raise ConfigError(f"--request-seconds {seconds:g} gives {samples} samples; the model "
                          f"needs at least {min_samples}")
    wav = read_audio(audio or DEMO_DIR / "noisy" / "demo.wav", sample_rate, allow_resample=True)
    return looped_clip([wav], samples)[0]


def bench_artifact(artifact: Path, source: dict[str, Any], options: BenchOptions,
                   audio: Path | None = None, log: Log = _quiet) -> dict[str, Any]:
    """The whole comparison (see the module docstring) for an ONNX ``artifact`` against the
    torch model ``source`` names; returns the result as plain data."""
    from secompile.compiler.analysis.profile import onnx_audio_contract
    from secompile.compiler.core.versions import machine_info
    from secompile.compiler.runtime.runners import OrtRunner, TorchRunner
    from secompile.compiler.runtime.streaming import is_stream_artifact
    from secompile.models.registry import load_model

    options.check()
    rate, shortest = onnx_audio_contract(artifact)
    if is_stream_artifact(artifact):
        raise ModelError(f"{artifact} is a streaming artifact (one hop per call); bench the "
                         "offline model.onnx")
    baseline = load_model(source["model"], Path(source["weights"]) if source["weights"] else None)
    if baseline.info.sample_rate != rate:
        raise ModelError(f"the artifact runs at {rate} Hz but the baseline model "
                         f"{source['model']} at {baseline.info.sample_rate} Hz")
    clip = load_request_clip(rate, options.request_seconds,
                             max(shortest, baseline.info.min_samples), audio)
    factories = {"torch": _torch_factory(baseline.module), "artifact": _ort_factory(artifact)}

    log("batch-1 latency (interleaved)")
    single = {"torch": TorchRunner(baseline.module, options.threads),
              "artifact": OrtRunner(artifact, options.threads)}
    wav = clip[None, :]
    timed = measure_interleaved({k: (lambda r=r: r(wav)) for k, r in single.items()},
                                repeats=options.repeats)
    sides: dict[str, dict[str, Any]] = {}
    for name in factories:
        stats = timed.stats[name].summary()
        sides[name] = {"latency_ms": stats,
                       "rtf": round(stats["p50"] / 1e3 / options.request_seconds, 5)}

    search_budget = options.budget_s * 0.4
    searches: dict[str, SearchResult] = {}
    for i, (name, factory) in enumerate(factories.items()):
        log(f"search {name} (budget {search_budget:.0f} s)")
        searches[name] = search_best(
            factory, clip, options.slo_ms, options.cores, search_budget, options.batches,
            options.max_wait_ms, options.queue_size, seed=options.seed + 100 * i, log=log)
    found = {name: (factories[name], s.best, s.best_result.offered_rps)
             for name, s in searches.items() if s.best is not None}
    confirmed = _confirm_with_backoff(found, clip, options, log)
    for name, search in searches.items():
        side = sides[name]
        side["search"] = search.as_dict()
        side.update(_headline(search, confirmed.get(name), options.slo_ms))

    if options.rss:
        torch_args = ["torch", source["model"]] + ([source["weights"]] if source["weights"]
                                                   else [])
        for name, args in (("torch", torch_args), ("artifact", ["onnx", str(artifact)])):
            sides[name]["memory"] = fresh_process_rss(args, options.threads, rate,
                                                      options.request_seconds)
    torch_rps, artifact_rps = sides["torch"]["rps_at_slo"], sides["artifact"]["rps_at_slo"]
    return {
        "artifact": str(artifact),
        "baseline": source,
        "model": baseline.info.name,
        "sample_rate": rate,
        "request_seconds": options.request_seconds,
        "audio": str(audio) if audio else "models/demo_audio/noisy/demo.wav (looped)",
        "slo_ms": options.slo_ms,
        "options": {**asdict(options), "batches": list(options.batches)},
        "machine": machine_info(),
        "timing": {"blocks_rerun_for_outside_load": timed.noisy_blocks,
                   "blocks_measured_under_outside_load": timed.loaded_blocks},
        "sides": sides,
        "rps_ratio": round(artifact_rps / torch_rps, 3) if torch_rps else None,
        "rps_ratio_confirmed": all(side["confirmed"] for side in sides.values()),
        "latency_p50_ratio": round(sides["torch"]["latency_ms"]["p50"]
                                   / sides["artifact"]["latency_ms"]["p50"], 3),
    }


def _confirm_with_backoff(found: dict[str, tuple[RunnerFactory, ServeConfig, float]],
                          clip: np.ndarray, options: BenchOptions,
                          log: Log) -> dict[str, list[tuple[float, list[LoadResult]]]]:
    """Interleaved confirmation runs of each side's best configuration at its found rate; a
    side whose median p99 misses the SLO is re-confirmed at 90%, then 80% of that rate (the
    search's short trials pass near the edge by chance). Per side, every attempt as
    ``(rate, runs)``, the last one deciding."""
    history: dict[str, list[tuple[float, list[LoadResult]]]] = {name: [] for name in found}
    if not found or options.confirm_rounds < 1:
        return history
    pending = dict(found)
    scales = (1.0, 0.9, 0.8)
    for attempt, scale in enumerate(scales):
        log(f"confirm {', '.join(pending)} interleaved ({options.confirm_rounds} rounds"
            f"{f', backed off to {scale:.0%}' if attempt else ''})")
        runs = confirm(pending, clip, options.slo_ms, options.confirm_rounds,
                       options.queue_size, seed=1000 + 100 * attempt, log=log)
        retry = {}
        for name, results in runs.items():
            factory, config, rate = pending[name]
            history[name].append((rate, results))
            missed = float(np.median([r.latency(99) for r in results])) > options.slo_ms
            if missed and attempt + 1 < len(scales):
                retry[name] = (factory, config, found[name][2] * scales[attempt + 1])
        if not retry:
            break
        pending = retry
    return history


def _headline(search: SearchResult,
              attempts: list[tuple[float, list[LoadResult]]] | None,
              slo_ms: float) -> dict[str, Any]:
    """Requests/s at the SLO and the p99 there, from the interleaved confirmation runs: the
    offered rate of the last attempt and its median p99 when that meets the SLO. When no
    attempt did (or none ran), the search's best trial, marked unconfirmed."""
    if search.best is None or search.best_result is None:
        return {"rps_at_slo": 0.0, "p99_at_rps_ms": None, "achieved_rps": None,
                "best_config": None, "confirmed": False, "note": search.reason}
    label = search.best.label
    history = [{"offered_rps": round(rate, 2), "runs": [r.summary() for r in runs],
                "passed": f"{sum(r.meets(slo_ms) for r in runs)}/{len(runs)}"}
               for rate, runs in attempts or []]
    if attempts:
        rate, runs = attempts[-1]
        p99 = float(np.median([r.latency(99) for r in runs]))
        if p99 <= slo_ms:
            note = (None if len(attempts) == 1 else
                    f"the search's {attempts[0][0]:.1f} rps missed the SLO when re-run; "
                    f"confirmed at {rate:.1f}")
            return {"rps_at_slo": round(rate, 2), "p99_at_rps_ms": round(p99, 3),
                    "achieved_rps": round(float(np.median([r.achieved_rps for r in runs])), 2),
                    "best_config": label, "confirmed": True, "note": note, "confirm": history}
        shown = "unbounded (requests dropped)" if math.isinf(p99) else f"{p99:.1f} ms"
        note = (f"re-runs missed the SLO down to {rate:.1f} rps (median p99 {shown}); showing "
                "the search's best trial")
    else:
        note = "not confirmed by re-runs"
    best = search.best_result
    return {"rps_at_slo": round(search.rps, 2), "p99_at_rps_ms": round(best.latency(99), 3),
            "achieved_rps": round(best.achieved_rps, 2), "best_config": label,
            "confirmed": False, "note": note, "confirm": history}


def max_outside_load(result: dict[str, Any]) -> float | None:
    """The largest share of the CPU other processes took during any confirmation run of
    either side (``None`` when none was measured)."""
    loads = [run["outside_load"] for side in result["sides"].values()
             for attempt in side.get("confirm", []) for run in attempt["runs"]
             if run.get("outside_load") is not None]
    return max(loads) if loads else None


def render_table(result: dict[str, Any]) -> str:
    """The side-by-side table ``secompile bench`` prints."""
    sides = result["sides"]
    torch_side, art = sides["torch"], sides["artifact"]

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def rss(side: dict[str, Any]) -> str:
        memory = side.get("memory")
        if not memory:
            return "not measured"
        return num(memory["peak_rss_mb"], ".1f") if memory["peak_rss_mb"] else "probe failed"

    rows = [
        ("batch-1 latency p50 (ms)", *(num(s["latency_ms"]["p50"], ".2f") for s in sides.values())),
        ("batch-1 latency p90 (ms)", *(num(s["latency_ms"]["p90"], ".2f") for s in sides.values())),
        ("batch-1 latency p99 (ms)", *(num(s["latency_ms"]["p99"], ".2f") for s in sides.values())),
        (f"real-time factor (p50 / {result['request_seconds']:g} s)",
         *(num(s["rtf"], ".4f") for s in sides.values())),
        ("best config (workers x threads, batch, wait)",
         *(s["best_config"] or "none meets the SLO" for s in sides.values())),
        (f"requests/s at p99 <= {result['slo_ms']:g} ms",
         *(num(s["rps_at_slo"], ".1f") + ("" if s["confirmed"] or not s["rps_at_slo"] else " *")
           for s in sides.values())),
        ("p99 at that rate (ms)", *(num(s["p99_at_rps_ms"], ".1f") for s in sides.values())),
        ("peak RSS, fresh process (MiB)", rss(torch_side), rss(art)),
    ]
    width = max(len(r[0]) for r in rows) + 2
    col = max(16, *(len(str(v)) + 2 for r in rows for v in r[1:]))
    lines = [
        (f"secompile bench: {result['artifact']} vs torch eager {result['model']} "
         f"({result['request_seconds']:g} s requests, {result['sample_rate']} Hz, "
         f"SLO p99 <= {result['slo_ms']:g} ms, {result['options']['cores']} core(s), "
         f"batch-1 on {result['options']['threads']} thread(s))"),
        f"{'':<{width}}{'torch eager':<{col}}{'artifact':<{col}}",
    ]
    lines += [f"{label:<{width}}{a:<{col}}{b:<{col}}" for label, a, b in rows]
    ratio = result["rps_ratio"]
    if ratio is not None:
        unconfirmed = "" if result["rps_ratio_confirmed"] else " (not confirmed on both sides)"
        lines.append(f"artifact / torch requests/s at the SLO: {ratio:.2f}x{unconfirmed} "
                     f"(batch-1 p50 speedup {result['latency_p50_ratio']:.2f}x)")
    elif art["rps_at_slo"]:
        lines.append("artifact / torch requests/s at the SLO: - (torch eager met the SLO at "
                     "no rate tried)")
    else:
        lines.append("neither side meets the SLO: 0 requests/s (raise --slo-ms)")
    for name, side in sides.items():
        if side.get("note"):
            lines.append(f"note ({name}): {side['note']}")
        memory = side.get("memory") or {}
        if memory.get("error"):
            lines.append(f"note ({name}): {memory['error']}")
    if any(not s["confirmed"] and s["rps_at_slo"] for s in sides.values()):
        lines.append("* from the search alone, not confirmed by the interleaved re-runs")
    load = max_outside_load(result)
    if load is not None and load > OUTSIDE_LOAD_LIMIT:
        lines.append(f"warning: other processes used up to {load:.0%} of the CPU during "
                     "the confirmation runs; the numbers are noisy")
    return "\n".join(lines) + "\n"
