"""Serving side by side: each model's secompile cpu artifact against its torch eager model, as
``secompile bench`` measures them (batch-1 latency, requests/s at a p99 SLO under Poisson load
with dynamic batching and a searched thread split, peak RSS).

For each model, in one process: the cpu artifact is built with the target's default pipeline
(``compiler.app.build.run_build``; quality evaluated on the project's demo pair, calibration on its
own synthetic mixtures), then :func:`compiler.bench.bench_artifact` runs both sides with the
same SLO, cores and budget. Models: the shipped default model, GTCRN (VoiceBank-DEMAND
weights) and NSNet2 (the official ONNX weights, converted on load); a model whose weights are
missing from ``../shared/data`` is reported as skipped.

    python benchmarks/bench_serving.py [--models default,gtcrn,nsnet2] [--slo-ms 100]
        [--budget-seconds 60] [--pipeline TEXT] [--json benchmarks/results/serving.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from secompile.compiler.app.bench import (
    DEFAULT_SLO_MS,
    BenchOptions,
    bench_artifact,
    max_outside_load,
    render_table,
)
from secompile.compiler.app.build import BuildRequest, run_build
from secompile.compiler.core.errors import SecompileError
from secompile.compiler.core.versions import library_versions, machine_info
from secompile.compiler.runtime.timing import available_cpus

DATA = ROOT.parent / "shared" / "data"
MODELS: dict[str, tuple[str, Path | None]] = {
    "default": ("default", None),
    "gtcrn": ("gtcrn", DATA / "models" / "gtcrn" / "gtcrn_vctk.pt"),
    "nsnet2": ("nsnet2", DATA / "models" / "nsnet2" / "nsnet2-16k.onnx"),
}
RESULTS = ROOT / "benchmarks" / "results"


def bench_model(name: str, work: Path, options: BenchOptions, pipeline: str | None,
                verbose: bool) -> dict[str, Any]:
    """Build one model's cpu artifact and bench it against its torch model."""
    model, weights = MODELS[name]
    if weights is not None and not weights.is_file():
        return {"model": name, "skipped": f"weights not found: {weights}"}
    started = time.perf_counter()
    try:
        report = run_build(BuildRequest(model=model, weights=weights, targets=("cpu",),
                                        out=work, pipeline=pipeline, ray=None))
    except SecompileError as exc:
        return {"model": name, "error": f"build failed: {type(exc).__name__}: {exc}"}
    built_s = time.perf_counter() - started
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else (lambda _: None)
    result = bench_artifact(work / "cpu" / "model.onnx", report["model"]["source"], options,
                            log=log)
    result["artifact"] = f"<tmp>/{name}/cpu/model.onnx"
    result["build"] = {"pipeline": report["targets"]["cpu"]["pipeline"],
                       "seconds": round(built_s, 1),
                       "report_speedup": report["targets"]["cpu"].get("speedup"),
                       "report_throughput_speedup":
                           report["targets"]["cpu"].get("throughput_speedup")}
    result["model_key"] = name
    return result


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_summary(results: list[dict[str, Any]], slo_ms: float) -> str:
    """One Markdown row per model."""
    header = (f"| model | torch b1 p50 (ms) | artifact b1 p50 (ms) | b1 speedup | torch rps at "
              f"p99<={slo_ms:g} ms (config, p99) | artifact rps (config, p99) | rps ratio | "
              "peak RSS torch / artifact (MiB) | confirmed | max other load |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "sides" not in r:
            lines.append(f"| {r['model']} | {r.get('skipped') or r.get('error')} |"
                         + " |" * 8)
            continue
        t, a = r["sides"]["torch"], r["sides"]["artifact"]

        def served(side: dict[str, Any]) -> str:
            return (f"{side['rps_at_slo']:.1f} ({side['best_config'] or 'none'}, "
                    f"{_cell(side['p99_at_rps_ms'], '.1f')})")

        def rss(side: dict[str, Any]) -> str:
            return _cell((side.get("memory") or {}).get("peak_rss_mb"), ".0f")

        lines.append(
            f"| {r['model_key']} | {t['latency_ms']['p50']:.2f} | {a['latency_ms']['p50']:.2f} | "
            f"{r['latency_p50_ratio']:.2f}x | {served(t)} | {served(a)} | "
            f"{_cell(r['rps_ratio'], '.2f')}x | {rss(t)} / {rss(a)} | "
            f"{'yes' if t['confirmed'] else 'no'} / {'yes' if a['confirmed'] else 'no'} | "
            f"{_cell(max_outside_load(r), '.0%')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,gtcrn,nsnet2")
    parser.add_argument("--slo-ms", type=float, default=DEFAULT_SLO_MS)
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--cores", type=int, default=available_cpus())
    parser.add_argument("--pipeline", default=None,
                        help="Build pipeline (default: the cpu target's default pipeline).")
    parser.add_argument("--json", type=Path, default=RESULTS / "serving.json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    options = BenchOptions(slo_ms=args.slo_ms, budget_s=args.budget_seconds, cores=args.cores)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as work:
        for name in args.models.split(","):
            result = bench_model(name, Path(work) / name, options, args.pipeline, args.verbose)
            if "sides" in result:
                print(f"### {name}\n", flush=True)
                print(render_table(result), flush=True)
            else:
                print(f"### {name}: {result.get('skipped') or result.get('error')}\n", flush=True)
            results.append(result)
    summary = render_summary(results, args.slo_ms)
    print(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": "python benchmarks/bench_serving.py " + shlex.join(sys.argv[1:]),
        "machine": machine_info(), "versions": library_versions(),
        "slo_ms": args.slo_ms, "budget_seconds": args.budget_seconds, "cores": args.cores,
        "summary_markdown": summary, "results": results,
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
