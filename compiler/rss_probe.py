"""Peak RSS of a fresh process that loads one model form and enhances ``seconds`` of audio.

Run as ``python -m compiler.rss_probe onnx PATH`` or ``... torch MODEL_REF [WEIGHTS]``; prints
``{"peak_rss_mb": ...}``. The ONNX side imports onnxruntime and NumPy only, as a deployment
would; the torch side imports torch and the model, as the user's PyTorch service would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


class ProbeError(RuntimeError):
    """The probe process failed; the message is its last line of stderr."""


def probe_peak_rss(args: list[str], threads: int, sample_rate: int,
                   seconds: float = 10.0) -> float:
    """Peak RSS (MiB) of a fresh probe process run with ``args`` (``["onnx", PATH]`` or
    ``["torch", MODEL_REF, WEIGHTS?]``); :class:`ProbeError` when it fails."""
    from compiler.versions import ROOT

    command = [sys.executable, "-m", "compiler.rss_probe", *args, "--threads", str(threads),
               "--sample-rate", str(sample_rate), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise ProbeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


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

    from compiler.instruments import peak_rss_mb

    wav = np.random.default_rng(0).standard_normal((1, int(args.seconds * args.sample_rate)))
    wav = (0.1 * wav).astype(np.float32)
    if args.kind == "onnx":
        from compiler.runtime import OrtRunner

        runner = OrtRunner(args.ref, args.threads)
    else:
        from compiler.runtime import TorchRunner
        from models.registry import load_model

        runner = TorchRunner(load_model(args.ref, args.weights).module, args.threads)
    for _ in range(3):
        runner(wav)
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
