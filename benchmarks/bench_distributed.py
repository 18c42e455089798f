"""Distributed validation benchmark: scoring the shared evaluation pairs serially vs on Ray.

    python benchmarks/bench_distributed.py [--weights PATH] [--repeats 3] [--json OUT]

GTCRN is exported once (``fuse-conv-bn,export-onnx``); then the quality scoring that
``validate`` runs (the artifact and the fp32 torch model on every pair, SI-SDR / PESQ-WB /
ESTOI of noisy, reference and artifact) is timed three ways on all VoiceBank-DEMAND and DNS3
pairs:

* ``serial``: in this process, as ``--no-ray`` does, with both models already in memory;
* ``ray_warm``: on a running local Ray whose workers have imported the libraries and loaded
  both models, as the serial side has (the steady state of ``build-many`` or a long job);
* ``ray_cold_workers``: on a running local Ray with fresh workers that import torch and
  rebuild both models inside the timed region (a new job joining a cluster);
* ``ray_with_start``: what ``--ray auto`` costs a single build: starting the local Ray too.

Each is repeated (fresh Ray each time) and the median reported; the script checks the three
produce identical metrics. Prints a table and writes JSON
(default ``benchmarks/results/distributed.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PAIRS = (SHARED / "audio" / "vbdemand", SHARED / "audio" / "dns3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "models" / "gtcrn" / "gtcrn_vctk.pt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1,
                        help="score the pair list this many times over (a larger corpus)")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "distributed.json")
    args = parser.parse_args()

    import torch

    from secompile.calibration.datasets import PairedFolder
    from secompile.compiler.core.context import PassContext
    from secompile.compiler.core.manager import PassManager
    from secompile.compiler.core.pipeline import PipelineSpec
    from secompile.compiler.core.versions import library_versions, machine_info
    from secompile.compiler.distributed.executors import RayExecutor
    from secompile.compiler.distributed.scoring import AudioRules, score_file, score_on, summarize
    from secompile.compiler.runtime.parity import default_instruments
    from secompile.compiler.runtime.runners import OrtRunner, TorchRunner
    from secompile.models.registry import load_model
    from secompile.passes import register_builtin
    from secompile.targets import get_target

    artifact = load_model("gtcrn", args.weights)
    files = [(n, str(root / "noisy" / n), str(root / "clean" / n))
             for root in PAIRS for n in PairedFolder.scan(root, 16000).names] * args.copies
    rules = AudioRules(16000)
    durations = [sf.info(noisy).duration for _, noisy, _ in files]
    with tempfile.TemporaryDirectory() as work:
        target = get_target("cpu")
        parity = PairedFolder.scan(PAIRS[0], 16000).load()[0].noisy[None, :]
        ctx = PassContext(target=target, workdir=Path(work), baseline=artifact,
                          parity_audio=parity)
        register_builtin()  # as the build does, before pass names are resolved
        run = PassManager.from_spec(PipelineSpec.parse("fuse-conv-bn,export-onnx"), target,
                                    instruments=default_instruments()).run(artifact, ctx)
        onnx_bytes = run.artifact.path.read_bytes()
        onnx_path = Path(work) / "model.onnx"
        onnx_path.write_bytes(onnx_bytes)
        buffer = io.BytesIO()
        torch.save(artifact.module.state_dict(), buffer)
        state = buffer.getvalue()

        def serial() -> list[dict]:
            reference = TorchRunner(artifact.module, 1)
            candidate = OrtRunner(onnx_path, 1)
            return [score_file(*f, rules, reference, candidate) for f in files]

        def on_ray(mode: str) -> tuple[list[dict], float, int]:
            executor = RayExecutor()
            if mode != "ray_with_start":
                executor.workers  # noqa: B018  (starts the local Ray outside the timed region)
            if mode == "ray_warm":  # workers import the libraries and load both models first
                score_on(executor, files, durations, rules, onnx_bytes, artifact.info.source,
                         state)
            start = time.perf_counter()
            rows, tasks = score_on(executor, files, durations, rules, onnx_bytes,
                                   artifact.info.source, state)
            seconds = time.perf_counter() - start
            executor.close()
            return rows, seconds, tasks

        modes = ("serial", "ray_warm", "ray_cold_workers", "ray_with_start")
        timings: dict[str, list[float]] = {mode: [] for mode in modes}
        summaries = {}
        tasks = 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            summaries["serial"] = summarize(serial())
            timings["serial"].append(time.perf_counter() - start)
            for mode in modes[1:]:
                rows, seconds, tasks = on_ray(mode)
                summaries[mode] = summarize(rows)
                timings[mode].append(seconds)
    reference = json.dumps(summaries["serial"], sort_keys=True)
    identical = {k: json.dumps(v, sort_keys=True) == reference for k, v in summaries.items()}
    medians = {k: float(np.median(v)) for k, v in timings.items()}
    rows_out = [{"mode": k, "median_s": medians[k], "runs_s": timings[k],
                 "speedup_vs_serial": medians["serial"] / medians[k],
                 "metrics_identical_to_serial": identical[k]} for k in timings]
    print(f"{len(files)} pairs ({args.copies}x the shared set), GTCRN {args.weights.name}, "
          f"{tasks} Ray tasks, "
          f"median of {args.repeats}")
    print("| mode | median s | speedup vs serial | metrics identical |")
    print("|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['mode']} | {r['median_s']:.2f} | {r['speedup_vs_serial']:.2f}x "
              f"| {r['metrics_identical_to_serial']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(), "versions": library_versions(), "pairs": len(files),
        "copies": args.copies,
        "tasks": tasks, "rows": rows_out,
        "quality": {k: summaries["serial"][k] for k in ("baseline", "artifact", "files")},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
