"""The fault suite's harness: a probe is one bad input or fault a user will bring, the outcome
a trusted build tool owes them, and a check of what secompile did.

Each ``tests/faults/test_*.py`` module lists its probes in ``PROBES`` and runs them as tests;
``benchmarks/bench_faults.py`` runs the same list and prints probe / expected / observed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_AUDIO = REPO.parent / "shared" / "data" / "audio"
SHARED_MODELS = REPO.parent / "shared" / "data" / "models"


@dataclass(frozen=True)
class Observation:
    """What a probe saw: whether it met the expectation, and a one-line account."""

    ok: bool
    observed: str


@dataclass(frozen=True)
class Probe:
    """A fault or bad input: ``run(tmp)`` sets it up under the empty folder ``tmp``, makes
    secompile face it, and reports an :class:`Observation` against ``expected``."""

    area: str
    name: str
    expected: str
    run: Callable[[Path], Observation]

    @property
    def id(self) -> str:
        """A pytest id: the probe's name in one token."""
        return self.name.replace(" ", "-")


@dataclass(frozen=True)
class CliResult:
    """A finished ``secompile`` run."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The non-empty stderr lines that are not progress or warnings."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and not line.startswith(("  ", "warning"))]

    def summary(self) -> str:
        """``exit N: <last stderr line>`` (the observed column of the fault table)."""
        lines = self.error_lines or self.stderr.strip().splitlines() or ["(no stderr)"]
        return f"exit {self.exit_code}: {lines[-1][:160]}"


def secompile(args: Sequence[str | os.PathLike], cwd: Path | None = None,
              timeout: float = 600, env: dict[str, str] | None = None) -> CliResult:
    """Run the ``secompile`` CLI in a fresh process, as a user's shell would."""
    done = subprocess.run(
        [sys.executable, "-m", "secompile", *map(str, args)], check=False, cwd=cwd,
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def in_process(args: Sequence[str | os.PathLike], cwd: Path | None = None,
               env: dict[str, str] | None = None) -> CliResult:
    """``secompile ARGS`` run in this process (click's runner, in the main thread): the same
    command, exit code and stderr a shell gets, without a fresh interpreter's seconds of imports.
    Probes of signals, concurrency, memory or a whole round trip use :func:`secompile`."""
    from click.testing import CliRunner

    from secompile.compiler.app.cli import main

    with contextlib.chdir(cwd or Path.cwd()):
        done = CliRunner(env=env).invoke(main, [str(a) for a in args])
    stderr = done.stderr
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        stderr += f"\nTraceback: {type(done.exception).__name__}: {done.exception}"
    return CliResult(done.exit_code, done.stdout, stderr)


def named_error(result: CliResult, *needles: str, exit_code: int = 2) -> Observation:
    """The observation for a probe that expects a one-line ``error:`` naming ``needles`` (all of
    them, case-insensitively) and exit ``exit_code``, with no traceback."""
    text = result.stderr.lower()
    ok = (result.exit_code == exit_code and "traceback" not in text
          and len([line for line in result.error_lines if line.startswith("error")]) == 1
          and all(n.lower() in text for n in needles))
    return Observation(ok, result.summary())


def files_under(folder: Path) -> set[str]:
    """Every file below ``folder``, relative and as text (to prove nothing was left or lost)."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}
