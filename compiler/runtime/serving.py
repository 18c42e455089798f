"""A model served to concurrent clients: a thread pool of model instances behind a bounded
request queue with dynamic batching (:class:`BatchingServer`), and an open-loop load generator
that measures per-request latency (:func:`run_load`). ``compiler.app.bench`` builds the serving
benchmark on these.

Why threads suffice for parallelism: torch releases the GIL inside its kernels and ONNX Runtime
inside ``session.run``, so the Python around a model call (queueing, stacking, splitting) is the
only serialised part, and it is measured as part of every request's latency.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from secompile.compiler.core.errors import ConfigError
from secompile.compiler.runtime.runners import Runner


@dataclass(eq=False)
class Request:
    """One request: its audio ``[L]``, when it arrived, when its result was ready, its future
    (the enhanced audio ``[L]``, or the exception the model raised)."""

    wav: np.ndarray
    arrival: float
    future: Future = field(default_factory=Future)
    finished: float | None = None

    @property
    def latency_ms(self) -> float | None:
        """Completion minus arrival, in ms; ``None`` while not finished."""
        return None if self.finished is None else (self.finished - self.arrival) * 1e3


class _Stop:
    """Queue sentinel: one per worker, after every request."""


_STOP = _Stop()


class RequestDropped(Exception):
    """A queued request was cancelled before a worker took it (a trial stopped early)."""


class BatchingServer:
    """A thread pool of model instances behind one bounded request queue, batching dynamically.

    Each worker owns one runner. It takes the first queued request, then waits up to
    ``max_wait_ms`` for more requests *of the same length* until it holds ``max_batch``,
    stacks them ``[B, L]``, runs the model once and hands each request its own output row. A
    request of another length is kept for the worker's next batch. ``submit`` blocks while the
    queue is full (backpressure on the client), and counts each time it had to.

    Use as a context manager; ``stop`` lets the workers finish every queued request first.
    """

    def __init__(self, runners: Sequence[Runner], max_batch: int = 1, max_wait_ms: float = 0.0,
                 queue_size: int = 64) -> None:
        if not runners:
            raise ConfigError("a server needs at least one runner (worker)")
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ConfigError(f"bad server settings: max_batch={max_batch}, "
                              f"queue_size={queue_size}, max_wait_ms={max_wait_ms}")
        self.runners = list(runners)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Condition()
        self._outstanding = 0
        self.backpressure = 0
        self.batch_sizes: list[int] = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start one worker thread per runner."""
        for i, runner in enumerate(self.runners):
            thread = threading.Thread(target=self._work, args=(runner,), daemon=True,
                                      name=f"bench-worker-{i}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Serve what is queued, then end every worker."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, wav: np.ndarray, arrival: float | None = None) -> Request:
        """Queue one request ``[L]``; blocks while the queue is full (counted as backpressure).
        ``arrival`` (``time.perf_counter()`` clock) defaults to now; a caller that was held up
        passes the time the request really arrived, so the wait is part of its latency."""
        request = Request(wav, time.perf_counter() if arrival is None else arrival)
        with self._lock:
            self._outstanding += 1
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            with self._lock:
                self.backpressure += 1
            self._queue.put(request)
        return request

    def cancel_pending(self) -> int:
        """Drop every queued request (each future gets :class:`RequestDropped`); how many."""
        dropped = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return dropped
            if isinstance(item, _Stop):  # not ours to drop: put it back for its worker
                self._queue.put(item)
                return dropped
            if item.future.set_running_or_notify_cancel():  # not already cancelled by its caller
                item.future.set_exception(RequestDropped("cancelled before it was served"))
            self._finish(1)
            dropped += 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted request is finished or dropped; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._outstanding == 0, timeout)

    def _finish(self, count: int) -> None:
        with self._lock:
            self._outstanding -= count
            if self._outstanding == 0:
                self._lock.notify_all()

    def _work(self, runner: Runner) -> None:
        pending: Request | None = None
        stopping = False
        while True:
            if pending is not None:
                first, pending = pending, None
            elif stopping:
                return
            else:
                item = self._queue.get()
                if isinstance(item, _Stop):
                    return
                first = item
            batch = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = (self._queue.get(timeout=remaining) if remaining > 0
                            else self._queue.get_nowait())
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stopping = True
                    break
                if item.wav.shape != first.wav.shape:
                    pending = item
                    break
                batch.append(item)
            self._run(runner, batch)

    def _run(self, runner: Runner, batch: list[Request]) -> None:
        taken = len(batch)
        try:
            # a request its caller cancelled is dropped here; the others run
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not batch:
                return
            self.batch_sizes.append(len(batch))
            try:
                out = np.asarray(runner(np.stack([r.wav for r in batch])))
                if out.shape[0] != len(batch):
                    raise RuntimeError(f"the model returned {out.shape[0]} rows for a batch of "
                                       f"{len(batch)}")
            except Exception as exc:  # noqa: BLE001  (handed to every caller of the batch)
                now = time.perf_counter()
                for request in batch:
                    request.finished = now
                    request.future.set_exception(exc)
            else:
                now = time.perf_counter()
                for request, row in zip(batch, out, strict=True):
                    request.finished = now
                    request.future.set_result(row)
        finally:  # the pending count must reach zero whatever happened
            self._finish(taken)


# ------------------------------------------------------------------------------------- load


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation (as NumPy's default), where a value
    may be ``inf`` (a request that never completed): any interpolation touching it is ``inf``."""
    if not values:
        return math.inf
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(ordered[hi]):
        return ordered[lo] if lo == hi or pos == lo else math.inf
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _misses_to_fail(n: int, q: float = 99.0) -> int:
    """How many of ``n`` latencies above the SLO make the ``q``-th percentile exceed it."""
    return n - math.floor((n - 1) * q / 100)


@dataclass
class LoadResult:
    """One load trial: what was offered, what came back.

    ``latencies_ms`` holds every request; one that failed, was dropped or never finished
    counts as ``inf``, so it can only make a percentile worse.

    The rate a passing trial proves is ``offered_rps``: requests arrived at that Poisson rate
    and every one was served within the SLO (MLPerf's server scenario counts the same way).
    ``achieved_rps``, completions from the trial's start to its last completion, is shown
    beside it; it reads a little lower because the last requests finish after the trial.
    """

    offered_rps: float
    duration_s: float
    requests: int
    completed: int
    failed: int
    dropped: int
    backpressure: int
    latencies_ms: list[float]
    batch_sizes: list[int]
    span_s: float
    aborted: bool = False
    outside_load: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def achieved_rps(self) -> float:
        """Completed requests per second over the trial."""
        return self.completed / max(self.span_s, self.duration_s, 1e-9)

    def latency(self, q: float) -> float:
        """The ``q``-th latency percentile in ms (``inf`` when too many never completed)."""
        return percentile(self.latencies_ms, q)

    def meets(self, slo_ms: float) -> bool:
        """Every request served, none failed, and p99 within ``slo_ms``."""
        return (not self.aborted and self.failed == 0 and self.dropped == 0
                and self.completed == self.requests and self.latency(99) <= slo_ms)

    def summary(self) -> dict[str, Any]:
        """Plain data for JSON (no per-request lists)."""

        def ms(q: float) -> float | None:
            value = self.latency(q)
            return None if math.isinf(value) else round(value, 3)

        return {
            "offered_rps": round(self.offered_rps, 2),
            "achieved_rps": round(self.achieved_rps, 2),
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests, "completed": self.completed, "failed": self.failed,
            "dropped": self.dropped, "backpressure": self.backpressure,
            "latency_ms": {"p50": ms(50), "p90": ms(90), "p99": ms(99)},
            "mean_batch": (round(float(np.mean(self.batch_sizes)), 2)
                           if self.batch_sizes else None),
            "aborted": self.aborted,
            "outside_load": None if self.outside_load is None else round(self.outside_load, 3),
            "errors": self.errors[:3],
        }


def arrival_offsets(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Arrival times (s from the start) of ``round(rate * duration)`` requests of a Poisson
    process on ``[0, duration)``: uniform order statistics, i.e. a Poisson process conditioned
    on its count, so a trial offers exactly the rate asked for, with Poisson burstiness."""
    n = max(1, round(rate * duration_s))
    return np.sort(np.random.default_rng(seed).uniform(0.0, duration_s, n))


def run_load(server: BatchingServer, clip: np.ndarray, rate: float, duration_s: float,
             seed: int = 0, slo_ms: float | None = None,
             drain_timeout_s: float = 30.0) -> LoadResult:
    """Drive ``server`` with open-loop Poisson arrivals at ``rate`` requests/s for
    ``duration_s``; every request is ``clip`` (``[L]``).

    Open loop: a request's arrival time is its scheduled time, whether or not the client could
    queue it then (backpressure), so a slow server cannot hide queueing delay. With ``slo_ms``
    the trial stops as soon as enough requests exceeded it that p99 must (aborted; queued
    requests are dropped), which keeps failing trials short.
    """
    offsets = arrival_offsets(rate, duration_s, seed)
    n = len(offsets)
    limit = _misses_to_fail(n) if slo_ms is not None else n + 1
    misses = [0]
    lock = threading.Lock()

    def on_done(request: Request) -> Callable[[Future], None]:
        def callback(future: Future) -> None:
            bad = future.exception() is not None or (
                slo_ms is not None and request.latency_ms > slo_ms)
            if bad:
                with lock:
                    misses[0] += 1
        return callback

    backpressure0, batches0 = server.backpressure, len(server.batch_sizes)
    requests: list[Request] = []
    aborted = False
    start = time.perf_counter()
    for offset in offsets:
        due = start + float(offset)
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if misses[0] >= limit:
            aborted = True
            break
        request = server.submit(clip, arrival=due)
        request.future.add_done_callback(on_done(request))
        requests.append(request)
    # drain: wait for the submitted requests; stop early once the SLO is certainly missed
    drain_end = time.perf_counter() + drain_timeout_s
    while not aborted:
        now = time.perf_counter()
        pending = [r for r in requests if not r.future.done()]
        if not pending or now > drain_end:
            break
        late = (sum((now - r.arrival) * 1e3 > slo_ms for r in pending)
                if slo_ms is not None else 0)
        if misses[0] + late >= limit:
            aborted = True
            break
        time.sleep(0.002 if slo_ms is None else min(0.01, slo_ms / 4e3))
    if aborted or any(not r.future.done() for r in requests):
        server.cancel_pending()
        server.wait_idle(drain_timeout_s)  # let in-flight batches end before the next trial
    finished = [r.finished for r in requests if r.future.done() and r.finished is not None]
    span = (max(finished) - start) if finished else duration_s
    completed = failed = dropped = 0
    latencies: list[float] = []
    errors: list[str] = []
    for request in requests:
        if not request.future.done():
            dropped += 1
            latencies.append(math.inf)
            continue
        exc = request.future.exception()
        if exc is None:
            completed += 1
            latencies.append(request.latency_ms)
        elif isinstance(exc, RequestDropped):
            dropped += 1
            latencies.append(math.inf)
        else:
            failed += 1
            latencies.append(math.inf)
            if len(errors) < 3:
                errors.append(f"{type(exc).__name__}: {exc}")
    never_sent = n - len(requests)
    dropped += never_sent
    latencies.extend([math.inf] * never_sent)
    return LoadResult(
        offered_rps=rate, duration_s=duration_s, requests=n, completed=completed, failed=failed,
        dropped=dropped, backpressure=server.backpressure - backpressure0,
        latencies_ms=latencies, batch_sizes=server.batch_sizes[batches0:], span_s=span,
        aborted=aborted, errors=errors,
    )
