"""The ``Target`` type: what a deployment target needs and what it can run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A deployment target with declared capabilities and its default pipeline.

    ``availability`` returns ``None`` when this machine can build and run the target, or the
    reason it cannot. ``cpu_only_pipeline``, where set, is what the target can still build on a
    machine that lacks its hardware (``--allow-cpu-only-artifacts``): artifacts checked on the
    CPU only and marked unvalidated.
    """

    name: str
    description: str
    precision: str
    artifact_format: str
    opset: int
    execution_providers: tuple[str, ...]
    default_pipeline: str
    supported_passes: frozenset[str]
    availability: Callable[[], str | None]
    cpu_only_pipeline: str | None = None

    def unavailable_reason(self) -> str | None:
        """Why this machine cannot build the target, or ``None`` when it can."""
        return self.availability()

    def supports(self, pass_name: str) -> bool:
        """Whether the target accepts ``pass_name`` in its pipeline."""
        return pass_name in self.supported_passes
