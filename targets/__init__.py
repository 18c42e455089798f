"""Deployment targets and their registry."""

from __future__ import annotations

from compiler.errors import TargetError
from targets.base import Target
from targets.cpu import CPU
from targets.edge import EDGE

TARGETS: dict[str, Target] = {t.name: t for t in (CPU, EDGE)}


def get_target(name: str) -> Target:
    """The target called ``name``; a ``TargetError`` lists the known targets."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target '{name}' (known targets: {', '.join(sorted(TARGETS))})"
        ) from None


def require_available(target: Target) -> None:
    """Raise ``TargetError`` when this machine cannot build ``target``."""
    reason = target.unavailable_reason()
    if reason is not None:
        raise TargetError(f"target '{target.name}' cannot be built on this machine: {reason}")


__all__ = ["TARGETS", "Target", "get_target", "require_available"]
