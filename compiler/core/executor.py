"""``Executor``: where a pass's independent work runs; ``SerialExecutor`` runs it here.

The context carries one, so a pass maps its work (scoring evaluation files) without knowing
where it runs; :mod:`secompile.compiler.distributed.executors` adds the Ray executor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any


class Executor:
    """Maps a function over items; results come back in item order."""

    name = "serial"

    @property
    def workers(self) -> int:
        """How many items can usefully run at once."""
        return 1

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            num_cpus: float | Sequence[float] = 1,
            num_gpus: float | Sequence[float] = 0,
            return_exceptions: bool = False) -> list[Any]:
        """``[fn(item) for item in items]``, each call given ``num_cpus``/``num_gpus`` (one
        value for all, or one per item). With ``return_exceptions``, an item whose call
        failed gets the exception in its place instead of the whole map raising it."""
        results: list[Any] = []
        for item in items:
            try:
                results.append(fn(item))
            except Exception as exc:  # handed back to the caller
                if not return_exceptions:
                    raise
                results.append(exc)
        return results

    def largest_node_cpus(self) -> float:
        """The most CPUs one task can get (a task asking for more would never run)."""
        return float(os.cpu_count() or 1)

    def describe(self) -> dict[str, Any]:
        """Plain-data description for reports."""
        return {"executor": self.name, "workers": self.workers}

    def settings(self) -> dict[str, Any]:
        """What the executor was and whether it was used, without starting anything."""
        return self.describe()

    def close(self) -> None:
        """Release what the executor started."""


class SerialExecutor(Executor):
    """Runs everything in this process, in order."""
