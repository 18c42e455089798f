"""What the ``prune`` and ``distill`` passes share: their training options, the audio they train
on, the distillation run inside a pass, and the before/after report (parameters, counted MACs,
latency, quality overall and per input-SNR bucket).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn

from secompile.compiler.analysis.pruning import count_macs, count_params
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pass_base import PassConfig
from secompile.compiler.runtime.timing import available_cpus, measure_interleaved
from secompile.models.train import si_sdr

if TYPE_CHECKING:
    from secompile.compiler.core.context import PassContext
    from secompile.models.distillation import DistillResult, NoisySource

SYNTHETIC_UTTERANCES = 300


@dataclass(frozen=True)
class TrainingOptions(PassConfig):
    """Fine-tuning options common to ``prune`` and ``distill`` (distillation from the input
    model on unlabeled noisy audio, :func:`models.distillation.distill`).

    ``data``: ``synthetic`` (the project's generated mixtures: unlimited and varied, the
    default), ``calibration`` (the build's ``--calib`` folder, else the project's own
    calibration mixtures: best when it holds enough of the deployment's own audio) or a
    folder of wavs. ``steps``: Adam steps (0: no fine-tuning); ``minutes``: wall-clock budget of the
    loop; ``patience``: held-out evaluations without improvement before stopping (0: never);
    ``train_threads``: torch threads while training (0: every core this process may use).
    """

    data: str = "synthetic"
    steps: int = 600
    minutes: float = 10.0
    batch_size: int = 8
    segment_seconds: float = 2.0
    lr: float = 1e-3
    eval_every: int = 50
    patience: int = 4
    train_threads: int = 0

    def check(self) -> None:
        if not self.data:
            raise ValueError("data must be 'calibration', 'synthetic' or a folder path")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 0 < self.minutes <= 24 * 60:
            raise ValueError(f"minutes must be in (0, 1440], got {self.minutes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.1 <= self.segment_seconds <= 30:
            raise ValueError(f"segment_seconds must be in [0.1, 30], got {self.segment_seconds}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.train_threads < 0:
            raise ValueError(f"train_threads must be >= 0, got {self.train_threads}")


def data_fingerprint(options: TrainingOptions, ctx: PassContext) -> str | None:
    """What identifies the training audio, for cache keys and checkpoints."""
    if options.data == "calibration":
        return ctx.calibration.fingerprint() if ctx.calibration else None
    if options.data == "synthetic":
        return f"synthetic:{SYNTHETIC_UTTERANCES}:{ctx.seed}"
    from secompile.calibration.datasets import AudioFolder

    folder = Path(options.data)
    return AudioFolder.scan(folder, 1).fingerprint() if folder.is_dir() else None


def training_source(options: TrainingOptions, ctx: PassContext, rate: int) -> NoisySource:
    """The unlabeled noisy audio the student trains on (``ConfigError`` when there is none)."""
    from secompile.calibration.datasets import AudioFolder
    from secompile.models.distillation import FolderCrops, SyntheticNoisy

    if options.data == "synthetic":
        try:
            return SyntheticNoisy.generate(SYNTHETIC_UTTERANCES, options.segment_seconds,
                                           ctx.seed, sample_rate=rate)
        except RuntimeError as exc:  # espeak-ng missing
            raise ConfigError(f"training data 'synthetic': {exc}") from None
    if options.data == "calibration":
        if ctx.calibration is None:
            raise ConfigError("training data 'calibration' needs calibration audio: pass "
                              "--calib FOLDER, or data=synthetic, or data=FOLDER")
        audio = ctx.calibration.load()
    else:
        folder = Path(options.data)
        if not folder.is_dir():
            raise ConfigError(f"training data folder not found: {folder}")
        dataset = AudioFolder.scan(folder, rate)
        if ctx.evaluation is not None:  # quality measured on training audio proves nothing
            from secompile.calibration.datasets import check_disjoint

            check_disjoint(dataset, ctx.evaluation)
        audio = dataset.load()
    try:
        return FolderCrops(audio, rate, ctx.seed)
    except ValueError as exc:
        raise ConfigError(f"training data {options.data!r}: {exc}") from None


def train_student(student: nn.Module, teacher: nn.Module, source: NoisySource,
                  options: TrainingOptions, ctx: PassContext, key: str,
                  label: str) -> DistillResult:
    """Distil ``teacher`` into ``student`` (in place) with ``options``; checkpointed under
    ``ctx.checkpoints`` (when set) as ``key`` so an interrupted build resumes.

    The checkpoint is shared by builds with one cache folder: the build that trains holds
    ``<checkpoint>.lock`` (``filelock``) until it is done; another build training the same
    student meanwhile trains without a checkpoint rather than write over it."""
    with contextlib.ExitStack() as stack:
        checkpoint = None
        if ctx.checkpoints is not None:
            checkpoint = _claim_checkpoint(ctx, key, label, stack)
        return _train(student, teacher, source, options, ctx, key, label, checkpoint)


def _claim_checkpoint(ctx: PassContext, key: str, label: str,
                      stack: contextlib.ExitStack) -> Path | None:
    """The checkpoint path for ``key``, its lock held on ``stack``; ``None`` when another build
    holds it or the folder cannot be written (training then runs unsaved)."""
    checkpoint = ctx.checkpoints / f"{label}-{key[:24]}.pt"
    try:
        ctx.checkpoints.mkdir(parents=True, exist_ok=True)
        stack.enter_context(FileLock(checkpoint.with_name(checkpoint.name + ".lock"),
                                     timeout=0))
    except Timeout:
        ctx.logger.info("%s: another build is training this student; no checkpoint", label)
        return None
    except OSError as exc:
        ctx.logger.info("%s: no checkpoint (%s)", label, exc)
        return None
    return checkpoint


def _train(student: nn.Module, teacher: nn.Module, source: NoisySource,
           options: TrainingOptions, ctx: PassContext, key: str, label: str,
           checkpoint: Path | None) -> DistillResult:
    from secompile.models.distillation import DistillConfig, distill

    config = DistillConfig(
        steps=options.steps, max_seconds=options.minutes * 60, batch_size=options.batch_size,
        segment_seconds=options.segment_seconds, lr=options.lr, eval_every=options.eval_every,
        patience=options.patience, seed=ctx.seed,
    )
    threads = options.train_threads or available_cpus()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = distill(student, teacher, source, config, checkpoint=checkpoint,
                         checkpoint_key=key,
                         progress=lambda total, _: ctx.progress(total, f"{label}: fine-tune"),
                         log=lambda line: ctx.logger.info("%s: %s", label, line))
    finally:
        torch.set_num_threads(previous)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the pass cache keeps the result from here on
    return result


def fine_tune(student: nn.Module, teacher: nn.Module, teacher_hash: str, source: NoisySource,
              options: TrainingOptions, ctx: PassContext, label: str,
              extra: dict[str, Any]) -> dict[str, Any]:
    """:func:`train_student` keyed by everything that fixes the run (the teacher's content
    hash, the pass's options, the data, the seed and ``extra``, such as a student's code);
    its report entry, wall time included."""
    key = hashlib.sha256(repr((teacher_hash, options.canonical(), sorted(extra.items()),
                               data_fingerprint(options, ctx), ctx.seed)).encode()).hexdigest()
    start = time.monotonic()
    result = train_student(student, teacher, source, options, ctx, key, label)
    return {**result.as_dict(), "seconds": round(time.monotonic() - start, 1)}


# --- before / after --------------------------------------------------------------------------


def _latency_ms(teacher: nn.Module, student: nn.Module, clip: np.ndarray,
                threads: int) -> dict[str, float]:
    from secompile.compiler.runtime.runners import TorchRunner

    runners = {"before": TorchRunner(teacher, threads), "after": TorchRunner(student, threads)}
    timed = measure_interleaved({k: (lambda r=r: r(clip)) for k, r in runners.items()},
                                repeats=10, blocks=2)
    before, after = timed.stats["before"].percentile(50), timed.stats["after"].percentile(50)
    return {"before": round(before, 3), "after": round(after, 3),
            "speedup": round(before / after, 3) if after else math.nan,
            "threads": threads}


def quality_change(teacher: nn.Module, student: nn.Module, ctx: PassContext,
                   rate: int) -> dict[str, Any] | None:
    """SI-SDR / PESQ-WB / ESTOI of ``teacher`` (baseline) and ``student`` (artifact) on the
    build's evaluation pairs: means, deltas and input-SNR buckets (``None`` without pairs)."""
    from secompile.compiler.distributed.scoring import score_pair, summarize
    from secompile.compiler.runtime.runners import TorchRunner

    if ctx.evaluation is None:
        return None
    reference, candidate = TorchRunner(teacher, ctx.threads), TorchRunner(student, ctx.threads)
    pairs = ctx.evaluation.load()
    rows = []
    with ctx.progress(len(pairs), "scoring before/after") as bar:
        for pair in pairs:
            rows.append(score_pair(pair.name, pair.noisy, pair.clean, rate, reference, candidate))
            bar.update()
    summary = summarize(rows)
    buckets = {
        name: {"files": b["files"],
               "delta": {k: round(b["artifact"][k] - b["baseline"][k], 4) for k in b["artifact"]},
               "before": b["baseline"], "after": b["artifact"]}
        for name, b in summary["buckets"].items()
    }
    return {"before": summary["baseline"], "after": summary["artifact"],
            "delta": {k: round(v, 4) for k, v in summary["delta"].items()},
            "buckets": buckets, "files": summary["files"], "eval_set": str(ctx.evaluation.root)}


def before_after(teacher: nn.Module, student: nn.Module, ctx: PassContext, rate: int,
                 clip: np.ndarray) -> dict[str, Any]:
    """Parameters, counted MACs per second of audio, torch latency on ``clip``, the SI-SDR of
    ``student``'s output against ``teacher``'s on ``clip`` (``agreement_db``) and quality of
    ``teacher`` against ``student``."""
    example = torch.as_tensor(clip[:, :rate])
    params = {"before": count_params(teacher), "after": count_params(student)}
    with torch.inference_mode():
        whole = torch.as_tensor(clip)
        agreement = float(si_sdr(student(whole), teacher(whole)).mean())
    macs = {"before": count_macs(teacher, example), "after": count_macs(student, example)}
    return {
        "params": {**params, "reduction": round(1 - params["after"] / params["before"], 4)},
        "macs_per_second": {**macs, "reduction": round(1 - macs["after"] / macs["before"], 4)
                            if macs["before"] else 0.0},
        "torch_latency_ms_1s": _latency_ms(teacher, student, clip[:, :rate], ctx.threads),
        "agreement_db": round(agreement, 2),
        "quality": quality_change(teacher, student, ctx, rate),
    }
