"""Pruning and distillation on NSNet2, side by side with its unpruned ONNX export.

One run, three builds of the official NSNet2 weights through ``compiler.app.build.run_build`` (the
code ``secompile build`` runs), each evaluated and gated on the 15 VoiceBank-DEMAND pairs:

* ``fp32``: ``export-onnx,validate`` — the unpruned ORT fp32 export;
* ``pruned``: ``prune{macs_reduction=0.5 ...},export-onnx,validate`` — channels removed until
  the counted MACs halve, fine-tuned by distillation from the original on the project's
  synthetic noisy mixtures (never on the evaluation audio), quality limits 0.1 PESQ / 0.5 dB;
* ``distilled``: ``distill{width=0.6 ...},export-onnx,validate`` — a student with 60% of every
  channel group, trained the same way; its quality loss is reported per input-SNR bucket.

Then the three ``model.onnx`` files are timed interleaved in this process with ONNX Runtime on
the same real audio (1 s and 10 s, batch 1, at each ``--threads`` count; median of
``--repeats``), and the table prints MACs, parameters, latency ratios against the unpruned
export, quality against the original model and the wall time of the prune/distill pass.

    python benchmarks/bench_prune.py [--repeats 30] [--threads 1,2] [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from secompile.calibration.audio import looped_clip, read_audio
from secompile.compiler.app.build import BuildRequest, run_build
from secompile.compiler.reporting.gates import Gates
from secompile.compiler.runtime.runners import OrtRunner
from secompile.compiler.runtime.timing import measure_interleaved

DATA = ROOT.parent / "shared" / "data"
EVAL = DATA / "audio" / "vbdemand"
WEIGHTS = DATA / "models" / "nsnet2" / "nsnet2-16k.onnx"
RESULTS = ROOT / "benchmarks" / "results"
RATE = 16000
LIMITS = "max_pesq_loss=0.1 max_si_sdr_loss=0.5"


def pipelines(steps: int, minutes: float) -> dict[str, str]:
    """The three pipelines compared (see the module docstring)."""
    training = f"data=synthetic steps={steps} minutes={minutes}"
    return {
        "fp32": "export-onnx,validate",
        "pruned": f"prune{{macs_reduction=0.5 {training} {LIMITS}}},export-onnx,validate",
        "distilled": f"distill{{width=0.6 {training}}},export-onnx,validate",
    }


def _build(name: str, pipeline: str, out: Path, threads: int) -> dict[str, Any]:
    """Build one variant into ``out/name``; a finished build found there is reused (its
    report carries the wall time it took), so a failed timing step does not cost the builds."""
    saved = out / f"{name}.json"
    if saved.is_file() and (out / name / "cpu" / "model.onnx").is_file():
        report = json.loads(saved.read_text())
        if report["targets"]["cpu"]["pipeline"].startswith(pipeline.split("{")[0]):
            print(f"  [{name}] reusing the build in {out / name}")
            return report
    # the limits gate the pruned build; the student's loss is reported, not gated
    gates = Gates(100.0, 10.0) if name == "distilled" else Gates(0.5, 0.1)
    request = BuildRequest(model="nsnet2", weights=WEIGHTS, out=out / name, targets=("cpu",),
                           pipeline=pipeline, eval=EVAL, threads=threads, gates=gates)
    start = time.monotonic()
    report = run_build(request, lambda line: print(f"  [{name}] {line}", flush=True))
    report["wall_seconds"] = round(time.monotonic() - start, 1)
    saved.write_text(json.dumps(report, default=str))
    return report


def _pass_metrics(report: dict[str, Any], name: str) -> dict[str, Any]:
    passes = report["targets"]["cpu"]["passes"]
    return next((p["metrics"] for p in passes if p["name"] == name), {})


def _time(artifacts: dict[str, Path], threads: int, repeats: int) -> dict[str, Any]:
    noisy = read_audio(min((EVAL / "noisy").glob("*.wav")), RATE)
    out: dict[str, Any] = {}
    for seconds in (1, 10):
        clip = looped_clip([noisy], seconds * RATE)  # [1, L]
        runners = {k: OrtRunner(p, threads) for k, p in artifacts.items()}
        timed = measure_interleaved({k: (lambda r=r, c=clip: r(c)) for k, r in runners.items()},
                                    repeats=repeats)
        out[f"{seconds}s"] = {
            "p50_ms": {k: round(s.percentile(50), 3) for k, s in timed.stats.items()},
            "speedup_vs_fp32": {k: round(timed.p50_ratio("fp32", k), 3) for k in artifacts},
            "noisy_blocks": timed.noisy_blocks, "loaded_blocks": timed.loaded_blocks,
        }
    return out


def _row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    validate = _pass_metrics(report, "validate")
    quality = validate.get("quality", {})
    shrink = _pass_metrics(report, "prune") or _pass_metrics(report, "distill")
    row: dict[str, Any] = {
        "pipeline": report["targets"]["cpu"]["pipeline"],
        "quality_vs_original": quality.get("delta"),
        "artifact_quality": quality.get("artifact"),
        "original_quality": quality.get("baseline"),
        "buckets": {b: {"files": v["files"],
                        "delta": {k: round(v["artifact"][k] - v["baseline"][k], 4)
                                  for k in v["artifact"]}}
                    for b, v in quality.get("buckets", {}).items()},
        "size_bytes": validate.get("size_bytes", {}).get("artifact"),
        "build_seconds": report["wall_seconds"],
    }
    if shrink:
        row.update({
            "pass_seconds": shrink.get("seconds"),
            "macs_per_second": shrink["macs_per_second"],
            "params": shrink["params"],
            "refused": shrink.get("refused"),
            "fine_tune": {k: shrink["fine_tune"][k] for k in
                          ("steps", "seconds", "stop_reason", "best_step", "holdout_si_sdr_db")},
            "groups": shrink.get("groups") or shrink.get("scaled"),
        })
    return row


def _bucket_low(item: tuple[str, Any]) -> float:
    """Sort key of an input-SNR bucket name (``<5dB``, ``5-10dB``, ``>=15dB``)."""
    name = item[0].removesuffix("dB")
    return -np.inf if name.startswith("<") else float(name.lstrip(">=").split("-")[0])


def main() -> None:
    """Build, time and score; print the table and write ``results/prune.json``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "prune.json")
    parser.add_argument("--work", type=Path,
                        help="keep the builds here (and reuse finished ones); default: a "
                             "temporary folder")
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"NSNet2 weights not found at {WEIGHTS}")

    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        artifacts = {}
        for name, pipeline in pipelines(args.steps, args.minutes).items():
            report = _build(name, pipeline, work, args.build_threads)
            rows[name] = _row(name, report)
            artifacts[name] = work / name / "cpu" / "model.onnx"
        timing = {f"{t}_threads": _time(artifacts, int(t), args.repeats)
                  for t in args.threads.split(",")}

    print(f"\nNSNet2 on {EVAL} (15 pairs), ORT CPU, batch 1, median of {args.repeats}")
    header = (f"{'artifact':10s} {'status':8s} {'MMACs/s':>8s} {'params':>9s} {'pass s':>7s} "
              f"{'dPESQ':>7s} {'dSI-SDR':>8s} {'dESTOI':>7s}")
    speed_cols = [f"{t}/{s}" for t in timing for s in ("1s", "10s")]
    print(header + "".join(f" {c.replace('_threads', 'T'):>10s}" for c in speed_cols))
    original = rows["pruned"]["macs_per_second"]["before"], rows["pruned"]["params"]["before"]
    for name, row in rows.items():
        status = "refused" if row.get("refused") else "shipped"
        side = "before" if row.get("refused") else "after"
        macs = row["macs_per_second"][side] if "macs_per_second" in row else original[0]
        params = row["params"][side] if "params" in row else original[1]
        delta = row["quality_vs_original"] or {}
        line = (f"{name:10s} {status:8s} {macs / 1e6:8.1f} {params:9d} "
                f"{row.get('pass_seconds') or 0:7.1f} {delta.get('pesq', np.nan):+7.3f} "
                f"{delta.get('si_sdr', np.nan):+8.3f} {delta.get('stoi', np.nan):+7.4f}")
        for t in timing:
            for s in ("1s", "10s"):
                line += f" {timing[t][s]['speedup_vs_fp32'][name]:9.2f}x"
        print(line)
    print("\nstatus: whether prune's quality limits let the pruned model ship; speed columns: "
          "p50 latency of the unpruned fp32 export / this artifact's (threads/clip length)")
    print("quality: artifact minus original NSNet2 (torch fp32), mean over the 15 pairs")
    print("\ndistilled student, quality change per input-SNR bucket:")
    for bucket, value in sorted(rows["distilled"]["buckets"].items(), key=_bucket_low):
        d = value["delta"]
        print(f"  {bucket:10s} {value['files']:2d} files  dPESQ {d['pesq']:+.3f}  "
              f"dSI-SDR {d['si_sdr']:+.3f}  dESTOI {d['stoi']:+.4f}")
    result = {"rows": rows, "timing": timing, "repeats": args.repeats,
              "pipelines": pipelines(args.steps, args.minutes)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
