"""Train the default model on the project's own synthetic data; also a reusable training loop.

Run ``python -m models.train --out models/weights/secompile_default.pt --steps 800 --seed 0``
to reproduce the shipped checkpoint (see ``models/README.md`` for the exact command used).
The data are generated on the fly by :mod:`calibration.synthetic` (espeak-ng speech, synthetic
noise); nothing is downloaded. ``--eval-dir`` points at a folder with ``noisy/`` and ``clean/``
wav pairs that are *only* scored at the end, never trained on. ``--evaluate WEIGHTS`` scores an
existing checkpoint without training.

For a fixed ``--seed`` and ``--steps`` (and thread count) a run is deterministic: each batch
depends only on the seed and the step number. ``--minutes`` is a wall-clock safety cap; if it
stops training early the run is no longer reproducible on another machine and says so.

The loop, :func:`train`, takes any module, any iterable of ``(inputs, targets)`` batches and any
loss function, so fine-tuning can reuse it; its optimiser set-up and step
(:func:`adam_with_schedule`, :func:`optimise`) are shared with the teacher-student loop of
:mod:`models.distillation`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from secompile.calibration.synthetic import SAMPLE_RATE, SyntheticMixtures, espeak_corpus

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# losses and metrics


def si_sdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB per item, for ``[..., L]`` tensors (means removed first)."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True)
                                                             + eps)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


STFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (256, 64))
"""``(n_fft, hop)`` pairs of :func:`stft_magnitude_loss`; signals must be longer than half the
largest ``n_fft`` (the centred STFT reflects that much at each end)."""


def stft_magnitude_loss(
    estimate: Tensor,
    reference: Tensor,
    resolutions: tuple[tuple[int, int], ...] = STFT_RESOLUTIONS,
    compress: float = 0.3,
) -> Tensor:
    """Mean squared error of power-law compressed STFT magnitudes over several resolutions.

    Both signals are normalised by the reference RMS first, so the loss does not depend on the
    input level.
    """
    rms = reference.pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
    estimate, reference = estimate / rms, reference / rms
    total = estimate.new_zeros(())
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft, device=estimate.device)
        mags = [
            torch.stft(x, n_fft, hop, window=window, return_complex=True).abs().add(1e-8)
            .pow(compress)
            for x in (estimate, reference)
        ]
        total = total + (mags[0] - mags[1]).pow(2).mean()
    return total / len(resolutions)


def enhancement_loss(estimate: Tensor, reference: Tensor, stft_weight: float = 10.0) -> Tensor:
    """Negative mean SI-SDR (dB) plus ``stft_weight`` times :func:`stft_magnitude_loss`."""
    loss = -si_sdr(estimate, reference).mean()
    if stft_weight:
        loss = loss + stft_weight * stft_magnitude_loss(estimate, reference)
    return loss


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What :func:`train` did: steps run, loss per logged step, wall time, early stop flag."""

    steps: int
    seconds: float
    stopped_early: bool
    losses: list[tuple[int, float]] = field(default_factory=list)


def cosine_lr(step: int, total: int, warmup: int = 100, floor: float = 0.02) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def adam_with_schedule(
    model: nn.Module, lr: float, steps: int, warmup: int = 100
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over ``model``'s trainable parameters with the :func:`cosine_lr` schedule over
    ``steps`` (``warmup`` steps of linear warm-up)."""
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: cosine_lr(s, steps, warmup)
    )
    return optimiser, schedule


def optimise(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    loss: Tensor,
    clip_norm: float = 5.0,
) -> float:
    """One optimiser step on ``loss``: backward, clip ``model``'s gradients to ``clip_norm``,
    step the optimiser and the schedule. Returns the loss value."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimiser.step()
    schedule.step()
    return loss.item()


def train(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float = 1e-3,
    clip_norm: float = 5.0,
    max_seconds: float | None = None,
    log_every: int = 50,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``model`` for ``steps`` Adam steps on ``batches`` and leave it in eval mode.

    Each batch is ``(inputs, targets)``; the loss is ``loss_fn(model(inputs), targets)``. The
    learning rate follows :func:`cosine_lr` over ``steps``; gradients are clipped to
    ``clip_norm``. Training stops early (``stopped_early=True``) after ``max_seconds`` of wall
    time. Seeding is the caller's job.
    """
    optimiser, schedule = adam_with_schedule(model, lr, steps)
    model.train()
    result = TrainResult(steps=0, seconds=0.0, stopped_early=False)
    start = time.monotonic()
    running = 0.0
    iterator: Iterator[tuple[Tensor, Tensor]] = iter(batches)
    for step in range(steps):
        inputs, targets = next(iterator)
        loss = optimise(model, optimiser, schedule, loss_fn(model(inputs), targets), clip_norm)
        running += loss
        result.steps = step + 1
        elapsed = time.monotonic() - start
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            result.losses.append((step + 1, running / n))
            log(f"step {step + 1:5d}/{steps}  loss {running / n:8.3f}  "
                f"lr {schedule.get_last_lr()[0]:.2e}  {elapsed:6.0f}s")
            running = 0.0
        if max_seconds is not None and elapsed > max_seconds and step + 1 < steps:
            result.stopped_early = True
            log(f"time cap of {max_seconds:.0f}s reached after {step + 1} of {steps} steps; "
                "stopping early (this run is not reproducible elsewhere)")
            break
    result.seconds = time.monotonic() - start
    model.eval()
    return result


def synthetic_batches(
    mixtures: SyntheticMixtures, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(noisy, clean)`` float tensor batches ``[B, L]`` from ``mixtures``."""
    for noisy, clean in mixtures.batches(batch_size):
        yield torch.from_numpy(noisy), torch.from_numpy(clean)


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module, eval_dir: Path, *, perceptual: bool = True
) -> dict[str, tuple[float, float]]:
    """Mean ``(noisy, enhanced)`` SI-SDR, and with ``perceptual`` PESQ-WB and ESTOI, over the
    paired ``clean/`` + ``noisy/`` folder ``eval_dir`` (the same metrics ``validate`` uses)."""
    from secompile.calibration.datasets import PairedFolder
    from secompile.calibration.metrics import mean_metrics, quality
    from secompile.calibration.metrics import si_sdr as si_sdr_db

    model.eval()
    noisy_rows, enhanced_rows = [], []
    for pair in PairedFolder.scan(Path(eval_dir), SAMPLE_RATE).load():
        enhanced = model(torch.from_numpy(pair.noisy)[None])[0].numpy()
        for rows, audio in ((noisy_rows, pair.noisy), (enhanced_rows, enhanced)):
            rows.append(quality(audio, pair.clean, SAMPLE_RATE) if perceptual
                        else {"si_sdr": si_sdr_db(audio, pair.clean)})
    noisy, enhanced = mean_metrics(noisy_rows), mean_metrics(enhanced_rows)
    return {k: (noisy[k], enhanced[k]) for k in noisy}


def format_scores(scores: dict[str, tuple[float, float]]) -> str:
    """One line per metric: noisy, enhanced and the difference."""
    return "\n".join(f"{k:8s} noisy {a:7.3f}  enhanced {b:7.3f}  delta {b - a:+7.3f}"
                     for k, (a, b) in scores.items())


# --------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m models.train --help``)."""
    from secompile.models.default import build_default, default_core
    from secompile.models.spectral import SpectralEnhancer

    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to save the core's state_dict")
    parser.add_argument("--steps", type=int, default=800, help="Adam steps (default 800)")
    parser.add_argument("--minutes", type=float, default=25.0,
                        help="wall-clock cap on the training loop (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length in seconds")
    parser.add_argument("--utterances", type=int, default=1000,
                        help="espeak-ng utterances in the speech corpus")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--stft-weight", type=float, default=10.0,
                        help="weight of the multi-resolution STFT magnitude loss (0: SI-SDR only)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--eval-dir", type=Path,
                        help="folder with noisy/ and clean/ wavs scored (never trained on)")
    parser.add_argument("--no-perceptual", action="store_true",
                        help="with --eval-dir: SI-SDR only, skip PESQ and STOI")
    parser.add_argument("--evaluate", type=Path, metavar="WEIGHTS",
                        help="score this checkpoint on --eval-dir and exit (no training)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.evaluate is not None:
        if args.eval_dir is None:
            parser.error("--evaluate needs --eval-dir")
        model = build_default(args.evaluate)
        print(format_scores(evaluate(model, args.eval_dir, perceptual=not args.no_perceptual)))
        return
    if args.out is None:
        parser.error("--out is required when training")

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.monotonic()
    corpus = espeak_corpus(args.utterances, seed=args.seed)
    hours = sum(u.size for u in corpus) / SAMPLE_RATE / 3600
    print(f"speech corpus: {len(corpus)} utterances, {hours:.2f} h, "
          f"{time.monotonic() - t0:.0f}s", flush=True)
    mixtures = SyntheticMixtures(corpus, length=int(args.seconds * SAMPLE_RATE), seed=args.seed)

    from secompile.models.default import SAMPLE_RATE as MODEL_RATE
    from secompile.models.default import STFT

    model = SpectralEnhancer(default_core(), STFT, MODEL_RATE)
    n_params = sum(p.numel() for p in model.core.parameters())
    print(f"TinyCRN: {n_params} parameters", flush=True)
    result = train(
        model,
        synthetic_batches(mixtures, args.batch_size),
        lambda est, ref: enhancement_loss(est, ref, args.stft_weight),
        steps=args.steps,
        lr=args.lr,
        max_seconds=args.minutes * 60,
        log=lambda line: print(line, flush=True),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.core.state_dict(), args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.3f} MB) after {result.steps} "
          f"steps, {result.seconds / 60:.1f} min training, "
          f"{(time.monotonic() - t0) / 60:.1f} min total")
    if args.eval_dir is not None:
        model = build_default(args.out)
        print(format_scores(evaluate(model, args.eval_dir, perceptual=not args.no_perceptual)))


if __name__ == "__main__":
    main()
