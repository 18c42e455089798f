"""Side-by-side CPU benchmark on GTCRN: torch eager vs a plain ONNX export vs secompile.

    python benchmarks/bench_cpu.py [--weights PATH] [--eval DIR] [--threads 1] [--json OUT]

The three contenders, all fp32, all on the same thread count, timed interleaved in one run:

* ``torch-eager``: the PyTorch model as its authors run it (torch.stft -> GTCRN -> torch.istft);
* ``plain-onnx``: what an engineer writes by hand: ``torch.onnx.export`` of the spectral core
  (the exporter cannot take complex ``torch.stft``), run by ONNX Runtime with default session
  options, with the STFT and iSTFT left in torch around it;
* ``secompile``: the ``cpu`` artifact of ``secompile build`` (BN folded, STFT in-graph,
  simplified, ORT-optimized), built here without the cache.

Prints a table (latency p50/p99 at 1 s and 10 s, throughput at batch 8, size, peak RSS of a fresh
process, SI-SDR delta vs torch eager on the evaluation pairs) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


class PlainOnnx:
    """torch.stft -> ORT session of the exported core -> torch.istft."""

    def __init__(self, wrapper, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.wrapper = wrapper
        self.threads = threads

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                x = torch.from_numpy(wav)
                spec = self.wrapper.analyse(x).numpy()
                out = self.session.run(None, {"spec": spec})[0]
                return self.wrapper.synthesise(torch.from_numpy(out), x.shape[-1]).numpy()
        finally:
            torch.set_num_threads(previous)


def export_plain(wrapper, path: Path) -> None:
    """The hand-written export: the core alone, dynamic time axis, default settings."""
    import torch

    spec = wrapper.analyse(torch.randn(2, 16000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper.core, (spec,), str(path), dynamo=False,
                          input_names=["spec"], output_names=["out"],
                          dynamic_axes={"spec": {0: "b", 2: "t"}, "out": {0: "b", 2: "t"}})


def fresh_rss(kind: str, *args: str, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process running one contender on 10 s of audio."""
    command = [sys.executable, __file__, "--probe", kind, *args, "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def probe(kind: str, args: list[str], threads: int) -> None:
    """Child-process side of :func:`fresh_rss`."""
    from secompile.compiler.core.instruments import peak_rss_mb

    wav = (0.1 * np.random.default_rng(0).standard_normal((1, 160000))).astype(np.float32)
    if kind == "onnx":
        from secompile.compiler.runtime.runners import OrtRunner

        runner = OrtRunner(Path(args[0]), threads)
    else:
        from secompile.compiler.runtime.runners import TorchRunner
        from secompile.models.registry import load_model

        model = load_model("gtcrn", args[0]).module
        runner = TorchRunner(model, threads) if kind == "torch" else PlainOnnx(
            model, Path(args[1]), threads)
    for _ in range(3):
        runner(wav)
    print(peak_rss_mb())


def main() -> None:
    """Run the benchmark (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "models" / "gtcrn" / "gtcrn_vctk.pt")
    parser.add_argument("--eval", type=Path, default=SHARED / "audio" / "vbdemand")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "cpu_gtcrn.json")
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe[0], args.probe[1:], args.threads)
        return

    import torch

    from secompile.calibration.datasets import PairedFolder
    from secompile.calibration.metrics import si_sdr
    from secompile.compiler.app.build import BuildRequest, run_build
    from secompile.compiler.runtime.runners import OrtRunner, TorchRunner
    from secompile.compiler.runtime.timing import measure_interleaved
    from secompile.models.registry import load_model

    model = load_model("gtcrn", args.weights).module
    pairs = PairedFolder.scan(args.eval, 16000).load()
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    plain_path = work / "plain.onnx"
    export_plain(model, plain_path)
    run_build(BuildRequest(model="gtcrn", weights=args.weights, eval=args.eval,
                           out=work / "build", threads=args.threads,
                           pipeline="fuse-conv-bn,merge-grouped-gru,export-onnx"))
    artifact = work / "build" / "cpu" / "model.onnx"
    runners = {
        "torch-eager": TorchRunner(model, args.threads),
        "plain-onnx": PlainOnnx(model, plain_path, args.threads),
        "secompile": OrtRunner(artifact, args.threads),
    }
    joined = np.concatenate([p.noisy for p in pairs])
    rows: dict[str, dict] = {name: {} for name in runners}
    for label, seconds, repeats in (("1s", 1, args.repeats), ("10s", 10, args.repeats // 4)):
        clip = np.tile(joined, 2)[None, : seconds * 16000].astype(np.float32)
        timed = measure_interleaved({n: (lambda r=r, c=clip: r(c)) for n, r in runners.items()},
                                    repeats=repeats)
        for name, stats in timed.stats.items():
            rows[name][f"p50_{label}_ms"] = stats.percentile(50)
            rows[name][f"p99_{label}_ms"] = stats.percentile(99)
    batch = np.repeat(np.tile(joined, 2)[None, :16000], 8, axis=0).astype(np.float32)
    timed = measure_interleaved({n: (lambda r=r: r(batch)) for n, r in runners.items()},
                                repeats=max(5, args.repeats // 4))
    for name, stats in timed.stats.items():
        rows[name]["throughput_clips_s"] = 8 / (stats.percentile(50) / 1e3)
    buffer = io.BytesIO()
    torch.save(model.core.state_dict(), buffer)
    sizes = {"torch-eager": buffer.tell(), "plain-onnx": plain_path.stat().st_size,
             "secompile": artifact.stat().st_size}
    rss = {"torch-eager": fresh_rss("torch", str(args.weights), threads=args.threads),
           "plain-onnx": fresh_rss("plain", str(args.weights), str(plain_path),
                                   threads=args.threads),
           "secompile": fresh_rss("onnx", str(artifact), threads=args.threads)}
    reference = [runners["torch-eager"](p.noisy[None])[0] for p in pairs]
    for name, runner in runners.items():
        scores = [si_sdr(runner(p.noisy[None])[0], p.clean) - si_sdr(ref, p.clean)
                  for p, ref in zip(pairs, reference, strict=True)]
        rows[name].update(size_bytes=sizes[name], peak_rss_mb=rss[name],
                          delta_si_sdr_db=float(np.mean(scores)))
    base = rows["torch-eager"]
    for row in rows.values():
        row["speedup_1s"] = base["p50_1s_ms"] / row["p50_1s_ms"]
        row["speedup_10s"] = base["p50_10s_ms"] / row["p50_10s_ms"]
    header = (f"{'contender':<12} {'p50 1s':>8} {'p99 1s':>8} {'p50 10s':>8} {'speedup':>8} "
              f"{'thru/s':>8} {'size KB':>8} {'RSS MiB':>8} {'dSI-SDR':>9}")
    print(f"GTCRN ({args.weights.name}), {args.threads} thread(s), {len(pairs)} eval pairs")
    print(header)
    for name, r in rows.items():
        print(f"{name:<12} {r['p50_1s_ms']:8.2f} {r['p99_1s_ms']:8.2f} {r['p50_10s_ms']:8.1f} "
              f"{r['speedup_1s']:7.2f}x {r['throughput_clips_s']:8.1f} "
              f"{r['size_bytes'] / 1024:8.1f} {r['peak_rss_mb']:8.1f} {r['delta_si_sdr_db']:+9.5f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": "gtcrn", "weights": args.weights.name,
                                     "threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
