"""Regression gates between two ``report.json`` files (``secompile compare``).

Each gate reads one number per target from both reports and fails when the new value is worse
than the baseline's by more than its tolerance. Speed and memory gates compare the *ratios*
each report measured against its own PyTorch baseline in the same run, so a slower or busier
CI machine does not read as a regression; size and quality gates compare absolute values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secompile.compiler.core.errors import ConfigError, DataError
from secompile.compiler.reporting import junit


@dataclass(frozen=True)
class Gate:
    """One compared metric: where it lives in a target entry, its direction and tolerance.

    ``relative`` tolerances are fractions of the baseline value; absolute ones are in the
    metric's unit (dB for SI-SDR).
    """

    name: str
    path: tuple[str, ...]
    higher_is_better: bool
    tolerance: float
    relative: bool

    def limit(self, baseline: float) -> float:
        """The worst new value that still passes."""
        slack = abs(baseline) * self.tolerance if self.relative else self.tolerance
        return baseline - slack if self.higher_is_better else baseline + slack


GATES = (
    Gate("speedup", ("speedup",), True, 0.15, True),
    Gate("speedup_10s", ("speedup_10s",), True, 0.15, True),
    Gate("throughput_speedup", ("throughput_speedup",), True, 0.15, True),
    Gate("memory_reduction", ("memory_reduction",), True, 0.10, True),
    Gate("size_bytes", ("size_bytes", "artifact"), False, 0.01, True),
    Gate("si_sdr", ("quality", "artifact", "si_sdr"), True, 0.1, False),
    Gate("pesq", ("quality", "artifact", "pesq"), True, 0.02, False),
    Gate("stoi", ("quality", "artifact", "stoi"), True, 0.005, False),
)


@dataclass(frozen=True)
class Finding:
    """The outcome of one gate on one target."""

    target: str
    gate: str
    baseline: float | None
    new: float | None
    limit: float | None
    status: str  # ok, regressed, missing, skipped

    @property
    def failed(self) -> bool:
        """Whether this finding fails the comparison."""
        return self.status in ("regressed", "missing")


def parse_tolerances(items: tuple[str, ...]) -> dict[str, float]:
    """``name=value`` pairs for ``--tolerance``; unknown names and bad values are errors."""
    known = {g.name for g in GATES}
    tolerances = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known:
            raise ConfigError(f"unknown tolerance '{name}' (known: {', '.join(sorted(known))})")
        try:
            tolerances[name] = float(value)
        except ValueError:
            raise ConfigError(f"tolerance '{name}' must be a number, got {value!r}") from None
        if not tolerances[name] >= 0:
            raise ConfigError(f"tolerance '{name}' must be >= 0, got {value}")
    return tolerances


def load_report(path: Path) -> dict[str, Any]:
    """A ``report.json`` (``DataError`` when missing or not a secompile report)."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"report not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable JSON report: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("targets"), dict):
        raise DataError(f"{path} is not a secompile report.json (no 'targets')")
    return report


def _lookup(entry: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = entry
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def compare_reports(
    new: dict[str, Any], baseline: dict[str, Any], tolerances: dict[str, float] | None = None
) -> list[Finding]:
    """Every gate on every target of the baseline report."""
    tolerances = tolerances or {}
    findings = []
    for target, base_entry in baseline["targets"].items():
        new_entry = new["targets"].get(target)
        for gate in GATES:
            if gate.name in tolerances:
                gate = Gate(gate.name, gate.path, gate.higher_is_better, tolerances[gate.name],
                            gate.relative)
            base_value = _lookup(base_entry, gate.path)
            if base_value is None:
                findings.append(Finding(target, gate.name, None, None, None, "skipped"))
                continue
            new_value = _lookup(new_entry, gate.path) if new_entry else None
            if new_value is None:
                findings.append(Finding(target, gate.name, base_value, None, None, "missing"))
                continue
            limit = gate.limit(base_value)
            worse = new_value < limit if gate.higher_is_better else new_value > limit
            status = "regressed" if worse else "ok"
            findings.append(Finding(target, gate.name, base_value, new_value, limit, status))
    return findings


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def render_table(findings: list[Finding]) -> str:
    """A Markdown table of the findings (also readable on a terminal)."""
    lines = ["| target | metric | baseline | new | limit | status |", "|---|---|---|---|---|---|"]
    for f in findings:
        mark = "**REGRESSED**" if f.status == "regressed" else f.status
        lines.append(f"| {f.target} | {f.gate} | {_fmt(f.baseline)} | {_fmt(f.new)} "
                     f"| {_fmt(f.limit)} | {mark} |")
    return "\n".join(lines) + "\n"


def render_markdown(findings: list[Finding], new: Path, baseline: Path) -> str:
    """A Markdown summary for a CI step summary."""
    failed = [f for f in findings if f.failed]
    verdict = (f"{len(failed)} regression(s)" if failed else "no regression")
    return (f"## secompile compare: {verdict}\n\n`{new}` against baseline `{baseline}`.\n\n"
            + render_table(findings))


def write_junit(findings: list[Finding], path: Path) -> None:
    """JUnit XML: one test case per (target, metric); regressions are failures."""
    cases = []
    for f in findings:
        failure = skipped = None
        if f.failed:
            failure = (f"{f.gate} on {f.target}: new {_fmt(f.new)} vs baseline "
                       f"{_fmt(f.baseline)} (limit {_fmt(f.limit)})")
        elif f.status == "skipped":
            skipped = "not in the baseline report"
        cases.append(junit.JunitCase(f"secompile.{f.target}", f.gate, failure, skipped))
    junit.write_junit(path, "secompile.compare", cases)
