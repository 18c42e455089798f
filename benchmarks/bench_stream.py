"""Streaming benchmark: the stream artifact hop by hop against the offline artifact, per model.

    python benchmarks/bench_stream.py [--models gtcrn_dns3,...] [--json OUT]

For each model (the three GTCRN checkpoints, NSNet2 from its official ONNX file and the shipped
default model) it runs the fp32 streaming part of secompile's edge pipeline without the cache
(``fuse-conv-bn,merge-grouped-gru,stream,export-onnx``), then, in one process, on one thread:

* equivalence: ``model_stream.onnx`` run hop by hop from zero state against the offline torch
  model (zero boundary; float32 with the in-graph convolution STFT the offline artifact uses,
  float64, and float32 with ``torch.stft``) on every VoiceBank-DEMAND and DNS3 pair: max abs
  error and max |ΔSI-SDR|;
* per-hop latency p50/p99 over a 10 s real clip (3 passes), and the real-time factor;
* cost per hop of audio: the stream against the offline ``model.onnx`` on the same 10 s, timed
  interleaved (medians), and against re-running the offline model on the last second of audio
  every hop (what a stateless deployment has to do);
* the share of hops over their deadline (one hop of audio) with every core busy (one
  busy-looping process per core).

Prints a table and writes JSON (default ``benchmarks/results/stream.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PIPELINE = "fuse-conv-bn,merge-grouped-gru,stream,export-onnx"
MODELS = {
    "gtcrn_dns3": ("gtcrn", SHARED / "models" / "gtcrn" / "gtcrn_dns3.pt"),
    "gtcrn_dns3_stream": ("gtcrn", SHARED / "models" / "gtcrn" / "gtcrn_dns3_stream.pt"),
    "gtcrn_vctk": ("gtcrn", SHARED / "models" / "gtcrn" / "gtcrn_vctk.pt"),
    "nsnet2": ("nsnet2", SHARED / "models" / "nsnet2" / "nsnet2-16k.onnx"),
    "default": ("default", None),
}
PAIRS = (SHARED / "audio" / "vbdemand", SHARED / "audio" / "dns3")


def _build(name: str, weights: Path | None, workdir: Path):
    """The edge pipeline's outputs: (torch artifact, offline ONNX path, stream ONNX path)."""
    from secompile.compiler.core.context import PassContext
    from secompile.compiler.core.manager import PassManager
    from secompile.compiler.core.pipeline import PipelineSpec
    from secompile.compiler.runtime.parity import default_instruments
    from secompile.compiler.runtime.streaming import STREAM_FILE
    from secompile.models.registry import load_model
    from secompile.passes import register_builtin
    from secompile.targets import get_target

    artifact = load_model(name, weights)
    pairs = _pairs()
    target = get_target("edge")
    ctx = PassContext(target=target, workdir=workdir, baseline=artifact,
                      parity_audio=pairs[0].noisy[None, : 4 * 16000], threads=1)
    register_builtin()  # as the build does, before pass names are resolved
    run = PassManager.from_spec(PipelineSpec.parse(PIPELINE), target,
                                instruments=default_instruments()).run(artifact, ctx)
    return artifact, run.artifact.path, ctx.outputs[STREAM_FILE]


def _pairs() -> list:
    from secompile.calibration.datasets import PairedFolder

    return [p for root in PAIRS for p in PairedFolder.scan(root, 16000).load()]


def measure(label: str, name: str, weights: Path | None, clip: np.ndarray) -> dict:
    """Every number of one model's row."""
    from secompile.compiler.runtime.runners import OrtRunner
    from secompile.compiler.runtime.streaming import StreamSession, equivalence, measure_latency
    from secompile.compiler.runtime.timing import measure_interleaved

    with tempfile.TemporaryDirectory() as work:
        artifact, offline_path, stream_path = _build(name, weights, Path(work))
        session = StreamSession(stream_path, threads=1)
        offline = OrtRunner(offline_path, threads=1)
        pairs = _pairs()
        proof = equivalence(session, artifact.module, [p.noisy for p in pairs],
                            [p.clean for p in pairs])
        latency = measure_latency(session, offline, clip)
        second = clip[None, : session.sample_rate]
        rerun = measure_interleaved({"offline_1s": lambda: offline(second)}, repeats=10)
        load = latency["under_load"]
        return {
            "model": label,
            "hop_ms": latency["hop_ms"],
            "delay_ms": 1000 * session.delay_samples / session.sample_rate,
            "states": len(session.state_names),
            "stream_bytes": stream_path.stat().st_size,
            "pairs": proof["files"],
            "max_abs": proof["max_abs"],
            "max_abs_vs_float64": proof["max_abs_vs_float64"],
            "max_abs_vs_torch_stft": proof["max_abs_vs_torch_stft"],
            "offline_fp32_vs_float64": proof["offline_float32_vs_float64"],
            "max_abs_delta_si_sdr": proof["max_abs_delta_si_sdr"],
            "delta_si_sdr_vs_reflect_offline": proof["mean_delta_si_sdr_vs_reflect_offline"],
            "hop_p50_ms": latency["per_hop_ms"]["p50"],
            "hop_p99_ms": latency["per_hop_ms"]["p99"],
            "real_time_factor": latency["real_time_factor"],
            "stream_ms_per_hop": latency["stream_ms_per_hop"],
            "offline_ms_per_hop": latency["offline_ms_per_hop"],
            "rerun_last_1s_ms_per_hop": rerun.stats["offline_1s"].percentile(50),
            "timing_blocks_rerun_for_load": latency["timing_blocks_rerun_for_outside_load"],
            "deadline_miss_share": latency["deadline_miss_share"],
            "loaded_busy_processes": load["busy_processes"],
            "loaded_hop_p99_ms": load["per_hop_ms"]["p99"],
            "loaded_deadline_miss_share": load["deadline_miss_share"],
        }


def _table(rows: list[dict]) -> str:
    head = ("| model | hop ms | pairs | max abs | vs float64 | vs torch.stft | max |ΔSI-SDR| dB "
            "| hop p50 ms "
            "| hop p99 ms "
            "| RTF | stream ms/hop | offline ms/hop | re-run 1 s ms/hop | misses | misses loaded |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['hop_ms']:g} | {r['pairs']} | {r['max_abs']:.2e} "
            f"| {r['max_abs_vs_float64']:.2e} | {r['max_abs_vs_torch_stft']:.2e} "
            f"| {r['max_abs_delta_si_sdr']:.1e} | {r['hop_p50_ms']:.3f} | {r['hop_p99_ms']:.3f} "
            f"| {r['real_time_factor']:.3f} | {r['stream_ms_per_hop']:.3f} "
            f"| {r['offline_ms_per_hop']:.3f} | {r['rerun_last_1s_ms_per_hop']:.3f} "
            f"| {100 * r['deadline_miss_share']:.2f}% "
            f"| {100 * r['loaded_deadline_miss_share']:.2f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "stream.json")
    args = parser.parse_args()
    from secompile.compiler.core.versions import library_versions, machine_info

    pairs = _pairs()
    joined = np.concatenate([p.noisy for p in pairs])
    clip = np.tile(joined, 2)[: 10 * 16000].astype(np.float32)
    rows = []
    for label in args.models.split(","):
        name, weights = MODELS[label]
        rows.append(measure(label, name, weights, clip))
        print(f"measured {label}", file=sys.stderr)
    print(_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": "python benchmarks/bench_stream.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(), "versions": library_versions(), "threads": 1,
        "pipeline": PIPELINE, "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
