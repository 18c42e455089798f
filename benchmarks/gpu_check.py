"""The gpu target's device check: build it for the real models on this machine's NVIDIA GPU and
print what was measured (device, fp32 vs fp16 latency, speedup, throughput, GPU utilisation,
quality deltas). Run through ``benchmarks/gpu_check.sh``; installs nothing.

Models: GTCRN and NSNet2 where their checkpoints are in the shared data folder, else the
project's default model; evaluation pairs: VoiceBank-DEMAND from the same folder when present,
else the project's demo pair. Results: a table on stdout and ``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
__import__("_tree").ensure_importable()  # runs in its own environment, maybe uninstalled

NEEDED = ("torch", "onnx", "onnxruntime", "numpy", "scipy", "click", "soundfile", "pesq",
          "pystoi")
MODELS = {"gtcrn": ("gtcrn", "models/gtcrn/gtcrn_dns3.pt"),
          "nsnet2": ("nsnet2", "models/nsnet2/nsnet2-16k.onnx")}


def _missing_modules() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _row(name: str, entry: dict[str, Any], seconds: float) -> dict[str, Any]:
    measured = (entry.get("gpu") or {}).get("measured")
    primary = (measured or {}).get("primary")
    if primary is None:
        return {"model": name, "error": "no gpu artifact was measured",
                "build_seconds": round(seconds, 1)}
    latency = measured["latency_ms"]
    throughput = measured["throughput"]
    largest = max(throughput[primary], key=int)  # its row may hold an error instead
    delta = entry["quality_delta"] or {}
    graph = latency.get("aot-inductor+cuda-graph", {})
    return {
        "model": name, "device": measured["device"]["name"], "artifact": primary,
        "fp32_p50_ms": latency["fp32-eager"]["p50"], "fp16_p50_ms": latency[primary]["p50"],
        "fp16_p99_ms": latency[primary]["p99"], "cuda_graph_p50_ms": graph.get("p50"),
        "speedup": entry["speedup"],
        "rps": {b: row["rps"] for b, row in throughput[primary].items() if "rps" in row},
        "fp32_rps": {b: row["rps"] for b, row in throughput["fp32-eager"].items()
                     if "rps" in row},
        "gpu_util_percent": (throughput[primary][largest].get("gpu_utilisation") or {}).get(
            "mean_percent"),
        "d_si_sdr": delta.get("si_sdr"), "d_pesq": delta.get("pesq"), "d_stoi": delta.get("stoi"),
        "tensorrt": (entry["gpu"].get("tensorrt") or {}).get("skipped") or "built",
        "build_seconds": round(seconds, 1),
    }


def _print(rows: list[dict[str, Any]]) -> None:
    head = ("model", "device", "artifact", "fp32 p50 ms", "fp16 p50 ms", "fp16 p99 ms",
            "graph p50 ms", "speedup", "clips/s b1/b8/b32", "fp32 clips/s b32", "GPU util %",
            "dSI-SDR", "dPESQ")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['error']} |")
            continue
        rps = "/".join(f"{r['rps'][b]:.0f}" for b in sorted(r["rps"], key=int))
        cells = (r["model"], r["device"], r["artifact"], f"{r['fp32_p50_ms']:.3f}",
                 f"{r['fp16_p50_ms']:.3f}", f"{r['fp16_p99_ms']:.3f}",
                 "—" if r["cuda_graph_p50_ms"] is None else f"{r['cuda_graph_p50_ms']:.3f}",
                 f"{r['speedup']:.2f}x", rps,
                 f"{r['fp32_rps'][max(r['fp32_rps'], key=int)]:.0f}" if r["fp32_rps"] else "—",
                 "—" if r["gpu_util_percent"] is None else f"{r['gpu_util_percent']:.0f}",
                 "—" if r["d_si_sdr"] is None else f"{r['d_si_sdr']:+.3f}",
                 "—" if r["d_pesq"] is None else f"{r['d_pesq']:+.3f}")
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        gate = f"; QUALITY GATE FAILED: {r['gate']}" if r.get("gate") else ""
        print(f"{r['model']}: tensorrt {r.get('tensorrt', '—')}; build {r['build_seconds']} s"
              f"{gate}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the shared data folder (models/, audio/)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/secompile-gpu-check"))
    parser.add_argument("--eval-pairs", type=int, default=8,
                        help="VoiceBank-DEMAND pairs to score (copied to --out)")
    args = parser.parse_args()
    missing = _missing_modules()
    if missing:
        print(f"gpu_check: missing Python modules: {', '.join(missing)} (this check installs "
              "nothing)", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (PyTorch {torch.__version__}, CUDA "
              f"{torch.version.cuda}); nothing to check", file=sys.stderr)
        return 2
    from secompile.compiler.app.build import BuildRequest, run_build
    from secompile.compiler.reporting.gates import GateError
    from secompile.targets.hardware import describe, detect

    print("\n".join(describe(detect())))
    data = args.data if args.data and (args.data / "models").is_dir() else None
    chosen = [(name, (ref, data / rel)) for name, (ref, rel) in MODELS.items()
              if data and (data / rel).is_file()] or [("default", ("default", None))]
    eval_dir = _eval_subset(data, args.out / "eval", args.eval_pairs) if data else None
    rows = []
    for name, (ref, weights) in chosen:
        started = time.perf_counter()
        request = BuildRequest(model=ref, weights=weights, out=args.out / name, targets=("gpu",),
                               eval=eval_dir, ray=None)
        gate = None
        try:
            report = run_build(request, log=lambda line: print(line, file=sys.stderr))
        except GateError as exc:  # still a measurement: the table shows it, marked
            gate = str(exc)
            report = json.loads((args.out / name / "rejected-report.json").read_text())
        rows.append({**_row(name, report["targets"]["gpu"], time.perf_counter() - started),
                     "gate": gate})
    _print(rows)
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=2))
    print(f"json: {args.out / 'gpu_check.json'}")
    return 0


def _eval_subset(data: Path, folder: Path, count: int) -> Path | None:
    """The first ``count`` VoiceBank-DEMAND pairs, copied to ``folder`` (None when absent)."""
    import shutil

    source = data / "audio" / "vbdemand"
    if not (source / "noisy").is_dir():
        return None
    for side in ("clean", "noisy"):
        (folder / side).mkdir(parents=True, exist_ok=True)
        for wav in sorted((source / side).glob("*.wav"))[:count]:
            shutil.copyfile(wav, folder / side / wav.name)
    return folder


if __name__ == "__main__":
    sys.exit(main())
