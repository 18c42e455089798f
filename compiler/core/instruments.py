"""Instruments: hook objects the ``PassManager`` calls around every pass.

Passes contain no timing, memory or parity code; these hooks measure every pass the same way
and write into the pass's record (a dict that ends up in the report).
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secompile.compiler.core.artifact import Artifact
    from secompile.compiler.core.context import PassContext
    from secompile.compiler.core.pass_base import Pass, PassResult


class Instrument:
    """Base hook: override either method. ``record`` is the pass's report entry."""

    def before_pass(self, p: Pass, artifact: Artifact, ctx: PassContext, record: dict) -> None:
        """Called before a pass runs (not on a cache hit)."""

    def after_pass(
        self, p: Pass, artifact: Artifact, result: PassResult, ctx: PassContext, record: dict
    ) -> None:
        """Called after a pass returned (not on a cache hit)."""


class TimingInstrument(Instrument):
    """Wall-clock seconds of each pass."""

    def before_pass(self, p: Pass, artifact: Artifact, ctx: PassContext, record: dict) -> None:
        record["_t0"] = time.perf_counter()

    def after_pass(
        self, p: Pass, artifact: Artifact, result: PassResult, ctx: PassContext, record: dict
    ) -> None:
        record["seconds"] = round(time.perf_counter() - record.pop("_t0"), 4)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Reads ``VmHWM`` where Linux provides it: unlike ``ru_maxrss``, it is reset by ``exec``, so
    a child started from a large process reports its own peak, not its parent's.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class MemoryInstrument(Instrument):
    """Process peak RSS after each pass and how much the pass raised it."""

    def before_pass(self, p: Pass, artifact: Artifact, ctx: PassContext, record: dict) -> None:
        record["_rss0"] = peak_rss_mb()

    def after_pass(
        self, p: Pass, artifact: Artifact, result: PassResult, ctx: PassContext, record: dict
    ) -> None:
        peak = peak_rss_mb()
        record["peak_rss_mb"] = round(peak, 1)
        record["peak_rss_growth_mb"] = round(peak - record.pop("_rss0"), 1)


class DumpInstrument(Instrument):
    """Writes every pass's output into ``folder`` for inspection: ONNX files as they are,
    torch modules as plain state_dicts (``NN-<pass>.onnx`` / ``NN-<pass>.pt``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.count = 0

    def after_pass(
        self, p: Pass, artifact: Artifact, result: PassResult, ctx: PassContext, record: dict
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        out = result.artifact
        stem = self.folder / f"{self.count:02d}-{p.name}"
        self.count += 1
        if out.format == "torch":
            import torch

            path = stem.with_suffix(".pt")
            torch.save(out.module.state_dict(), path)
        else:
            path = stem.with_suffix(out.path.suffix)
            shutil.copyfile(out.path, path)
        record["dump"] = str(path)


def record_defaults(p: Pass) -> dict[str, Any]:
    """A fresh record for pass ``p``."""
    return {"name": p.name, "config": p.config.as_dict()}
