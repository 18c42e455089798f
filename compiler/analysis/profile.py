"""Where the time goes: per-layer / per-op time, FLOPs, roofline bounds and thread scaling.

``secompile profile`` is built on this module. It answers, for one input of fixed length:

* **time per layer** of a torch model (``torch.profiler``; every module's call is a
  ``record_function`` range opened and closed by module hooks, and a module's *own* time is its
  range minus the ranges of the modules it called) or **per node and op type** of an ONNX model
  (ONNX Runtime's own profiler), each with its share of the total, sorted;
* **FLOPs and bytes moved per layer**, counted from the graph: for torch, from the real input
  and output shapes each leaf module sees (forward hooks), cross-checked against
  ``torch.utils.flop_counter.FlopCounterMode``; for ONNX, from the tensor shapes ORT records;
* a **roofline**: this machine's single-thread GEMM FLOP/s and copy bandwidth (a ~1 s
  micro-benchmark cached as JSON), the bound ``min(peak, intensity x bandwidth)`` per layer and
  the fraction of it each layer attains;
* an **Amdahl estimate** of thread scaling from measured 1- and N-thread runs.

Everything is measured at one intra-op thread except the N-thread side of the Amdahl estimate.
The torch profiler adds about a microsecond per op (GTCRN runs twice as slow under it), so a
layer's share is the measured figure and its milliseconds are that share of the unprofiled
latency. The roofline uses DRAM bandwidth: a small layer whose data stays in cache can read
above 100% of its bound, and so can any row on a noisy run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from secompile.compiler.analysis.costs import FlopCheck, check_flops, count_layer_costs
from secompile.compiler.core.artifact import onnx_props
from secompile.compiler.core.errors import ModelError
from secompile.compiler.runtime.timing import measure_interleaved

ROOT = "<root>"
_SCOPE = "secompile.module::"

# ONNX ops costed from shapes: one FLOP per output element, LayerNormalization five.
_ONNX_ELEMENTWISE = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Pow": 1, "Sqrt": 1, "Relu": 1, "PRelu": 2,
    "LeakyRelu": 2, "Sigmoid": 1, "Tanh": 1, "Erf": 1, "Clip": 1, "Max": 1, "Min": 1,
    "LayerNormalization": 5, "BatchNormalization": 2, "ReduceMean": 1,
}


# --- machine peak --------------------------------------------------------------------------


@dataclass(frozen=True)
class MachinePeak:
    """Single-thread FP32 GEMM throughput and memory copy bandwidth of this machine."""

    gemm_gflops: float
    bandwidth_gbs: float
    cpu: str
    measured_at: str
    cached: bool = False

    def bound_gflops(self, intensity: float) -> float:
        """Roofline bound in GFLOP/s at ``intensity`` FLOP/byte."""
        return min(self.gemm_gflops, intensity * self.bandwidth_gbs)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_key() -> dict[str, Any]:
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__}


def _best_seconds(fn: Callable[[], object], budget_s: float, min_runs: int = 3) -> float:
    """Best wall time of ``fn`` over repeated runs within ``budget_s`` (after one warm-up)."""
    fn()
    best, start, runs = math.inf, time.perf_counter(), 0
    while runs < min_runs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def measure_machine_peak(budget_s: float = 1.0) -> MachinePeak:
    """Measure single-thread FP32 GEMM GFLOP/s (512x512 ``torch.mm``) and copy bandwidth
    (a 128 MiB tensor copied; read plus write counted) in about ``budget_s`` seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 512
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        gemm = _best_seconds(lambda: torch.mm(a, b, out=out), budget_s / 2)
        src = torch.ones(32 * 1024 * 1024)
        dst = torch.empty_like(src)
        copy = _best_seconds(lambda: dst.copy_(src), budget_s / 2)
    finally:
        torch.set_num_threads(previous)
    return MachinePeak(
        gemm_gflops=round(2 * n**3 / gemm / 1e9, 2),
        bandwidth_gbs=round(2 * src.numel() * src.element_size() / copy / 1e9, 2),
        cpu=_cpu_name(),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def machine_peak(cache_file: Path | None) -> MachinePeak:
    """This machine's peak, read from ``cache_file`` when it was measured on the same CPU and
    torch version, else measured (about 1 s) and written there. ``None``: always measure.

    Builds sharing a cache folder take ``<cache_file>.lock`` (``filelock``) around the read,
    the measurement and the write: one of them measures, the others wait and read it."""
    if cache_file is None:
        return measure_machine_peak()
    try:
        lock = FileLock(cache_file.parent / f"{cache_file.name}.lock", timeout=120)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with lock:
            return _cached_machine_peak(cache_file)
    except OSError:  # a read-only cache folder, or a lock held too long: measure unshared
        return _cached_machine_peak(cache_file)


def _cached_machine_peak(cache_file: Path) -> MachinePeak:
    key = _machine_key()
    if cache_file.is_file():
        try:
            data = json.loads(cache_file.read_text())
            if data.get("key") == key:
                return MachinePeak(data["gemm_gflops"], data["bandwidth_gbs"], data["cpu"],
                                   data["measured_at"], cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable cache is measured again and overwritten
    peak = measure_machine_peak()
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            staged = cache_file.with_suffix(f".{os.getpid()}.tmp")
            record = {"key": key, **asdict(peak)}
            record.pop("cached")
            staged.write_text(json.dumps(record, indent=2))
            os.replace(staged, cache_file)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    return peak


def _onnx_node_flops(op: str, x: list[int], w: list[int] | None, r: list[int] | None,
                     y: list[int]) -> tuple[int, int] | None:
    """(matmul FLOPs, other FLOPs) of one ONNX node from its first input ``x``, weight ``w``,
    recurrent weight ``r`` and first output ``y`` shapes; None for ops without a formula."""
    n_y = math.prod(y) if y else 0
    if op in ("Conv", "FusedConv") and w and len(w) == len(y) and y[1]:
        return 2 * n_y // y[1] * math.prod(w), 0  # positions x (out x in/groups x kernel)
    if op == "ConvTranspose" and w and x and w[0]:
        return 2 * math.prod(x) // w[0] * math.prod(w), 0  # inputs x (out/groups x kernel)
    if op in ("MatMul", "FusedMatMul") and x and y:
        return 2 * n_y * x[-1], 0
    if op in ("Gemm", "FusedGemm") and x and y and y[0]:
        return 2 * n_y * (math.prod(x) // y[0]), n_y
    if op in ("GRU", "LSTM", "RNN") and x and w and r:
        steps = math.prod(x) // x[-1]  # time x batch
        return 2 * steps * (math.prod(w) + math.prod(r)), 0
    if op in _ONNX_ELEMENTWISE:
        return 0, _ONNX_ELEMENTWISE[op] * math.prod(y)  # a scalar output is one element
    return None


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One layer, node or kind: time per run, share of the total, and its roofline position.

    ``flops``/``bytes`` are None where they were not counted (a module's own glue ops, ops
    without a formula); ``attained`` is the fraction of the roofline bound reached.
    """

    name: str
    kind: str
    time_ms: float
    share: float
    cumulative: float
    calls: int
    flops: float | None = None
    bytes: float | None = None
    intensity: float | None = None
    bound_gflops: float | None = None
    attained: float | None = None


def _rows(times: dict[str, tuple[str, float, int]], costs: dict[str, tuple[float, float]],
          peak: MachinePeak, runs: int, total_ms: float) -> tuple[Row, ...]:
    """Rows sorted by time from ``name -> (kind, summed time, calls over runs)`` and
    ``name -> (FLOPs, bytes)`` per run; a row's time is its share of ``total_ms``."""
    total = sum(max(t, 0.0) for _, t, _ in times.values()) or 1.0
    rows, cumulative = [], 0.0
    for name, (kind, spent, calls) in sorted(times.items(), key=lambda kv: -kv[1][1]):
        share = max(spent, 0.0) / total  # timer granularity can leave a glue range below 0
        cumulative += share
        time_ms = share * total_ms
        flops, nbytes = costs.get(name, (None, None))
        intensity = bound = attained = None
        if flops and nbytes:
            intensity = flops / nbytes
            bound = peak.bound_gflops(intensity)
            attained = flops / (time_ms * 1e6) / bound if time_ms > 0 else None
        rows.append(Row(name, kind, time_ms, share, min(cumulative, 1.0), calls // runs,
                        flops, nbytes, intensity, bound, attained))
    return tuple(rows)


def _by_kind(rows: tuple[Row, ...], peak: MachinePeak) -> tuple[Row, ...]:
    """Rows summed per kind (module class or ONNX op type)."""
    times: dict[str, tuple[str, float, int]] = {}
    costs: dict[str, tuple[float, float]] = {}
    for r in rows:
        _, spent, calls = times.get(r.kind, (r.kind, 0.0, 0))
        times[r.kind] = (r.kind, spent + r.time_ms, calls + r.calls)
        if r.flops is not None and r.bytes is not None:
            flops, nbytes = costs.get(r.kind, (0.0, 0.0))
            costs[r.kind] = (flops + r.flops, nbytes + r.bytes)
    return _rows(times, costs, peak, 1, sum(r.time_ms for r in rows))


@dataclass(frozen=True)
class Amdahl:
    """Thread scaling from measured 1- and N-thread latency (medians, interleaved).

    ``serial_fraction`` solves ``S(N) = 1 / (s + (1 - s) / N)`` for ``s``, clipped to [0, 1]
    (a speedup below 1 reads as fully serial, one above N as fully parallel).
    """

    threads: int
    t1_ms: float
    tn_ms: float
    noisy_blocks: int

    @property
    def speedup(self) -> float:
        """Measured ``t(1) / t(N)``."""
        return self.t1_ms / self.tn_ms

    @property
    def serial_fraction(self) -> float:
        """Amdahl's serial fraction ``s`` in [0, 1]."""
        n = self.threads
        return min(1.0, max(0.0, (n / self.speedup - 1) / (n - 1)))

    def predicted_speedup(self, threads: int) -> float:
        """Speedup Amdahl's law predicts at ``threads`` threads."""
        s = self.serial_fraction
        return 1.0 / (s + (1 - s) / threads)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with the derived figures."""
        return {**asdict(self), "speedup": self.speedup, "serial_fraction": self.serial_fraction,
                "predicted_speedup": {str(n): self.predicted_speedup(n) for n in (4, 8)}}


@dataclass(frozen=True)
class ProfileResult:
    """A profile of one model on one input: rows per layer (torch) or node (ONNX), per kind,
    the FLOP cross-check, the machine peak and the thread-scaling estimate."""

    subject: str
    backend: str  # "torch" or "onnxruntime"
    unit: str  # what a row is: "layer", "node" or "op"
    audio_seconds: float
    runs: int
    profiled_ms: float  # per run, with the profiler attached
    rows: tuple[Row, ...]
    by_kind: tuple[Row, ...]
    machine: MachinePeak
    flops: FlopCheck | None = None
    amdahl: Amdahl | None = None
    notes: tuple[str, ...] = field(default=())

    def bottlenecks(self, share: float = 0.5) -> tuple[Row, ...]:
        """The fewest top rows whose shares add up to more than ``share``."""
        for i, row in enumerate(self.rows):
            if row.cumulative > share:
                return self.rows[: i + 1]
        return self.rows

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data."""
        return {
            "subject": self.subject, "backend": self.backend, "unit": self.unit,
            "audio_seconds": self.audio_seconds, "runs": self.runs,
            "profiled_ms": self.profiled_ms,
            "bottlenecks": [r.name for r in self.bottlenecks()],
            "rows": [asdict(r) for r in self.rows],
            "by_kind": [asdict(r) for r in self.by_kind],
            "machine": asdict(self.machine),
            "flops": self.flops.to_dict() if self.flops else None,
            "amdahl": self.amdahl.to_dict() if self.amdahl else None,
            "notes": list(self.notes),
        }

    def render_table(self, top: int = 10) -> str:
        """The top ``top`` rows as a text table, then kinds, FLOPs, roofline and scaling."""
        width = max([len(r.name) for r in self.rows[:top]] + [len(self.unit)])
        kind_w = max([len(r.kind) for r in self.rows[:top]] + [4])
        lines = [
            (f"profile: {self.subject} ({self.backend}, per {self.unit}), "
             f"{self.audio_seconds:.2f} s of audio, 1 thread: {self.profiled_ms:.2f} ms per run "
             "with the profiler"),
            (f"{'#':>3}  {self.unit:<{width}}  {'kind':<{kind_w}}  {'share':>6}  {'cum.':>6}  "
             f"{'ms':>7}  {'MFLOPs':>8}  {'FLOP/B':>6}  {'roofline':>8}"),
        ]

        def num(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        for i, r in enumerate(self.rows[:top], 1):
            lines.append(
                f"{i:>3}  {r.name:<{width}}  {r.kind:<{kind_w}}  {r.share:>6.1%}  "
                f"{r.cumulative:>6.1%}  {r.time_ms:>7.3f}  "
                f"{num(r.flops and r.flops / 1e6, '8.2f'):>8}  {num(r.intensity, '6.2f'):>6}  "
                f"{num(r.attained, '8.1%'):>8}"
            )
        head = self.bottlenecks()
        if head:
            lines.append(f"top {len(head)} {self.unit}s take {head[-1].cumulative:.1%} of the "
                         f"time ({len(self.rows)} {self.unit}s in all)")
        kinds = ", ".join(f"{k.kind} {k.share:.1%}" for k in self.by_kind[:6])
        lines.append(f"by kind: {kinds}")
        if self.flops:
            f = self.flops
            lines.append(
                f"FLOPs: counted {f.counted_matmul / 1e6:.2f} M conv/linear/RNN "
                f"(+{(f.counted_total - f.counted_matmul - f.excluded_flops) / 1e6:.2f} M "
                "elementwise); "
                f"FlopCounterMode {f.reference / 1e6:.2f} M; difference "
                f"{f.relative_difference:+.2%}"
                + (f" (without {', '.join(f.excluded)}: FlopCounterMode does not see them)"
                   if f.excluded else "")
            )
        m = self.machine
        lines.append(f"machine: 1-thread GEMM {m.gemm_gflops:.1f} GFLOP/s, copy bandwidth "
                     f"{m.bandwidth_gbs:.1f} GB/s ({'cached' if m.cached else 'measured'} "
                     f"{m.measured_at}); roofline = attained / min(peak, intensity x bandwidth)")
        if self.amdahl:
            a = self.amdahl
            lines.append(
                f"threads: 1 -> {a.threads}: {a.t1_ms:.2f} -> {a.tn_ms:.2f} ms (p50), speedup "
                f"{a.speedup:.2f}x, serial fraction {a.serial_fraction:.2f}; Amdahl predicts "
                f"{a.predicted_speedup(4):.2f}x at 4 threads, {a.predicted_speedup(8):.2f}x at 8"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


# --- torch ---------------------------------------------------------------------------------


def _leaf_paths(module: nn.Module) -> set[str]:
    return {p for p, m in module.named_modules() if not any(True for _ in m.children())}


def _scope_spans(prof: Any) -> list[tuple[str, int, int]]:
    """``(module label, start ns, end ns)`` of every module range in a finished profile.

    Reads the profiler's raw events: building its Python event tree (``prof.events()``) for
    GTCRN's ~40k ops per call takes seconds, the raw list a fraction of one.
    """
    raw = getattr(getattr(prof.profiler, "kineto_results", None), "events", None)
    if raw is None:  # an older or newer profiler without raw results: the slow path
        return [(e.name[len(_SCOPE):], int(e.time_range.start * 1e3),
                 int(e.time_range.end * 1e3)) for e in prof.events()
                if e.name.startswith(_SCOPE)]
    spans = []
    for event in raw():
        name = event.name()
        if name.startswith(_SCOPE):
            spans.append((name[len(_SCOPE):], event.start_ns(), event.end_ns()))
    return spans


def _profile_module_times(module: nn.Module, example: torch.Tensor, runs: int
                          ) -> tuple[dict[str, tuple[str, float, int]], float]:
    """Own time per module over ``runs`` calls, ``row name -> (kind, µs, calls)``, and the
    total µs.

    A module's own time is its ``record_function`` range minus the ranges of the modules
    called directly inside it (found by time nesting, not from attribute nesting: a parent
    may call a grandchild's method directly).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    kinds = {(p or ROOT): type(m).__name__ for p, m in module.named_modules()}
    leaves = _leaf_paths(module)
    stack: list[Any] = []
    handles = []

    def enter(label: str) -> Callable[..., None]:
        def pre(mod: nn.Module, args: tuple) -> None:
            scope = record_function(_SCOPE + label)
            scope.__enter__()
            stack.append(scope)

        return pre

    def leave(mod: nn.Module, args: tuple, out: Any) -> None:
        if stack:
            stack.pop().__exit__(None, None, None)

    for path, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(enter(path or ROOT)))
        handles.append(sub.register_forward_hook(leave, always_call=True))
    try:
        with torch.inference_mode():
            module(example)  # warm-up, outside the profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(runs):
                    module(example)
    finally:
        for handle in handles:
            handle.remove()

    own: dict[str, float] = {}
    calls: dict[str, int] = {}
    total = 0.0
    open_spans: list[tuple[str, int]] = []  # (label, end ns) of the enclosing module calls
    for label, start, end in sorted(_scope_spans(prof), key=lambda s: (s[1], -s[2])):
        while open_spans and open_spans[-1][1] <= start:
            open_spans.pop()
        span = (end - start) / 1e3
        own[label] = own.get(label, 0.0) + span
        calls[label] = calls.get(label, 0) + 1
        if open_spans:
            parent = open_spans[-1][0]
            own[parent] = own.get(parent, 0.0) - span
        else:
            total += span
        open_spans.append((label, end))

    def row_name(label: str) -> str:
        return label if label in leaves else f"{label} (self)"

    return {row_name(k): (kinds.get(k, "?"), us, calls[k]) for k, us in own.items()}, total


def _profile_op_times(module: Any, example: torch.Tensor, runs: int
                      ) -> tuple[dict[str, tuple[str, float, int]], float]:
    """Own time per ATen op over ``runs`` calls, for modules hooks cannot reach (TorchScript)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        module(example)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                module(example)
    times = {e.key: (e.key, float(e.self_cpu_time_total), e.count)
             for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return times, sum(t for _, t, _ in times.values())


def _thread_timing(make: Callable[[int], Callable[[np.ndarray], object]], wav: np.ndarray,
                   threads: int, repeats: int) -> tuple[float, Amdahl | None]:
    """Unprofiled p50 latency at one thread, and the Amdahl estimate against ``threads``
    threads (interleaved, load-guarded; None when ``threads`` is 1)."""
    runners = {1: make(1)} if threads < 2 else {1: make(1), threads: make(threads)}
    result = measure_interleaved({str(n): (lambda r=r: r(wav)) for n, r in runners.items()},
                                 repeats=repeats, warmup=1, blocks=2)
    t1 = result.stats["1"].percentile(50)
    if threads < 2:
        return t1, None
    return t1, Amdahl(threads, t1, result.stats[str(threads)].percentile(50), result.noisy_blocks)


def profile_torch(module: nn.Module, wav: np.ndarray, machine: MachinePeak, *,
                  name: str = "model", sample_rate: int = 16000, threads: int = 2,
                  runs: int = 5, repeats: int = 8) -> ProfileResult:
    """Profile a waveform torch module on ``wav`` (``[1, L]`` float32) at one thread.

    Rows are leaf modules by path (``core.dpgrnn1.intra_rnn.rnn1``) plus each non-leaf
    module's own ops (``core.dpgrnn1 (self)``: reshapes, the STFT of a wrapper...), so shares
    add up to 100%. Shares come from ``runs`` profiled calls; a row's milliseconds are its
    share of the unprofiled 1-thread latency (p50 of ``repeats`` calls). The profiler's
    per-op cost roughly doubles GTCRN's run time but scales its layers alike: on GTCRN and
    NSNet2 these shares agreed within 2 points with plain ``perf_counter`` module hooks. FLOPs and bytes come
    from :func:`count_layer_costs`, checked by :func:`check_flops`.
    """
    from secompile.compiler.runtime.runners import TorchRunner

    module = module.eval()
    example = torch.from_numpy(np.ascontiguousarray(wav, np.float32))
    notes: list[str] = []
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # profiler and GRU flat-weight notices
            if isinstance(module, torch.jit.ScriptModule):
                times, total = _profile_op_times(module, example, runs)
                unit, costs, check = "op", {}, None
                notes.append("TorchScript: module hooks cannot reach its layers, so rows are "
                             "ATen ops and FLOPs are not counted per layer")
            else:
                times, total = _profile_module_times(module, example, runs)
                unit = "layer"
                layer_costs = count_layer_costs(module, example)
                costs = {p: (float(c.flops), float(c.bytes)) for p, c in layer_costs.items()}
                check = check_flops(module, example, layer_costs)
    finally:
        torch.set_num_threads(previous)
    latency, amdahl = _thread_timing(lambda n: TorchRunner(module, n), wav, threads, repeats)
    if amdahl is None:
        notes.append("thread scaling needs a thread count of 2 or more")
    notes.append(f"row times are shares of the unprofiled 1-thread latency, {latency:.2f} ms")
    rows = _rows(times, costs, machine, runs, latency)
    return ProfileResult(name, "torch", unit, wav.shape[-1] / sample_rate, runs,
                         total / runs / 1e3, rows, _by_kind(rows, machine), machine,
                         check, amdahl, tuple(notes))


# --- ONNX Runtime --------------------------------------------------------------------------


def onnx_audio_contract(path: Path) -> tuple[int, int]:
    """(sample rate, shortest input) from a secompile artifact's metadata (16 kHz, 1 if not
    recorded). Raises :class:`ModelError` for a file that is not ONNX."""
    props = onnx_props(path)
    return int(props.get("secompile.sample_rate", 16000)), int(props.get("secompile.min_samples", 1))


def _ort_session(path: Path, threads: int, profile_dir: Path | None = None) -> Any:
    """An ORT CPU session as :class:`~compiler.runtime.OrtRunner` makes it; with
    ``profile_dir``, profiling on and the optimised graph saved there (for weight shapes)."""
    import onnxruntime as ort

    from secompile.compiler.runtime.runners import session_options

    options = session_options(threads)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "ort")
        options.optimized_model_filepath = str(profile_dir / "optimized.onnx")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (ORT raises its own exception types)
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from None


Weight = tuple[list[int], int]  # an initializer input's shape and size in bytes


def _graph_weights(optimized: Path) -> dict[str, list[Weight | None]]:
    """Per node of ORT's optimised graph, the shape and byte size of each initializer input.

    ORT's profile leaves out the constant inputs it pre-packed (convolution and GRU weights)
    from both its shapes and its ``parameter_size``, so they are read from the graph it saved.
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        graph = onnx.load(str(optimized), load_external_data=False).graph
    except Exception:  # noqa: BLE001  (no saved graph: costs fall back to profiled shapes)
        return {}
    inits = {i.name: (list(i.dims), math.prod(i.dims) * tensor_dtype_to_np_dtype(i.data_type)
                      .itemsize) for i in graph.initializer}
    return {n.name: [inits.get(i) for i in n.input] for n in graph.node}


def _shapes(arg: Any) -> list[list[int]]:
    """``[[dims], ...]`` from ORT's ``input_type_shape``/``output_type_shape`` records."""
    return [list(next(iter(t.values()))) for t in arg or [] if t]


def _node_cost(op: str, args: dict[str, Any], weights: list[Weight | None] | None
               ) -> tuple[float, float] | None:
    """(FLOPs, bytes) per run of one profiled node, or None without a FLOP formula.

    Bytes are ORT's activation and output sizes plus the node's initializers (from the saved
    graph; ORT's own ``parameter_size`` where the graph is missing)."""
    inputs, outputs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))

    def shape(i: int) -> list[int] | None:
        if weights and len(weights) > i and weights[i]:
            return weights[i][0]
        return inputs[i] if len(inputs) > i else None

    flops = _onnx_node_flops(op, inputs[0] if inputs else [], shape(1), shape(2),
                             outputs[0] if outputs else [])
    if flops is None:
        return None
    params = (sum(w[1] for w in weights if w) if weights is not None
              else int(args.get("parameter_size", 0)))
    nbytes = int(args.get("activation_size", 0)) + int(args.get("output_size", 0)) + params
    return float(sum(flops)), float(nbytes)


def profile_onnx(path: Path, wav: np.ndarray, machine: MachinePeak, *, sample_rate: int = 16000,
                 threads: int = 2, runs: int = 5, repeats: int = 8) -> ProfileResult:
    """Profile an ONNX waveform model with ONNX Runtime's profiler at one intra-op thread.

    Rows are the nodes of ORT's optimised graph (what really runs) with their kernel time per
    run, after one warm-up run; ``by_kind`` sums them per op type. FLOPs come from the shapes
    ORT records and the saved optimised graph; bytes are ORT's own activation, parameter and
    output sizes.
    """
    from secompile.compiler.runtime.runners import OrtRunner

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="secompile-profile-") as tmp:
        session = _ort_session(path, 1, Path(tmp))
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise ModelError(f"{path} is not a waveform model: profile needs one [batch, samples] "
                             f"input, it has {[(i.name, i.shape) for i in inputs]}")
        feed = {inputs[0].name: np.ascontiguousarray(wav, np.float32)}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        weights = _graph_weights(Path(tmp) / "optimized.onnx")
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    after_warmup = starts[1] if len(starts) > 1 else 0
    run_us = sum(e["dur"] for e in events if e.get("name") == "model_run"
                 and e["ts"] >= after_warmup)
    times: dict[str, tuple[str, float, int]] = {}
    costs: dict[str, tuple[float, float]] = {}
    uncosted: set[str] = set()
    kernels = [e for e in events if e.get("cat") == "Node"
               and e["name"].endswith("_kernel_time") and e["ts"] >= after_warmup]
    for e in kernels:
        args = e.get("args", {})
        op = args.get("op_name", "?")
        name = e["name"][: -len("_kernel_time")] or f"{op}#{args.get('node_index', '?')}"
        _, spent, calls = times.get(name, (op, 0.0, 0))
        times[name] = (op, spent + _exclusive_us(e, op, kernels), calls + 1)
        if calls == 0:  # the shapes are the same on every run
            cost = _node_cost(op, args, weights.get(name) if weights else None)
            if cost is None:
                uncosted.add(op)
            else:
                costs[name] = cost
    kernel_ms = sum(t for _, t, _ in times.values()) / runs / 1e3
    rows = _rows(times, costs, machine, runs, kernel_ms)
    latency, amdahl = _thread_timing(lambda n: OrtRunner(path, n), wav, threads, repeats)
    notes = [(f"node kernels take {kernel_ms:.2f} of {run_us / runs / 1e3:.2f} ms per profiled "
              f"run (unprofiled: {latency:.2f} ms); the rest is ORT's executor between nodes")]
    if uncosted:
        notes.append(f"ops without a FLOP formula (data movement): {', '.join(sorted(uncosted))}")
    if amdahl is None:
        notes.append("thread scaling needs a thread count of 2 or more")
    return ProfileResult(path.name, "onnxruntime", "node", wav.shape[-1] / sample_rate, runs,
                         run_us / runs / 1e3, rows, _by_kind(rows, machine), machine,
                         None, amdahl, tuple(notes))


_CONTROL_FLOW = {"Scan", "Loop", "If"}


def _exclusive_us(event: dict, op: str, kernels: list[dict]) -> float:
    """A node's own time: a control-flow node's event includes the nodes of its subgraph,
    which ONNX Runtime also reports one by one, so their time is taken out of it."""
    if op not in _CONTROL_FLOW:
        return float(event["dur"])
    start, end = event["ts"], event["ts"] + event["dur"]
    nested = sum(e["dur"] for e in kernels
                 if e is not event and start <= e["ts"] and e["ts"] + e["dur"] <= end)
    return max(0.0, float(event["dur"]) - nested)


def profile_audio(sample_rate: int, seconds: float, wav_path: Path | None = None,
                  min_samples: int = 1) -> np.ndarray:
    """The profiling input, ``[1, L]`` float32: the first ``seconds`` of ``wav_path``, or
    deterministic noise (seed 0, 0.1 RMS) of that length."""
    length = max(round(seconds * sample_rate), min_samples)
    if wav_path is not None:
        from secompile.calibration.audio import read_audio

        return read_audio(wav_path, sample_rate, min_samples=min_samples)[None, :length].copy()
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((1, length))).astype(np.float32)
