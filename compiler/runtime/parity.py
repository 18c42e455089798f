"""The numerical-parity verifier: the instrument that fails a pass whose output drifts.

It runs artifacts, so it lives with the runners rather than in the core; the application
builds its managers with :func:`default_instruments`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from secompile.compiler.core.errors import PassError
from secompile.compiler.core.instruments import Instrument, MemoryInstrument, TimingInstrument
from secompile.compiler.runtime.runners import make_runner

if TYPE_CHECKING:
    from secompile.compiler.core.artifact import Artifact
    from secompile.compiler.core.context import PassContext
    from secompile.compiler.core.pass_base import Pass, PassResult


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


def parity_error(a: Artifact, b: Artifact, audio: np.ndarray, threads: int) -> float:
    """Max abs difference between two artifacts' outputs on ``audio`` ``[1, L]``."""
    return _max_abs(make_runner(a, threads)(audio), make_runner(b, threads)(audio))


def default_instruments() -> list[Instrument]:
    """Timing, memory and the parity verifier: what every build runs with."""
    return [TimingInstrument(), MemoryInstrument(), ParityVerifier()]
