"""INT8 side by side: torch eager fp32, plain ORT fp32 export, plain ``quantize_static``, INC
autotune, secompile cpu and secompile edge, on GTCRN (dns3) and NSNet2.

For each model, in one process and one run: the secompile cpu and edge artifacts are built with
their default pipelines (calibration on the DNS3 noisy files, evaluation and quality gates on the
VoiceBank-DEMAND pairs, which never overlap); the plain fp32 export is ``export-onnx`` alone;
plain ``quantize_static`` is ONNX Runtime's with every default, calibrated on the same clips.
Then every candidate is timed interleaved on the same 1 s of real audio with the same thread
count (median of ``--repeats``; throughput on a batch of 8), and scored on the 15 pairs
(SI-SDR, PESQ-WB, ESTOI against clean; deltas against torch fp32, overall and in the worst
input-SNR bucket). For NSNet2 the official ``nsnet2-16k.onnx`` (log-power features in, gain
out: it does less work than a waveform artifact) is timed on the same clip's features.

INC (Intel Neural Compressor) needs its own environment (``neural-compressor[pt]``); its
column is read from ``benchmarks/results/inc_autotune_<model>.json`` written by
``benchmarks/inc_autotune.py`` in that environment, so it is not timed in the same process.

    python benchmarks/bench_int8.py [--models gtcrn,nsnet2] [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from secompile.calibration.audio import looped_clip, read_audio
from secompile.calibration.datasets import AudioFolder, PairedFolder
from secompile.calibration.metrics import bucket_name, quality, snr_db
from secompile.calibration.readers import ClipReader, calibration_clips
from secompile.compiler.app.build import BuildRequest, run_build
from secompile.compiler.core.errors import SecompileError
from secompile.compiler.runtime.runners import OrtRunner, TorchRunner
from secompile.compiler.runtime.timing import measure_interleaved
from secompile.models.registry import load_model

DATA = ROOT.parent / "shared" / "data"
EVAL = DATA / "audio" / "vbdemand"
CALIB = DATA / "audio" / "dns3" / "noisy"
MODELS = {
    "gtcrn": ("gtcrn", DATA / "models" / "gtcrn" / "gtcrn_dns3.pt"),
    "nsnet2": ("nsnet2", DATA / "models" / "nsnet2" / "nsnet2-16k.onnx"),
}
RESULTS = ROOT / "benchmarks" / "results"
RATE = 16000


def _build(model: str, weights: Path, out: Path, target: str, pipeline: str | None,
           threads: int) -> tuple[Path | None, dict[str, Any]]:
    """Build one target; the artifact path (None when the build failed) and its report."""
    request = BuildRequest(model=model, weights=weights, out=out, targets=(target,),
                           pipeline=pipeline, calib=CALIB, eval=EVAL, threads=threads)
    try:
        report = run_build(request)
    except SecompileError as exc:
        return None, {"error": f"{type(exc).__name__}: {exc}"}
    checks = (report.get("gates", {}).get("checks") or {}).get(target, [])
    return out / target / "model.onnx", {**report["targets"][target], "gates": checks}


def _plain_quantize_static(fp32: Path, out: Path) -> tuple[Path | None, str | None]:
    """ONNX Runtime's ``quantize_static`` with every default (QDQ, QInt8, MinMax, per-tensor)."""
    from onnxruntime.quantization import quantize_static

    from secompile.compiler.lowering.onnx_export import quiet_ort_tools

    clips = calibration_clips(AudioFolder.scan(CALIB, RATE).load(), 4.0, RATE, 16)
    try:
        with quiet_ort_tools():
            quantize_static(str(fp32), str(out), ClipReader("noisy", clips))
        OrtRunner(out, 1)(clips[0])
    except Exception as exc:  # noqa: BLE001  (recorded: it is the behaviour being compared)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {first[:200]}"
    return out, None


def _official_features(module: torch.nn.Module, clip: np.ndarray) -> np.ndarray:
    """NSNet2's input for ``clip``: log10 power spectrum ``[1, T, 161]`` (models.nsnet2),
    from the loaded NSNet2 ``module``'s own STFT."""
    from secompile.models.nsnet2 import NSNet2Core

    with torch.no_grad():
        spec = module.analyse(torch.from_numpy(clip))
    return NSNet2Core.features(spec).numpy().astype(np.float32)


def _score(runner: Any, pairs: list) -> dict[str, Any]:
    """Mean quality over the pairs and per input-SNR bucket."""
    rows = []
    for pair in pairs:
        enhanced = runner(pair.noisy[None, :])[0]
        rows.append({**quality(enhanced, pair.clean, RATE),
                     "bucket": bucket_name(snr_db(pair.noisy, pair.clean))})
    metrics = ("si_sdr", "pesq", "stoi")
    mean = {m: float(np.nanmean([r[m] for r in rows])) for m in metrics}
    buckets = {}
    for name in sorted({r["bucket"] for r in rows}):
        group = [r for r in rows if r["bucket"] == name]
        buckets[name] = {m: float(np.nanmean([r[m] for r in group])) for m in metrics}
    return {"mean": mean, "buckets": buckets}


def _deltas(scored: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    out = {f"d_{m}": scored["mean"][m] - reference["mean"][m] for m in ("si_sdr", "pesq", "stoi")}
    for m in ("si_sdr", "pesq"):
        out[f"worst_bucket_d_{m}"] = min(scored["buckets"][b][m] - reference["buckets"][b][m]
                                         for b in reference["buckets"])
    return out


def _size(path: Path | None) -> int | None:
    return path.stat().st_size if path else None


def bench_model(name: str, repeats: int, threads: int, work: Path) -> dict[str, Any]:
    """Every column for one model."""
    model, weights = MODELS[name]
    torch_module = load_model(model, weights).module
    buffer = io.BytesIO()
    torch.save(torch_module.state_dict(), buffer)
    rows: dict[str, dict[str, Any]] = {"torch eager fp32": {"size_bytes": len(buffer.getvalue())}}
    plain, _ = _build(model, weights, work / "plain", "cpu", "export-onnx", threads)
    rows["plain ORT fp32 export"] = {"size_bytes": _size(plain)}
    static, error = _plain_quantize_static(plain, work / "plain_static.onnx")
    rows["plain quantize_static"] = {"size_bytes": _size(static), "error": error}
    built = {}
    for target in ("cpu", "edge"):
        path, entry = _build(model, weights, work / target, target, None, threads)
        quantize = next((p["metrics"] for p in entry.get("passes", [])
                         if p["name"] == "quantize"), {})
        rows[f"secompile {target}"] = {
            "size_bytes": _size(path), "error": entry.get("error"),
            "shipped": quantize.get("shipped"), "reason": quantize.get("reason"),
            "layers_fp32": [f"{layer['name']} ({layer['kind']})"
                            for layer in quantize.get("layers", []) if layer["tier"] == "fp32"],
            "gates": {"checked": len(entry.get("gates", [])), "failed": [
                c for c in entry.get("gates", []) if c["status"] == "failed"]},
        }
        built[target] = path
    runners: dict[str, Any] = {"torch eager fp32": TorchRunner(torch_module, threads)}
    for label, path in (("plain ORT fp32 export", plain), ("plain quantize_static", static),
                        ("secompile cpu", built["cpu"]), ("secompile edge", built["edge"])):
        if path is not None:
            runners[label] = OrtRunner(path, threads)
    pairs = PairedFolder.scan(EVAL, RATE).load()
    clip = looped_clip([read_audio(min((EVAL / "noisy").glob("*.wav")), RATE)], RATE)  # 1 s
    candidates = {label: (lambda r=r: r(clip)) for label, r in runners.items()}
    if name == "nsnet2":
        official = OrtRunner(weights, threads)
        features = _official_features(torch_module, clip)
        candidates["official nsnet2-16k.onnx (features in)"] = lambda: official(features)
        rows["official nsnet2-16k.onnx (features in)"] = {"size_bytes": _size(weights)}
    timed = measure_interleaved(candidates, repeats=repeats)
    batch = np.repeat(clip, 8, axis=0)
    batched = measure_interleaved({k: (lambda r=r: r(batch)) for k, r in runners.items()},
                                  repeats=max(5, repeats // 3))
    reference = _score(runners["torch eager fp32"], pairs)
    for label, row in rows.items():
        if label in timed.stats:
            row["latency_p50_ms"] = round(timed.stats[label].percentile(50), 3)
        if label in batched.stats:
            row["throughput_rps"] = round(8 / (batched.stats[label].percentile(50) / 1e3), 1)
        if label in runners:
            scored = reference if label == "torch eager fp32" else _score(runners[label], pairs)
            row["quality"] = scored["mean"]
            row.update({k: round(v, 4) for k, v in _deltas(scored, reference).items()})
    rows["INC autotune (own venv)"] = _inc_row(name)
    fp32_ort = rows["plain ORT fp32 export"].get("latency_p50_ms")
    official = rows.get("official nsnet2-16k.onnx (features in)", {}).get("latency_p50_ms")
    for row in rows.values():
        if fp32_ort and row.get("latency_p50_ms"):
            row["speedup_vs_plain_ort"] = round(fp32_ort / row["latency_p50_ms"], 3)
        if official and row.get("latency_p50_ms"):
            row["speedup_vs_official_onnx"] = round(official / row["latency_p50_ms"], 3)
        if row.get("size_bytes"):
            row["smaller_than_torch_weights"] = round(
                rows["torch eager fp32"]["size_bytes"] / row["size_bytes"], 3)
    return {"model": name, "threads": threads, "repeats": repeats, "rows": rows,
            "timing": {"blocks_rerun_for_outside_load": timed.noisy_blocks + batched.noisy_blocks,
                       "blocks_measured_under_outside_load": timed.loaded_blocks
                       + batched.loaded_blocks}}


def _inc_row(name: str) -> dict[str, Any]:
    """The INC column from ``inc_autotune_<name>.json``: its faster INT8 variant (eager or
    inductor-compiled), whole-file deltas against fp32 (as deployed: fixed 1 s chunks), the
    ops INC left in fp32. Timed in its own process: compare its ratio to its own fp32 eager
    run (``speedup_vs_own_torch_eager``), not its milliseconds, with this run's."""
    path = RESULTS / f"inc_autotune_{name}.json"
    if not path.is_file():
        return {"error": f"{path.name} not found: run benchmarks/inc_autotune.py"}
    data = json.loads(path.read_text())
    if data.get("errors") and "latency_ms" not in data:
        return {"error": "; ".join(map(str, data["errors"]))[:300]}
    latency = data["latency_ms"]
    variant = min(("int8_eager", "int8_compiled"), key=lambda k: latency[k]["p50"])
    delta = data["quality"][f"delta_{variant}_vs_fp32_full"]
    fp32_ops = sorted(data.get("graph", {}).get("fp32_ops", {}))
    return {
        "from": str(path.relative_to(ROOT)), "variant": variant,
        "latency_p50_ms_own_process": latency[variant]["p50"],
        "speedup_vs_own_torch_eager": round(latency["fp32_eager"]["p50"]
                                            / latency[variant]["p50"], 3),
        "size_bytes": data["size"]["int8_inc_save_bytes"],
        "d_si_sdr": delta["si_sdr"], "d_pesq": delta["pesq"], "d_stoi": delta["estoi"],
        "left_fp32_ops": fp32_ops,
        "reason": (f"{variant}: {latency[variant]['p50']:.2f} ms in its own run = "
                   f"{latency['fp32_eager']['p50'] / latency[variant]['p50']:.2f}x its torch "
                   f"eager; 1 s fixed-shape chunks; fp32 ops: {', '.join(fp32_ops)}"),
    }


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def render(result: dict[str, Any]) -> str:
    """A Markdown table of one model's columns."""
    title = (f"### {result['model']} ({result['threads']} thread(s), median of "
             f"{result['repeats']})")
    header = ("| candidate | p50 1 s (ms) | vs plain ORT | vs official | rps (batch 8) | "
              "size (KB) | x smaller | ΔSI-SDR | ΔPESQ | ΔESTOI | worst-bucket ΔSI-SDR / ΔPESQ "
              "| note |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in result["rows"].items():
        size = row.get("size_bytes")
        note = row.get("error") or row.get("reason") or (
            f"shipped {row['shipped']}" if row.get("shipped") else "")
        lines.append(
            f"| {label} | {_cell(row, 'latency_p50_ms', '.2f')} | "
            f"{_cell(row, 'speedup_vs_plain_ort', '.2f')} | "
            f"{_cell(row, 'speedup_vs_official_onnx', '.2f')} | "
            f"{_cell(row, 'throughput_rps', '.1f')} | "
            f"{format(size / 1024, '.0f') if size else '-'} | "
            f"{_cell(row, 'smaller_than_torch_weights', '.2f')} | "
            f"{_cell(row, 'd_si_sdr', '+.3f')} | {_cell(row, 'd_pesq', '+.3f')} | "
            f"{_cell(row, 'd_stoi', '+.4f')} | {_cell(row, 'worst_bucket_d_si_sdr', '+.3f')} / "
            f"{_cell(row, 'worst_bucket_d_pesq', '+.3f')} | {str(note)[:90]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gtcrn,nsnet2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS / "int8.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as work:
        for name in args.models.split(","):
            result = bench_model(name, args.repeats, args.threads, Path(work) / name)
            print(render(result), flush=True)
            results.append(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
