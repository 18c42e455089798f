"""Progress bars for long work (calibration, per-layer sensitivity, scoring, benchmarking).

A bar draws on a terminal and nowhere else: CI logs and pipes get no carriage-return noise.
Whether bars are on is decided once, where the process starts (the CLI, :func:`wanted`), and
handed to passes through the context as a :class:`ProgressFactory`, so no pass reads the
environment.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Self, TypeVar

T = TypeVar("T")
WIDTH = 24


def wanted(stream: IO[str], environ: dict[str, str]) -> bool:
    """Bars for ``stream``: only on an interactive terminal, and never when ``CI`` is set (CI
    runners sometimes allocate a pseudo-terminal) or the terminal is ``dumb``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and environ.get("CI", "").lower() not in ("1", "true") \
        and environ.get("TERM") != "dumb"


class Progress:
    """One bar: ``label [#####.....] done/total  elapsed``, redrawn in place at most every
    ``interval`` seconds and finished with a newline. Disabled, it does nothing."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None,
                 enabled: bool = True, interval: float = 0.1) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.done = 0
        self._start = time.perf_counter()
        self._drawn = 0.0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += n
        if self.enabled and (time.perf_counter() - self._drawn >= self.interval
                             or self.done >= self.total):
            self._draw()

    def _draw(self) -> None:
        filled = WIDTH * min(self.done, self.total) // self.total if self.total else WIDTH
        elapsed = time.perf_counter() - self._start
        self.stream.write(f"\r  {self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                          f"{self.done}/{self.total}  {elapsed:.0f} s")
        self.stream.flush()
        self._drawn = time.perf_counter()

    def close(self) -> None:
        """Draw the last state and end the line."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting each one done after the caller is through with it."""
        with self:
            for item in items:
                yield item
                self.update()


ProgressFactory = Callable[[int, str], Progress]


def silent(total: int, label: str) -> Progress:
    """A factory of bars that never draw (the default everywhere but a terminal)."""
    return Progress(total, label, enabled=False)


def on_terminal(stream: IO[str] | None = None) -> ProgressFactory:
    """A factory of bars drawn on ``stream`` (stderr)."""
    return lambda total, label: Progress(total, label, stream=stream)
