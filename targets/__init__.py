"""Deployment targets and their registry."""

from __future__ import annotations

from secompile.compiler.core.errors import TargetError
from secompile.targets.base import Target
from secompile.targets.cpu import CPU
from secompile.targets.edge import EDGE
from secompile.targets.gpu import GPU

TARGETS: dict[str, Target] = {t.name: t for t in (CPU, EDGE, GPU)}


def get_target(name: str) -> Target:
    """The target called ``name``; a ``TargetError`` lists the known targets."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target '{name}' (known targets: {', '.join(sorted(TARGETS))})"
        ) from None


def require_available(target: Target, allow_cpu_only: bool = False) -> str | None:
    """Raise ``TargetError`` when this machine cannot build ``target``.

    With ``allow_cpu_only``, a target that has a ``cpu_only_pipeline`` is allowed anyway: the
    return value is then the reason its artifacts go unvalidated (``None``: fully available).
    """
    reason = target.unavailable_reason()
    if reason is None:
        return None
    if allow_cpu_only and target.cpu_only_pipeline:
        return reason
    hint = (" (--allow-cpu-only-artifacts builds what it can check on the CPU, marked "
            "unvalidated)" if target.cpu_only_pipeline else "")
    raise TargetError(f"target '{target.name}' cannot be built on this machine: {reason}{hint}")


def require_cuda_passes(target: Target, passes: list) -> None:
    """Raise ``TargetError`` naming the first pass of ``target``'s pipeline that needs a CUDA
    GPU when this machine has none: refused before any pass runs."""
    from secompile.targets.hardware import detect

    hw = detect()
    if hw.cuda:
        return
    for p in passes:
        if p.requires_cuda():
            raise TargetError(f"pass '{p.name}' in the {target.name} pipeline needs a CUDA GPU; "
                              f"this machine has none ({hw.cuda_reason})")


__all__ = ["TARGETS", "Target", "get_target", "require_available", "require_cuda_passes"]
