"""Quality gates of a build: how much SI-SDR and PESQ an artifact may lose, per SNR bucket.

The ``validate`` pass measures the artifact and the fp32 PyTorch model on the evaluation pairs
and groups the files by input SNR. A gate holds when the artifact-minus-baseline delta of every
bucket (and of the whole set) stays above ``-max_drop``: quantization errors hurt clean,
high-SNR input most, so an average can pass while one bucket is audibly worse. A failed gate is
exit code 3 (:class:`GateError`); every gate is written as JUnit XML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secompile.compiler.core.errors import SecompileError
from secompile.compiler.reporting import junit

ALL_FILES = "all"


class GateError(SecompileError):
    """An artifact lost more quality than a gate allows (exit code 3)."""

    exit_code = 3


@dataclass(frozen=True)
class Gates:
    """The largest drops a build accepts: SI-SDR in dB, PESQ-WB in MOS points."""

    max_si_sdr_drop: float = 0.2
    max_pesq_drop: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_si_sdr_drop", "max_pesq_drop"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def limits(self) -> dict[str, float]:
        """Metric name in the quality report -> allowed drop."""
        return {"si_sdr": self.max_si_sdr_drop, "pesq": self.max_pesq_drop}


@dataclass(frozen=True)
class GateCheck:
    """One gate on one target and bucket; ``delta`` is ``None`` when it could not be measured
    (no evaluation pairs, or PESQ found no speech)."""

    target: str
    metric: str
    bucket: str
    files: int
    delta: float | None
    max_drop: float

    @property
    def status(self) -> str:
        """``passed``, ``failed`` or ``skipped``."""
        if self.delta is None or math.isnan(self.delta):
            return "skipped"
        return "passed" if self.delta >= -self.max_drop else "failed"

    def describe(self) -> str:
        """One line naming the target, metric, bucket, measured delta and limit."""
        unit = " dB" if self.metric == "si_sdr" else ""
        measured = "not measured" if self.delta is None else f"{self.delta:+.4f}{unit}"
        return (f"{self.target}: {self.metric} {measured} in SNR bucket {self.bucket} "
                f"({self.files} files); the gate allows -{self.max_drop}{unit}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the report."""
        return {"metric": self.metric, "bucket": self.bucket, "files": self.files,
                "delta": self.delta, "max_drop": self.max_drop, "status": self.status}


def _delta(baseline: dict[str, float], artifact: dict[str, float], metric: str) -> float | None:
    if metric not in baseline or metric not in artifact:
        return None
    value = artifact[metric] - baseline[metric]
    return None if math.isnan(value) else value


def check_quality(target: str, quality: dict[str, Any] | None, gates: Gates) -> list[GateCheck]:
    """Every gate of ``target`` against ``validate``'s quality section (skipped without one)."""
    checks = []
    for metric, drop in gates.limits().items():
        if not quality:
            checks.append(GateCheck(target, metric, ALL_FILES, 0, None, drop))
            continue
        checks.append(GateCheck(target, metric, ALL_FILES, quality["files"],
                                _delta(quality["baseline"], quality["artifact"], metric), drop))
        for bucket, group in quality.get("buckets", {}).items():
            checks.append(GateCheck(target, metric, bucket, group["files"],
                                    _delta(group["baseline"], group["artifact"], metric), drop))
    return checks


def failed(checks: list[GateCheck]) -> list[GateCheck]:
    """The failed checks, worst (largest drop beyond its limit) first."""
    bad = [c for c in checks if c.status == "failed"]
    return sorted(bad, key=lambda c: c.delta + c.max_drop)


def write_junit(checks: list[GateCheck], path: Path) -> None:
    """JUnit XML, one test case per (target, metric, bucket), written atomically."""
    cases = [junit.JunitCase(f"secompile.{c.target}", f"{c.metric}[{c.bucket}]",
                             failure=c.describe() if c.status == "failed" else None,
                             skipped=c.describe() if c.status == "skipped" else None)
             for c in checks]
    junit.write_junit(path, "secompile.gates", cases)
