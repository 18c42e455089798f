"""Latency measurement that survives a shared, noisy 2-core machine.

Candidates are timed interleaved (A, B, A, B...) so slow periods hit both sides alike; a block
of rounds is re-run when ``/proc/stat`` shows other processes using more than
``busy_threshold`` of the CPU during it; statistics are medians and percentiles, never means.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TimingStats:
    """Latency samples of one candidate, in milliseconds."""

    samples_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in ms."""
        return float(np.percentile(self.samples_ms, q))

    def summary(self) -> dict[str, float]:
        """p50, p90, p99 and count, for reports."""
        return {
            "p50": round(self.percentile(50), 4),
            "p90": round(self.percentile(90), 4),
            "p99": round(self.percentile(99), 4),
            "runs": len(self.samples_ms),
        }


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, or None where /proc/stat is missing."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def other_load(run: Callable[[], None]) -> float:
    """Run ``run`` and return the share of the machine's CPU used by other processes meanwhile."""
    start, own0 = _cpu_jiffies(), _own_cpu_seconds()
    run()
    end, own1 = _cpu_jiffies(), _own_cpu_seconds()
    if start is None or end is None or end[1] <= start[1]:
        return 0.0
    hz = os.sysconf("SC_CLK_TCK")
    busy = (end[0] - start[0]) - (own1 - own0) * hz
    return max(0.0, busy / (end[1] - start[1]))


@dataclass
class InterleavedResult:
    """Per-candidate stats; how many blocks were re-run because of outside load, and how many
    were kept although the load persisted through every retry."""

    stats: dict[str, TimingStats]
    noisy_blocks: int
    loaded_blocks: int = 0

    def p50_ratio(self, slow: str, fast: str) -> float:
        """``p50(slow) / p50(fast)``: a speedup when ``fast`` is the optimized side."""
        return self.stats[slow].percentile(50) / self.stats[fast].percentile(50)


def measure_interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    blocks: int = 5,
    busy_threshold: float = 0.12,
    max_block_retries: int = 3,
) -> InterleavedResult:
    """Time each candidate ``repeats`` times, interleaved, in ``blocks`` load-checked blocks."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    stats = {name: TimingStats() for name in candidates}
    per_block = max(1, -(-repeats // blocks))
    noisy = loaded = 0
    done = 0
    while done < repeats:
        rounds = min(per_block, repeats - done)
        for attempt in range(max_block_retries + 1):
            block: dict[str, list[float]] = {name: [] for name in candidates}

            def run_block(rounds: int = rounds, block: dict = block) -> None:
                for r in range(rounds):
                    names = list(candidates)
                    if r % 2:
                        names.reverse()
                    for name in names:
                        t0 = time.perf_counter()
                        candidates[name]()
                        block[name].append((time.perf_counter() - t0) * 1e3)

            load = other_load(run_block)
            if load <= busy_threshold:
                break
            if attempt == max_block_retries:
                loaded += 1
                break
            noisy += 1
        for name, samples in block.items():
            stats[name].samples_ms.extend(samples)
        done += rounds
    return InterleavedResult(stats, noisy, loaded)


# A busy loop that ends by itself: after ``limit`` seconds, or as soon as its parent is gone
# (a ``finally`` does not run when the parent is killed, and an orphan would spin forever).
_HOG = ("import os, sys, time\n"
        "parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])\n"
        "while time.monotonic() < end and os.getppid() == parent:\n"
        "    for _ in range(100000): pass\n")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def cpu_hogs(count: int, limit_s: float = 120.0) -> Iterator[int]:
    """Keep ``count`` busy-looping processes running for the duration of the block (a loaded
    machine, for deadline-miss measurements); yield how many were started. Each stops on its
    own after ``limit_s`` seconds or when this process dies."""
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG, str(limit_s)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)]
    try:
        time.sleep(0.2)  # let the scheduler spread them over the cores
        yield len(hogs)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
