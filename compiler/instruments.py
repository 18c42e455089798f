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

import numpy as np

from compiler.errors import PassError
from compiler.runtime import make_runner

if TYPE_CHECKING:
    from compiler.artifact import Artifact
    from compiler.context import PassContext
    from compiler.passes import Pass, PassResult


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


class ParityVerifier(Instrument):
    """Checks that a modifying pass kept the model's output within its declared tolerance.

    Runs the pass's input and output artifacts on the context's real parity clip. When the
    difference exceeds ``pass.parity_tolerance`` and the input is a torch model, it also runs
    that model in float64 as the exact reference: the output passes if it is no further from
    that reference than the tolerance plus twice the input's own float32 error (log-power
    models such as NSNet2 differ by ~1e-4 between two correct float32 STFTs in their quietest
    bins). Otherwise it raises a :class:`PassError` with the measured errors.
    """

    def after_pass(
        self, p: Pass, artifact: Artifact, result: PassResult, ctx: PassContext, record: dict
    ) -> None:
        tolerance = p.parity_tolerance
        if tolerance is None or not result.modified:
            return
        audio = ctx.parity_audio
        out_in = make_runner(artifact, ctx.threads)(audio)
        out_new = make_runner(result.artifact, ctx.threads)(audio)
        max_abs = _max_abs(out_in, out_new)
        record["parity_max_abs"] = max_abs
        record["parity_tolerance"] = tolerance
        if max_abs <= tolerance:
            return
        exact = float64_output(artifact, audio)
        detail = ""
        if exact is not None:
            input_error, output_error = _max_abs(out_in, exact), _max_abs(out_new, exact)
            record["parity_vs_float64"] = {"input": input_error, "output": output_error}
            if output_error <= tolerance + 2 * input_error:
                return
            detail = (f"; against a float64 run of the input it is {output_error:.3g} off, "
                      f"the input itself {input_error:.3g}")
        raise PassError(
            p.name,
            f"output differs from its input by {max_abs:.3g} max abs on real audio "
            f"(tolerance {tolerance:g}){detail}",
        )


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b)))


def float64_output(artifact: Artifact, audio: np.ndarray) -> np.ndarray | None:
    """A torch artifact's output computed in float64 (``None`` for other forms)."""
    if artifact.format != "torch":
        return None
    import copy

    import torch

    try:
        module = copy.deepcopy(artifact.module).double().eval()
        with torch.inference_mode():
            return module(torch.from_numpy(audio.astype(np.float64))).numpy()
    except (RuntimeError, TypeError, NotImplementedError):
        return None


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


def parity_error(a: Artifact, b: Artifact, audio: np.ndarray, threads: int) -> float:
    """Max abs difference between two artifacts' outputs on ``audio`` ``[1, L]``."""
    return _max_abs(make_runner(a, threads)(audio), make_runner(b, threads)(audio))


def default_instruments() -> list[Instrument]:
    """Timing, memory and the parity verifier: what every build runs with."""
    return [TimingInstrument(), MemoryInstrument(), ParityVerifier()]


def record_defaults(p: Pass) -> dict[str, Any]:
    """A fresh record for pass ``p``."""
    return {"name": p.name, "config": p.config.as_dict()}
