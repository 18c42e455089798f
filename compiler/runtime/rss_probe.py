"""Peak RSS of a fresh process that loads one model form and enhances ``seconds`` of audio.

Run as ``python -m secompile.compiler.runtime.rss_probe onnx PATH`` or
``... torch MODEL_REF [WEIGHTS]``; prints ``{"peak_rss_mb": ...}``. The ONNX side imports
onnxruntime and NumPy only, as a deployment would; the torch side imports torch and the model,
as the user's PyTorch service would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


class ProbeError(RuntimeError):
    """The probe process failed; the message is its last line of stderr."""


def probe_peak_rss(args: list[str], threads: int, sample_rate: int,
                   seconds: float = 10.0) -> float:
    """Peak RSS (MiB) of a fresh probe process run with ``args`` (``["onnx", PATH]`` or
    ``["torch", MODEL_REF, WEIGHTS?]``); :class:`ProbeError` when it fails."""
    command = [sys.executable, "-m", __spec__.name, *args, "--threads", str(threads),
               "--sample-rate", str(sample_rate), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProbeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def torch_probe_args(info: Any, module: Any, workdir: Path, seconds: float = 10.0
                     ) -> list[str]:
    """``probe_peak_rss`` arguments for the torch side of a model whose facts are ``info``
    (a ``ModelInfo``): its ``source``, or, for a model handed over in memory that no other
    process can load, a TorchScript trace of ``module`` on the probe's own input shape, saved
    in ``workdir`` (same kernels and weights; :class:`ProbeError` when it cannot be traced)."""
    if info.reloadable:
        source = info.source
        return ["torch", source["model"]] + ([source["weights"]] if source["weights"] else [])
    import torch

    example = torch.zeros(1, int(seconds * info.sample_rate))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    path = Path(workdir) / "baseline_traced.pt"
    try:
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
    except Exception as exc:  # noqa: BLE001  (tracing a user model can fail many ways)
        raise ProbeError(f"the in-memory model could not be traced for the fresh-process memory "
                         f"probe ({type(exc).__name__}: {exc}); give it as FILE.py:factory, or "
                         "turn the memory measurement off") from None
    return ["torch", str(path)]


def main() -> None:
    """Entry point (see module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("onnx", "torch"))
    parser.add_argument("ref")
    parser.add_argument("weights", nargs="?")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import numpy as np

    from secompile.compiler.core.instruments import peak_rss_mb

    wav = np.random.default_rng(0).standard_normal((1, int(args.seconds * args.sample_rate)))
    wav = (0.1 * wav).astype(np.float32)
    if args.kind == "onnx":
        from secompile.compiler.runtime.runners import OrtRunner

        runner = OrtRunner(args.ref, args.threads)
    else:
        from secompile.compiler.runtime.runners import TorchRunner
        from secompile.models.registry import load_model

        runner = TorchRunner(load_model(args.ref, args.weights).module, args.threads)
    for _ in range(3):
        runner(wav)
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
