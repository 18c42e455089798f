"""Quality scoring of an artifact against its reference model on evaluation files, the same
function in process and on Ray workers, so distributed metrics equal serial ones.

A worker gets a :class:`ScoringJob`: plain data (file paths, the ONNX artifact's bytes, the
reference model's source and its weights as a state_dict) from which it rebuilds both models
once per process; audio is decoded by the worker, and a file it cannot decode becomes a row
naming the error instead of failing the others.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secompile.calibration.audio import read_audio
from secompile.calibration.metrics import bucket_name, is_silent, mean_metrics, quality, snr_db
from secompile.compiler.core.errors import DataError
from secompile.compiler.runtime.chunking import ChunkPlan, run_chunked

Runner = Any  # compiler.runtime.Runner: [B, L] float32 -> [B, L]
METRIC_DECIMALS = 10


@dataclass(frozen=True)
class AudioRules:
    """How evaluation files are read: the model's rate, resampling, the shortest input."""

    sample_rate: int
    allow_resample: bool = False
    min_samples: int = 1


@dataclass(frozen=True)
class ScoringJob:
    """One worker's share of an evaluation: everything as plain data.

    ``files`` are ``(name, noisy path, clean path)``; ``artifact_onnx`` the artifact's file
    bytes; ``reference_source`` the ``ModelInfo.source`` of the fp32 model and
    ``reference_state`` its ``torch.save``'d state_dict (loaded with ``weights_only=True``);
    ``threads`` the intra-op threads both models run on, as in the serial path.
    """

    files: tuple[tuple[str, str, str], ...]
    rules: AudioRules
    artifact_onnx: bytes
    reference_source: dict[str, Any]
    reference_state: bytes
    threads: int = 1


_RUNNERS: dict[str, Runner] = {}  # per worker process: models rebuilt once, reused by tasks


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _artifact_runner(job: ScoringJob) -> Runner:
    key = f"onnx:{job.threads}:" + _digest(job.artifact_onnx)
    if key not in _RUNNERS:
        import onnxruntime as ort

        from secompile.compiler.runtime.runners import session_options

        session = ort.InferenceSession(job.artifact_onnx, session_options(job.threads),
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        _RUNNERS[key] = lambda wav: session.run(None, {name: wav})[0]
    return _RUNNERS[key]


def _reference_runner(job: ScoringJob) -> Runner:
    key = f"torch:{job.threads}:" + _digest(job.reference_state)
    if key not in _RUNNERS:
        import torch

        from secompile.compiler.runtime.runners import TorchRunner
        from secompile.models.registry import load_model

        source = job.reference_source
        module = load_model(source["model"], Path(source["weights"]) if source["weights"]
                            else None).module
        state = torch.load(io.BytesIO(job.reference_state), weights_only=True)
        module.load_state_dict(state, strict=True)
        _RUNNERS[key] = TorchRunner(module.eval(), job.threads)
    return _RUNNERS[key]


def score_file(name: str, noisy_path: str, clean_path: str, rules: AudioRules,
               reference: Runner, artifact: Runner) -> dict[str, Any]:
    """Decode a pair (trimmed to the shorter file) and :func:`score_pair` it;
    ``{"file", "error"}`` when the audio cannot be decoded."""
    read = (rules.sample_rate, rules.allow_resample, rules.min_samples)
    try:
        noisy, clean = read_audio(Path(noisy_path), *read), read_audio(Path(clean_path), *read)
    except DataError as exc:
        return {"file": name, "error": str(exc)}
    n = min(len(noisy), len(clean))
    return score_pair(name, noisy[:n], clean[:n], rules.sample_rate, reference, artifact,
                      rules.min_samples)


SILENT_REFERENCE = ("silent clean reference: SI-SDR, PESQ and ESTOI need a reference signal, "
                    "so the pair is left out of the quality metrics")


def score_pair(name: str, noisy: np.ndarray, clean: np.ndarray, rate: int,
               reference: Runner, artifact: Runner, min_samples: int = 1) -> dict[str, Any]:
    """The per-file row: input SNR, SI-SDR/PESQ-WB/ESTOI of the noisy input, the reference's
    output and the artifact's, and their max abs difference.

    A pair whose clean reference is silent (``calibration.metrics.is_silent``) is not scored:
    its row is ``{"file", "skipped": reason}``. Recordings longer than a
    :class:`~secompile.compiler.runtime.chunking.ChunkPlan`'s ``whole_limit`` run through both
    models in chunks, the same chunks for both (``min_samples`` aligns them to the model's
    FFT), so memory stays bounded.
    """
    if is_silent(clean):
        return {"file": name, "skipped": SILENT_REFERENCE}
    plan = ChunkPlan.for_model(rate, min_samples)
    ref_out = run_chunked(reference, noisy[None, :], plan)[0]
    out = run_chunked(artifact, noisy[None, :], plan)[0]
    return {
        "file": name,
        "input_snr_db": round(snr_db(noisy, clean), 2),
        "noisy": _rounded(quality(noisy, clean, rate)),
        "baseline": _rounded(quality(ref_out, clean, rate)),
        "artifact": _rounded(quality(out, clean, rate)),
        "max_abs_vs_baseline": float(np.max(np.abs(out - ref_out))),
    }


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics to ``METRIC_DECIMALS`` places. NumPy's SIMD reductions round differently with
    an array's alignment and BLAS with its thread count, so two processes scoring the same file
    differ in the last bits (measured: ~1e-16 relative on ESTOI); rounding far below any
    meaningful precision makes every process report the same numbers."""
    return {k: v if np.isnan(v) else round(v, METRIC_DECIMALS) for k, v in metrics.items()}


def score_job(job: ScoringJob) -> list[dict[str, Any]]:
    """Score every file of ``job`` (the Ray task body): rows in ``job.files`` order."""
    reference, artifact = _reference_runner(job), _artifact_runner(job)
    return [score_file(*f, job.rules, reference, artifact) for f in job.files]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per side, the artifact-minus-baseline delta, input-SNR buckets, the largest
    difference from the baseline, per-file rows, the files that could not be read and the
    files left out (``skipped_files``: a silent clean reference)."""
    scored = [r for r in rows if "error" not in r and "skipped" not in r]
    failed = [r for r in rows if "error" in r]
    skipped = [r for r in rows if "skipped" in r]
    if not scored:
        if skipped and not failed:
            names = ", ".join(r["file"] for r in skipped[:3])
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            raise DataError(f"every evaluation pair has a silent clean reference ({names}{more})"
                            ": there is no signal to measure quality against")
        raise DataError("no evaluation file could be read: " + "; ".join(
            r["error"] for r in failed[:3]))
    summary: dict[str, Any] = {side: mean_metrics([r[side] for r in scored])
                               for side in ("noisy", "baseline", "artifact")}
    summary["delta"] = {k: summary["artifact"][k] - summary["baseline"][k]
                        for k in summary["artifact"]}
    buckets: dict[str, list[dict]] = {}
    for row in scored:
        buckets.setdefault(bucket_name(row["input_snr_db"]), []).append(row)
    summary["buckets"] = {
        name: {"files": len(items),
               "baseline": mean_metrics([r["baseline"] for r in items]),
               "artifact": mean_metrics([r["artifact"] for r in items])}
        for name, items in sorted(buckets.items())
    }
    summary["files"] = len(scored)
    summary["failed_files"] = failed
    summary["skipped_files"] = skipped
    summary["max_abs_vs_baseline"] = max(r["max_abs_vs_baseline"] for r in scored)
    summary["per_file"] = scored
    return summary


def score_on(executor: Any, files: list[tuple[str, str, str]], durations: list[float],
             rules: AudioRules, artifact_onnx: bytes, reference_source: dict[str, Any],
             reference_state: bytes, threads: int = 1) -> tuple[list[dict[str, Any]], int]:
    """Score ``files`` on ``executor``'s workers: split by their ``durations`` (longest first
    onto the least-loaded worker), one task per worker; rows come back in ``files`` order.
    Returns the rows and the number of tasks."""
    from secompile.compiler.distributed.executors import balance

    workers = max(1, executor.workers // threads)  # each task reserves the threads it runs
    groups = balance(durations, workers)
    jobs = [ScoringJob(tuple(files[i] for i in group), rules, artifact_onnx, reference_source,
                       reference_state, threads) for group in groups]
    rows: list[dict[str, Any]] = [{}] * len(files)
    for group, scored in zip(groups, executor.map(score_job, jobs, num_cpus=threads),
                             strict=True):
        for index, row in zip(group, scored, strict=True):
            rows[index] = row
    return rows, len(jobs)
