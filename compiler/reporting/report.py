"""Report and manifest writers: ``report.json``, ``report.md`` and ``<target>/manifest.json``.

``report.json`` contract (CI steps and later tooling read these names):
``baseline.latency_ms.p50`` and, per target, ``targets.<t>.speedup``, ``size_reduction``,
``throughput_speedup``, ``memory_reduction``, ``quality_delta.{si_sdr,pesq,stoi}`` and
``passes[]`` (name, seconds, modified, cache, metrics). Every number comes from the
``validate`` pass's measurements; a target built without ``validate`` reports ``null``.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

from secompile.compiler.core.artifact import file_sha256
from secompile.compiler.core.versions import library_versions, machine_info
from secompile.compiler.runtime.streaming import CHUNK_INPUT, CHUNK_OUTPUT


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become ``None``."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (NaN written as null)."""
    path.write_text(json.dumps(_clean(data), indent=2, sort_keys=False, default=str) + "\n")


def pass_entries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-pass part of a target's report."""
    keys = ("name", "seconds", "modified", "cache", "peak_rss_mb", "parity_max_abs",
            "parity_tolerance", "parity_vs_float64", "dump", "config", "metrics")
    return [{k: r[k] for k in keys if k in r} for r in records]


VALIDATORS = ("validate", "validate-gpu")


def validation_metrics(run: Any) -> dict[str, Any]:
    """The measurements the summary and the quality gates use: ``validate``'s (on the CPU), else
    ``validate-gpu``'s (on a GPU, its primary artifact), else empty."""
    return run.metrics_of("validate") or run.metrics_of("validate-gpu")


def validation_entry(run: Any, unvalidated: str | None) -> dict[str, Any]:
    """Where the artifact was measured, or why it was not."""
    if unvalidated is not None:
        checked = ("its quality was scored with FP16 simulated on the CPU (FP16 storage of "
                   "every tensor between operators, fp32 arithmetic)"
                   if run.metrics_of("fp16") and (run.metrics_of("validate").get("quality"))
                   else "it was checked on the CPU only")
        return {"status": "unvalidated",
                "why": f"built without the target's hardware ({unvalidated}); {checked}; no "
                       "latency, throughput or memory was measured on the target's hardware"}
    gpu = run.metrics_of("validate-gpu")
    if gpu:
        return {"status": "validated on GPU", "device": gpu["device"]["name"]}
    if run.metrics_of("validate"):
        return {"status": "validated on CPU"}
    return {"status": "not validated", "why": "the pipeline has no validate pass"}


def gpu_entry(run: Any) -> dict[str, Any] | None:
    """What the gpu passes made and measured: FP16 ONNX, AOTInductor package, Torch-TensorRT
    program with its op coverage, and the GPU measurements; ``None`` when none ran."""
    made = {name: run.metrics_of(name) for name in ("fp16", "aot-inductor", "tensorrt",
                                                     "validate-gpu")}
    if not any(made.values()):
        return None
    return {"fp16_onnx": made["fp16"] or None, "aot_inductor": made["aot-inductor"] or None,
            "tensorrt": made["tensorrt"] or None, "measured": made["validate-gpu"] or None}


def target_entry(name: str, run: Any, artifact_rel: str,
                 unvalidated: str | None = None) -> dict[str, Any]:
    """The report entry of one target from its pipeline run."""
    v = validation_metrics(run)
    q = v.get("quality") or {}
    delta = q.get("delta")
    return {
        "artifact": artifact_rel,
        "pipeline": run.pipeline,
        "speedup": v.get("speedup"),
        "speedup_10s": v.get("speedup_10s"),
        "size_reduction": v.get("size_reduction"),
        "throughput_speedup": v.get("throughput_speedup"),
        "memory_reduction": v.get("memory_reduction"),
        "quality_delta": {k: delta[k] for k in ("si_sdr", "pesq", "stoi")} if delta else None,
        "quality": {k: q[k] for k in ("noisy", "baseline", "artifact", "buckets", "files",
                                      "failed_files", "skipped_files", "eval_set",
                                      "max_abs_vs_baseline",
                                      "execution") if k in q} or None,
        "latency_ms": run.metrics_of("validate").get("latency_ms"),
        "timing": v.get("timing"),
        "throughput_rps": v.get("throughput_rps"),
        "peak_rss_mb": v.get("peak_rss_mb"),
        "size_bytes": v.get("size_bytes"),
        "streaming": _streaming_entry(run, v),
        "precision": precision_entry(run),
        "shrink": shrink_entry(run),
        "gpu": gpu_entry(run),
        "validation": validation_entry(run, unvalidated),
        "cache_hits": run.cache_hits,
        "passes": pass_entries(run.records),
    }


def precision_entry(run: Any) -> dict[str, Any] | None:
    """What ``quantize`` shipped and why, when the pipeline ran it: the precision, the reason
    for fp32, the INT8 layout, the measured INT8 speed and the layers kept in fp32."""
    made = run.metrics_of("quantize")
    if not made:
        return None
    layers = made.get("layers", [])
    return {
        "shipped": made.get("shipped"),
        "reason": made.get("reason"),
        "layout": made.get("layout"),
        "cpu_int8_kernel": (made.get("cpu") or {}).get("kernel"),
        "int8_speedup_vs_fp32_onnx": (made.get("speed") or {}).get("speedup"),
        "fidelity_db": made.get("fidelity_db"),
        "layers_int8": sum(layer["tier"] == "int8" for layer in layers),
        "layers_int8_weights": sum(layer["tier"] == "weights" for layer in layers),
        "layers_fp32": [{"name": layer["name"], "kind": layer["kind"], "why": layer["notes"]
                         or ["input/output layer cap (io_layers)"]}
                        for layer in layers if layer["tier"] == "fp32"],
        "kept_fp32_always": made.get("kept_fp32_always", []),
    }


SHRINKERS = ("prune", "distill")


def shrink_entry(run: Any) -> dict[str, Any] | None:
    """What ``prune`` and ``distill`` did, when the pipeline ran them: whether the model was
    replaced (or why not), parameters, counted MACs, torch latency and quality before and
    after (overall and per input-SNR bucket), the channel groups and the fine-tuning run."""
    out: dict[str, Any] = {}
    for record in run.records:
        if record["name"] not in SHRINKERS:
            continue
        made = record["metrics"]
        quality = made.get("quality") or {}
        tune = made.get("fine_tune") or {}
        out[record["name"]] = {
            "modified": record["modified"],
            "refused": made.get("refused"),
            "skipped": made.get("skipped"),
            "params": made.get("params"),
            "macs_per_second": made.get("macs_per_second"),
            "torch_latency_ms_1s": made.get("torch_latency_ms_1s"),
            "quality_delta": quality.get("delta"),
            "bucket_deltas": {name: {"files": b["files"], **b["delta"]}
                              for name, b in (quality.get("buckets") or {}).items()},
            "groups": made.get("groups") or made.get("scaled"),
            "fine_tune": {k: tune.get(k) for k in ("steps", "seconds", "stop_reason", "best_step",
                                                   "holdout_si_sdr_db")} if tune else None,
            "seconds": made.get("seconds"),
        }
    return out or None


def _streaming_entry(run: Any, validated: dict[str, Any]) -> dict[str, Any] | None:
    """The streaming artifact's contract and measurements, when the pipeline wrote one."""
    made = run.metrics_of("stream")
    if not made:
        return None
    entry = {k: made[k] for k in ("file", "hop", "delay_samples", "delay_ms",
                                  "algorithmic_latency_ms", "states", "state_floats",
                                  "stateful_layers", "tolerance", "size_bytes")}
    measured = validated.get("streaming") or {}
    entry["equivalence"] = measured.get("equivalence") or {**made["parity_clip"],
                                                           "audio": "parity clip"}
    entry["latency"] = measured.get("latency")
    return entry


def baseline_entry(runs: dict[str, Any]) -> dict[str, Any]:
    """The fp32 torch model's measurements, from the first target that validated."""
    for run in runs.values():
        v = run.metrics_of("validate")
        if v.get("latency_ms"):
            latency = v["latency_ms"]
            q = v.get("quality") or {}
            return {
                "latency_ms": latency["1s"]["baseline"],
                "latency_ms_10s": latency["10s"]["baseline"],
                "throughput_rps": v["throughput_rps"]["baseline"],
                "peak_rss_mb": (v.get("peak_rss_mb") or {}).get("baseline"),
                "size_bytes": v["size_bytes"]["baseline"],
                "quality": q.get("baseline"),
                "threads": v["threads"],
            }
    return {"latency_ms": {"p50": None}, "note": "no target ran the validate pass"}


def build_report(info: Any, runs: dict[str, Any], settings: dict[str, Any],
                 unvalidated: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole ``report.json`` document; ``unvalidated`` maps a target built without its
    hardware to the reason."""
    unvalidated = unvalidated or {}
    return {
        "secompile": library_versions()["secompile"],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": info.as_dict(),
        "settings": settings,
        "machine": machine_info(),
        "versions": library_versions(),
        "baseline": baseline_entry(runs),
        "targets": {
            name: target_entry(name, run, f"{name}/{run.artifact.path.name}",
                               unvalidated.get(name))
            for name, run in runs.items()
        },
    }


def manifest(info: Any, target: Any, run: Any, artifact_path: Path,
             unvalidated: str | None = None) -> dict[str, Any]:
    """``<target>/manifest.json``: what the artifact is and exactly how it was made, and where
    it was validated."""
    art = run.artifact
    return {
        "artifact": artifact_path.name,
        "format": art.format,
        "sha256": file_sha256(artifact_path),
        "size_bytes": artifact_path.stat().st_size,
        "target": {"name": target.name, "precision": target.precision,
                   "execution_providers": list(target.execution_providers)},
        "model": info.as_dict(),
        "input": {"name": art.metadata.get("input"), "dtype": "float32",
                  "shape": ["batch", "samples"], "sample_rate": info.sample_rate},
        "output": {"name": art.metadata.get("output"), "dtype": "float32",
                   "shape": ["batch", "samples"]},
        "opset": art.metadata.get("opset"),
        "stft": art.metadata.get("stft"),
        "pipeline": run.pipeline,
        "lineage": list(art.lineage),
        "versions": library_versions(),
        "streaming": _streaming_manifest(run, artifact_path.parent),
        "precision": precision_entry(run),
        "validation": validation_entry(run, unvalidated),
        "side_files": [{"file": path.name, "sha256": file_sha256(artifact_path.parent / path.name),
                        "size_bytes": (artifact_path.parent / path.name).stat().st_size}
                       for result in run.results for path in result.files],
    }


def _streaming_manifest(run: Any, folder: Path) -> dict[str, Any] | None:
    """The streaming artifact's contract, when the pipeline wrote one (``stream`` pass)."""
    made = run.metrics_of("stream")
    if not made:
        return None
    path = folder / made["file"]
    return {
        "artifact": made["file"],
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "hop": made["hop"],
        "delay_samples": made["delay_samples"],
        "algorithmic_latency_ms": made["algorithmic_latency_ms"],
        "input": {"name": CHUNK_INPUT, "dtype": "float32", "shape": [1, made["hop"]]},
        "output": {"name": CHUNK_OUTPUT, "dtype": "float32", "shape": [1, made["hop"]]},
        "states": made["states"],
        "initial_state": "zeros",
        "equivalence_tolerance": made["tolerance"],
    }


def _fmt(value: Any, spec: str = ".3g", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:{spec}}{suffix}"


def _gates_markdown(gates: dict[str, Any] | None) -> list[str]:
    """The quality gates, every (target, metric, input-SNR bucket), when a build checked them."""
    if not gates or not gates.get("checks"):
        return []
    limits = gates["limits"]
    lines = ["", (f"Quality gates (largest drop allowed in every input-SNR bucket: SI-SDR "
                  f"{limits['si_sdr']} dB, PESQ {limits['pesq']}):"), "",
             "| target | metric | bucket | files | Δ | status |", "|---|---|---|---|---|---|"]
    for target, checks in gates["checks"].items():
        for c in checks:
            lines.append(f"| {target} | {c['metric']} | {c['bucket']} | {c['files']} "
                         f"| {_fmt(c['delta'], '+.4f')} | {c['status']} |")
    return lines


def _precision_markdown(precision: dict[str, Any]) -> list[str]:
    layout = precision.get("layout") or {}
    shipped = precision["shipped"]
    lines = ["", f"Precision shipped: **{shipped}**"
             + (f" ({precision['reason']})." if precision.get("reason") else ".")]
    if layout:
        lines.append(f"INT8 layout for this CPU ({precision.get('cpu_int8_kernel')}): "
                     f"{layout['activation_type']} activations, {layout['weight_type']} weights, "
                     f"reduce_range={layout['reduce_range']} ({layout['reason']}).")
    if precision.get("fidelity_db"):
        fidelity = precision["fidelity_db"]
        lines.append(f"INT8 plan: {precision['layers_int8']} layer(s) INT8, "
                     f"{precision['layers_int8_weights']} with INT8 weights only; worst "
                     f"calibration clip {fidelity['min']} dB SI-SDR against fp32 (floor "
                     f"{fidelity['floor']} dB); INT8 ran "
                     f"{_fmt(precision.get('int8_speedup_vs_fp32_onnx'), '.2f')}x the fp32 "
                     "ONNX speed.")
    for layer in precision["layers_fp32"]:
        lines.append(f"* fp32 `{layer['name']}` ({layer['kind']}): {'; '.join(layer['why'])}")
    for note in precision["kept_fp32_always"]:
        lines.append(f"* fp32 {note}")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable ``report.md``."""
    base = report["baseline"]
    model = report["model"]
    lines = [
        f"# secompile report: {model['name']}",
        "",
        (f"Created {report['created']} on {report['machine']['cpu']} "
         f"({report['machine']['cores']} cores), "
         + (f"{base['threads']} thread(s), " if base.get("threads") else "")
         + f"secompile {report['secompile']}."),
        "",
        (f"Baseline: PyTorch fp32 eager, p50 {_fmt(base['latency_ms'].get('p50'), '.2f')} ms "
         "per 1 s of audio." if base["latency_ms"].get("p50") is not None else
         "Baseline: PyTorch fp32 eager, timed per target below where a target was timed (on "
         "its own hardware)."),
        "",
        ("| target | speedup (1 s) | speedup (10 s) | throughput × | size × | memory × "
         "| ΔSI-SDR dB | ΔPESQ | ΔESTOI |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in report["targets"].items():
        d = t["quality_delta"] or {}
        lines.append(
            f"| {name} | {_fmt(t['speedup'], '.2f')} | {_fmt(t['speedup_10s'], '.2f')} "
            f"| {_fmt(t['throughput_speedup'], '.2f')} | {_fmt(t['size_reduction'], '.2f')} "
            f"| {_fmt(t['memory_reduction'], '.2f')} | {_fmt(d.get('si_sdr'), '+.4f')} "
            f"| {_fmt(d.get('pesq'), '+.4f')} | {_fmt(d.get('stoi'), '+.5f')} |"
        )
    lines += _gates_markdown(report.get("gates"))
    for name, t in report["targets"].items():
        lines += ["", f"## {name}", "",
                  f"Artifact `{t['artifact']}`; pipeline `{t['pipeline']}`.", ""]
        validation = t.get("validation") or {}
        if validation.get("status") == "unvalidated":
            lines += [f"**Unvalidated:** {validation['why']}.", ""]
        if t["latency_ms"]:
            lines += ["| measure | baseline | artifact |", "|---|---|---|"]
            for label, sides in t["latency_ms"].items():
                for q in ("p50", "p99"):
                    lines.append(f"| latency {label} {q} (ms) | {_fmt(sides['baseline'][q], '.2f')}"
                                 f" | {_fmt(sides['artifact'][q], '.2f')} |")
            rps = t["throughput_rps"]
            lines.append(f"| throughput, batch {rps['batch']} (clips/s) "
                         f"| {_fmt(rps['baseline'], '.1f')} | {_fmt(rps['artifact'], '.1f')} |")
            if t["peak_rss_mb"]:
                lines.append(f"| peak RSS, fresh process (MiB) | {t['peak_rss_mb']['baseline']} "
                             f"| {t['peak_rss_mb']['artifact']} |")
            size = t["size_bytes"]
            lines.append(f"| size on disk (bytes) | {size['baseline']} | {size['artifact']} |")
            timing = t["timing"] or {}
            lines += ["", (f"Timing: interleaved, medians; "
                      f"{timing.get('blocks_rerun_for_outside_load', 0)} block(s) re-run for "
                      f"outside CPU load, {timing.get('blocks_measured_under_outside_load', 0)} "
                      "kept under load after retries (treat ratios under 1.2x as noise then).")]
        q = t["quality"]
        if q:
            lines += ["", f"Quality on {q['files']} pairs from `{q['eval_set']}`:", "",
                      "| | SI-SDR dB | PESQ-WB | ESTOI |", "|---|---|---|---|"]
            for side in ("noisy", "baseline", "artifact"):
                m = q[side]
                lines.append(f"| {side} | {_fmt(m['si_sdr'], '.3f')} | {_fmt(m['pesq'], '.3f')} "
                             f"| {_fmt(m['stoi'], '.4f')} |")
            for row in q.get("skipped_files") or []:
                lines.append(f"\nNot scored: `{row['file']}` ({row['skipped']}).")
        for pass_name, made in (t.get("shrink") or {}).items():
            lines += _shrink_markdown(pass_name, made)
        if t.get("precision"):
            lines += _precision_markdown(t["precision"])
        if t.get("streaming"):
            lines += _streaming_markdown(name, t["streaming"])
        if t.get("gpu"):
            lines += _gpu_markdown(t["gpu"])
        lines += ["", "| pass | seconds | modified | cache |", "|---|---|---|---|"]
        for p in t["passes"]:
            lines.append(f"| {p['name']} | {_fmt(p.get('seconds'), '.2f')} | {p['modified']} "
                         f"| {p['cache']} |")
    return "\n".join(lines) + "\n"


def _before_after(values: dict[str, Any] | None, scale: float = 1.0, spec: str = ".0f") -> str:
    if not values:
        return "n/a"
    return (f"{_fmt(values['before'] / scale, spec)} → {_fmt(values['after'] / scale, spec)}"
            + (f" ({-values['reduction']:+.0%})" if "reduction" in values else ""))


def _shrink_markdown(pass_name: str, made: dict[str, Any]) -> list[str]:
    """The ``prune`` / ``distill`` section of a target in ``report.md``."""
    title = {"prune": "Pruning", "distill": "Distillation"}[pass_name]
    if made.get("skipped"):
        return ["", f"{title} (`{pass_name}`) did not apply: {made['skipped']}."]
    latency = made.get("torch_latency_ms_1s") or {}
    summary = (f"{title} (`{pass_name}`): parameters {_before_after(made['params'])}, "
               f"MMACs per second of audio {_before_after(made['macs_per_second'], 1e6, '.1f')}"
               f", torch latency on 1 s {_fmt(latency.get('before'), '.2f')} → "
               f"{_fmt(latency.get('after'), '.2f')} ms.")
    lines = ["", summary]
    tune = made.get("fine_tune")
    if tune:
        agreement = _fmt(tune["holdout_si_sdr_db"], ".1f")
        lines.append(f"Fine-tuned by distillation: {tune['steps']} steps in {tune['seconds']} s "
                     f"(stopped by {tune['stop_reason']}, best at step {tune['best_step']}), "
                     f"held-out agreement with the original {agreement} dB SI-SDR.")
    if made.get("refused"):
        lines.append(f"**Refused:** {made['refused']}.")
    if made.get("bucket_deltas"):
        d = made["quality_delta"]
        overall = (f"| all | | {_fmt(d['si_sdr'], '+.3f')} | {_fmt(d['pesq'], '+.3f')} "
                   f"| {_fmt(d['stoi'], '+.4f')} |")
        lines += ["", "| input SNR | files | ΔSI-SDR dB | ΔPESQ | ΔESTOI |",
                  "|---|---|---|---|---|", overall]
        for bucket, b in made["bucket_deltas"].items():
            lines.append(f"| {bucket} | {b['files']} | {_fmt(b['si_sdr'], '+.3f')} "
                         f"| {_fmt(b['pesq'], '+.3f')} | {_fmt(b['stoi'], '+.4f')} |")
    return lines


def _streaming_markdown(target: str, s: dict[str, Any]) -> list[str]:
    """The streaming section of a target in ``report.md``."""
    eq = s["equivalence"]
    lines = ["", (f"Streaming artifact `{target}/{s['file']}`: hop {s['hop']} samples, output "
             f"{s['delay_samples']} samples ({s['delay_ms']:g} ms) behind the input, algorithmic "
             f"latency {s['algorithmic_latency_ms']:g} ms, {len(s['states'])} state tensors "
             f"({s['state_floats']} floats, zeros to start)."), "",
             (f"Equivalence with the offline model on the {eq.get('audio', '?')} "
             f"({eq['files']} file(s)): max abs {_fmt(eq['max_abs'], '.3g')} "
             f"({_fmt(eq['max_abs_vs_float64'], '.3g')} from a float64 run), "
             f"max |ΔSI-SDR| {_fmt(eq.get('max_abs_delta_si_sdr'), '.2g')} dB; "
             f"tolerance {s['tolerance']:g}.")]
    lat = s.get("latency")
    if lat:
        load = lat["under_load"]
        lines += ["", "| stream measure (1 thread) | value |", "|---|---|",
                  (f"| per-hop latency p50 / p99 (ms) | {lat['per_hop_ms']['p50']:.3f} / "
                  f"{lat['per_hop_ms']['p99']:.3f} |"),
                  f"| real-time factor | {lat['real_time_factor']:.3f} |",
                  f"| offline artifact, ms per hop of audio | {lat['offline_ms_per_hop']:.3f} |",
                  (f"| hops over their {lat['hop_ms']:g} ms deadline | "
                  f"{100 * lat['deadline_miss_share']:.2f}% |"),
                  (f"| same, {load['busy_processes']} busy processes | "
                  f"{100 * load['deadline_miss_share']:.2f}% (p99 "
                  f"{load['per_hop_ms']['p99']:.3f} ms) |")]
    return lines


def _gpu_markdown(gpu: dict[str, Any]) -> list[str]:
    """The gpu artifacts: FP16 ONNX contents, compiled packages, op coverage, GPU timings."""
    lines: list[str] = []
    fp16 = gpu.get("fp16_onnx")
    if fp16:
        lines += ["", (f"FP16 ONNX: {_fmt(fp16.get('agreement_db'), '.1f')} dB SI-SDR against the "
                       f"fp32 ONNX on the parity clip ({fp16.get('simulation', 'CPU')}); "
                       f"{_fmt(fp16.get('size_reduction'), '.2f')}x smaller than fp32 ONNX.")]
    for key, label in (("aot_inductor", "AOTInductor package"), ("tensorrt", "Torch-TensorRT")):
        made = gpu.get(key)
        if not made:
            continue
        if made.get("skipped"):
            lines += ["", f"{label}: not built: {made['skipped']}."]
            continue
        lines += ["", (f"{label} `{made['file']}`: {made['precision']}, "
                       f"{_fmt(made['agreement_db'], '.1f')} dB SI-SDR against fp32 eager, "
                       f"{made['size_bytes']} bytes.")]
        coverage = made.get("op_coverage")
        if coverage:
            lines += ["", (f"Op coverage: {coverage['ops_in_tensorrt']} of {coverage['ops_total']}"
                           f" operator calls in {coverage['engines']} TensorRT engine(s)."), "",
                      "| operator | calls | in TensorRT | in PyTorch |", "|---|---|---|---|"]
            lines += [f"| {r['op']} | {r['total']} | {r['tensorrt']} | {r['pytorch']} |"
                      for r in coverage["ops"]]
    measured = gpu.get("measured")
    if not measured:
        return lines
    device = measured["device"]
    batches = sorted({int(b) for rows in measured["throughput"].values() for b in rows})
    lines += ["", (f"Measured on {device['name']} (compute capability {device['capability']}, "
                   f"CUDA {device['cuda']}, PyTorch {device['torch']}), "
                   f"{measured['clip_seconds']} s clips, CUDA events:"), "",
              "| model | p50 ms | p99 ms | " + " | ".join(f"clips/s @ {b}" for b in batches)
              + " | peak MiB | GPU util % |",
              "|---|---|---|" + "---|" * len(batches) + "---|---|"]
    for name, latency in measured["latency_ms"].items():
        rows = measured["throughput"].get(name, {})
        largest = rows.get(str(max(batches)), {}) if rows else {}
        util = (largest.get("gpu_utilisation") or {}).get("mean_percent")
        lines.append(f"| {name} | {_fmt(latency['p50'], '.3f')} | {_fmt(latency['p99'], '.3f')} | "
                     + " | ".join(_fmt((rows.get(str(b)) or {}).get("rps"), '.1f')
                                  for b in batches)
                     + f" | {_fmt(largest.get('peak_working_mib'), '.1f')} | {_fmt(util)} |")
    for name, why in measured.get("not_measured", {}).items():
        lines.append(f"\nNot measured: {name}: {why}.")
    return lines
