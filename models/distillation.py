"""Teacher-to-student distillation on unlabeled noisy audio: the loop ``prune`` and ``distill`` share.

The teacher's output is the target, so no clean speech is needed: any noisy audio the model
will meet in use will do. Two data sources are provided, and anything with the same two members
(:class:`NoisySource`) works:

* :class:`FolderCrops`: random crops of in-memory recordings (e.g. a calibration folder),
  split once into training and held-out audio;
* :class:`SyntheticNoisy`: the noisy side of :class:`calibration.synthetic.SyntheticMixtures`.

:func:`distill` trains the student with Adam on ``-SI-SDR + stft_weight * STFT loss`` against
the teacher (:func:`models.train.enhancement_loss`), evaluates on a fixed held-out set, keeps the
best weights, stops early on a plateau or a time budget, and checkpoints so that an interrupted
run resumes to exactly the weights an uninterrupted one would reach. Every batch depends only
on the source's seed, the split and the batch number, never on what was drawn before: that is
what makes runs deterministic and resumable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from secompile.calibration.synthetic import SAMPLE_RATE, SyntheticMixtures, espeak_corpus
from secompile.compiler.core.progress import ProgressFactory, silent
from secompile.models.train import (
    STFT_RESOLUTIONS,
    adam_with_schedule,
    enhancement_loss,
    optimise,
    si_sdr,
)

SPLITS = ("train", "holdout")
"""The two splits a :class:`NoisySource` serves."""

HOLDOUT_FRACTION = 0.2
"""Share of :class:`FolderCrops` audio held out (files, or the end of a single file)."""

HOLDOUT_OFFSET = 10**9
"""First mixture index of :class:`SyntheticNoisy`'s held-out split (training uses those below)."""

STOP_REASONS = ("steps", "patience", "time")
"""Why :func:`distill` stopped: all steps run, no held-out improvement, time budget spent."""

CLIP_NORM = 5.0
CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------------
# data sources


@runtime_checkable
class NoisySource(Protocol):
    """Unlabeled noisy audio served in numbered batches.

    ``batch(index, batch_size, length, split)`` returns float32 ``[batch_size, length]`` at
    ``sample_rate``; ``split`` is ``"train"`` or ``"holdout"``, the two never share audio, and
    the result depends only on the source's seed, ``split`` and ``index`` (and the requested
    shape), never on the order of calls.
    """

    sample_rate: int

    def batch(self, index: int, batch_size: int, length: int, split: str) -> Tensor:
        """Batch number ``index`` of ``split``."""
        ...


def _check_request(index: int, batch_size: int, length: int, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0 or batch_size < 1 or length < 1:
        raise ValueError(f"need index >= 0, batch_size >= 1 and length >= 1, got index={index}, "
                         f"batch_size={batch_size}, length={length}")


class FolderCrops:
    """Random fixed-length crops of in-memory recordings, split into train and held-out audio.

    ``waveforms`` are mono float32 arrays already at ``sample_rate`` (e.g. the output of
    :meth:`calibration.datasets.AudioFolder.load`); they are not copied, so do not modify them
    afterwards. Empty arrays are ignored. The split is fixed by ``seed``: with two or more
    recordings, :data:`HOLDOUT_FRACTION` of them (at least one, at most all but one) are held
    out whole, so held-out crops never come from a recording trained on; a single recording is
    split in time instead, its last :data:`HOLDOUT_FRACTION` held out. Each batch item picks a
    recording with probability proportional to its length (every second of audio is equally
    likely) and a random crop of it; recordings shorter than the crop are zero-padded at the end.
    """

    def __init__(self, waveforms: Sequence[np.ndarray], sample_rate: int, seed: int = 0) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        clips = [np.ascontiguousarray(w, dtype=np.float32) for w in waveforms]
        for i, clip in enumerate(clips):
            if clip.ndim != 1:
                raise ValueError(f"waveform {i} must be mono (1-D), got shape {clip.shape}")
        clips = [clip for clip in clips if clip.size]
        if not clips:
            raise ValueError(f"FolderCrops needs audio, got {len(waveforms)} waveform(s) and no "
                             "samples")
        self.sample_rate = int(sample_rate)
        self.seed = int(seed)
        if len(clips) >= 2:
            n_held = min(max(1, round(HOLDOUT_FRACTION * len(clips))), len(clips) - 1)
            # a seeded draw rather than the last files: folders sorted by name often group
            # speakers or conditions, and the held-out set should look like the training set
            order = np.random.default_rng([self.seed, len(SPLITS)]).permutation(len(clips))
            held = set(order[:n_held].tolist())
            train = tuple(c for i, c in enumerate(clips) if i not in held)
            holdout = tuple(c for i, c in enumerate(clips) if i in held)
        else:
            (clip,) = clips
            if clip.size < 2:
                raise ValueError("a single waveform must have at least 2 samples to be split "
                                 "into train and held-out audio")
            cut = min(max(round(clip.size * (1 - HOLDOUT_FRACTION)), 1), clip.size - 1)
            train, holdout = (clip[:cut],), (clip[cut:],)
        self._audio = {"train": train, "holdout": holdout}
        self._weights = {split: np.array([c.size for c in audio], dtype=np.float64)
                         / sum(c.size for c in audio) for split, audio in self._audio.items()}

    @property
    def train_audio(self) -> tuple[np.ndarray, ...]:
        """The recordings (or the leading part of the single one) training crops come from."""
        return self._audio["train"]

    @property
    def holdout_audio(self) -> tuple[np.ndarray, ...]:
        """The recordings (or the trailing part of the single one) held-out crops come from."""
        return self._audio["holdout"]

    def batch(self, index: int, batch_size: int, length: int, split: str) -> Tensor:
        """Batch ``index`` of ``split``: float32 ``[batch_size, length]`` random crops."""
        _check_request(index, batch_size, length, split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(index)])
        clips, weights = self._audio[split], self._weights[split]
        out = np.zeros((batch_size, length), dtype=np.float32)
        for row in out:
            clip = clips[int(rng.choice(len(clips), p=weights))]
            if clip.size > length:
                start = int(rng.integers(0, clip.size - length + 1))
                row[:] = clip[start : start + length]
            else:
                row[: clip.size] = clip
        return torch.from_numpy(out)


@dataclass(frozen=True)
class SyntheticNoisy:
    """The noisy side of synthetic mixtures, as a :class:`NoisySource`.

    Training batch ``i`` is mixtures ``i * B .. i * B + B - 1``; held-out batches use the same
    arithmetic from :data:`HOLDOUT_OFFSET` on, so the splits never share a mixture (they do
    share the speech corpus and noise generators, which is all synthetic data has). A request
    for another length than ``mixtures.length`` draws the same mixtures at that length.
    """

    mixtures: SyntheticMixtures
    _by_length: dict[int, SyntheticMixtures] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def sample_rate(self) -> int:
        """The mixtures' sample rate."""
        return self.mixtures.sample_rate

    @classmethod
    def generate(
        cls, utterances: int, seconds: float, seed: int, *, sample_rate: int = SAMPLE_RATE
    ) -> SyntheticNoisy:
        """Synthesise an espeak-ng corpus of ``utterances`` (:func:`espeak_corpus`) and mix it
        with generated noise into ``seconds``-long mixtures, all fixed by ``seed``.

        Raises :class:`RuntimeError` when espeak-ng is not installed.
        """
        if utterances < 1 or seconds <= 0:
            raise ValueError(f"need utterances >= 1 and seconds > 0, got utterances={utterances}"
                             f", seconds={seconds}")
        corpus = espeak_corpus(utterances, seed=seed, sample_rate=sample_rate)
        if not corpus:
            raise ValueError(f"espeak-ng produced no audio for {utterances} utterance(s)")
        length = round(seconds * sample_rate)
        return cls(SyntheticMixtures(corpus, length=length, seed=seed, sample_rate=sample_rate))

    def _at_length(self, length: int) -> SyntheticMixtures:
        if length == self.mixtures.length:
            return self.mixtures
        if length not in self._by_length:
            self._by_length[length] = dataclasses.replace(self.mixtures, length=length)
        return self._by_length[length]

    def batch(self, index: int, batch_size: int, length: int, split: str) -> Tensor:
        """Batch ``index`` of ``split``: the noisy mixtures, float32 ``[batch_size, length]``."""
        _check_request(index, batch_size, length, split)
        first = index * batch_size
        if first + batch_size > HOLDOUT_OFFSET:
            raise ValueError(f"batch {index} of {batch_size} would reach the held-out mixtures "
                             f"(index {HOLDOUT_OFFSET} on)")
        if split == "holdout":
            first += HOLDOUT_OFFSET
        noisy, _ = self._at_length(length).batch(range(first, first + batch_size))
        return torch.from_numpy(noisy)


# --------------------------------------------------------------------------------------------
# configuration and result


def _require(ok: bool, name: str, value: object, what: str) -> None:
    if not ok:
        raise ValueError(f"DistillConfig.{name} must be {what}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill`; validated on construction (``ValueError`` names the field).

    ``steps`` Adam steps at most, ``max_seconds`` wall-clock budget per call (``None``: none),
    ``batch_size`` crops of ``segment_seconds`` each per step, learning rate ``lr`` (cosine
    schedule, warm-up ``min(100, steps // 10)``), loss ``-SI-SDR + stft_weight * STFT loss``;
    the held-out set (``holdout_batches`` batches) is scored every ``eval_every`` steps, where a
    checkpoint is also written; ``patience`` evaluations in a row without improvement stop the
    run (0: never); ``seed`` seeds torch for the run.
    """

    steps: int = 400
    max_seconds: float | None = None
    batch_size: int = 8
    segment_seconds: float = 2.0
    lr: float = 1e-3
    stft_weight: float = 10.0
    eval_every: int = 50
    patience: int = 4
    holdout_batches: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _require(_is_int(self.steps) and self.steps >= 1, "steps", self.steps,
                 "an integer >= 1")
        _require(self.max_seconds is None or (_is_number(self.max_seconds)
                                              and self.max_seconds > 0),
                 "max_seconds", self.max_seconds, "None or a number > 0")
        _require(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size",
                 self.batch_size, "an integer >= 1")
        _require(_is_number(self.segment_seconds) and self.segment_seconds > 0,
                 "segment_seconds", self.segment_seconds, "a number > 0")
        _require(_is_number(self.lr) and self.lr >= 0, "lr", self.lr, "a number >= 0")
        _require(_is_number(self.stft_weight) and self.stft_weight >= 0, "stft_weight",
                 self.stft_weight, "a number >= 0")
        _require(_is_int(self.eval_every) and self.eval_every >= 1, "eval_every",
                 self.eval_every, "an integer >= 1")
        _require(_is_int(self.patience) and self.patience >= 0, "patience", self.patience,
                 "an integer >= 0")
        _require(_is_int(self.holdout_batches) and self.holdout_batches >= 1,
                 "holdout_batches", self.holdout_batches, "an integer >= 1")
        _require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")

    def segment_samples(self, sample_rate: int) -> int:
        """Crop length in samples at ``sample_rate``."""
        return round(self.segment_seconds * sample_rate)

    @property
    def warmup(self) -> int:
        """Learning-rate warm-up steps."""
        return min(100, self.steps // 10)


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill` did.

    ``steps`` is the step count reached (including steps run before a resume, see
    ``resumed_from``), ``seconds`` the wall time of this call, ``stop_reason`` one of
    :data:`STOP_REASONS`; ``best_step`` the step whose weights the student now holds (0: the
    student is unchanged) and ``holdout_best`` their held-out loss, ``holdout_before`` the
    loss before training; ``train_losses`` the mean training loss between evaluations and
    ``holdout_losses`` every held-out loss, as ``(step, loss)``; ``holdout_si_sdr_db`` the mean
    SI-SDR of the returned student's output against the teacher's on the held-out set.
    """

    steps: int
    seconds: float
    stop_reason: str
    best_step: int
    holdout_before: float
    holdout_best: float
    train_losses: list[tuple[int, float]]
    holdout_losses: list[tuple[int, float]]
    resumed_from: int | None
    holdout_si_sdr_db: float

    def as_dict(self) -> dict:
        """Plain-data form for JSON reports."""
        out = dataclasses.asdict(self)
        out["train_losses"] = [list(row) for row in self.train_losses]
        out["holdout_losses"] = [list(row) for row in self.holdout_losses]
        return out


# --------------------------------------------------------------------------------------------
# held-out scoring


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside, each submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _device(module: nn.Module, default: torch.device | None = None) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return default if default is not None else torch.device("cpu")


@torch.no_grad()
def _teacher_output(teacher: nn.Module, inputs: Tensor, device: torch.device) -> Tensor:
    target = teacher(inputs.to(_device(teacher, device))).to(device)
    if target.shape != inputs.shape:
        raise ValueError(f"the teacher must map [B, L] to [B, L]; got {tuple(inputs.shape)} -> "
                         f"{tuple(target.shape)}")
    return target


def _held_out(
    teacher: nn.Module, source: NoisySource, batches: int, batch_size: int, length: int,
    device: torch.device,
) -> list[tuple[Tensor, Tensor]]:
    """The fixed held-out set: ``(noisy, teacher output)`` batches on ``device``."""
    with _eval_mode(teacher):
        return [(x, _teacher_output(teacher, x, device))
                for x in (source.batch(i, batch_size, length, "holdout").to(device)
                          for i in range(batches))]


@torch.no_grad()
def _mean_loss(student: nn.Module, held: list[tuple[Tensor, Tensor]], stft_weight: float) -> float:
    with _eval_mode(student):
        losses = [enhancement_loss(student(x), target, stft_weight).item() for x, target in held]
    return sum(losses) / len(losses)


@torch.no_grad()
def _mean_si_sdr(student: nn.Module, held: list[tuple[Tensor, Tensor]]) -> float:
    with _eval_mode(student):
        scores = torch.cat([si_sdr(student(x), target) for x, target in held])
    return scores.mean().item()


def teacher_agreement_db(
    student: nn.Module, teacher: nn.Module, source: NoisySource, batches: int, batch_size: int,
    length: int,
) -> float:
    """Mean SI-SDR (dB) of ``student``'s output against ``teacher``'s on the first ``batches``
    held-out batches of ``source`` (both run in eval mode; their modes are restored)."""
    device = _device(student)
    return _mean_si_sdr(student, _held_out(teacher, source, batches, batch_size, length, device))


# --------------------------------------------------------------------------------------------
# loop state and checkpoints


@dataclass
class _LoopState:
    """Everything besides the student, optimiser, schedule and RNG that a resume needs."""

    step: int
    best_step: int
    best_loss: float
    best_state: dict[str, Tensor]
    stale: int  # evaluations in a row without improvement
    train_losses: list[tuple[int, float]]
    holdout_losses: list[tuple[int, float]]
    running_sum: float  # training loss summed since the last evaluation
    running_count: int
    stop_reason: str | None = None  # set once the run is finished; a time stop is not


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _record(state: _LoopState, student: nn.Module, loss: float) -> None:
    """Account a held-out evaluation of ``student`` at ``state.step``."""
    if state.running_count:
        state.train_losses.append((state.step, state.running_sum / state.running_count))
        state.running_sum, state.running_count = 0.0, 0
    state.holdout_losses.append((state.step, loss))
    improved = loss < state.best_loss or (math.isnan(state.best_loss) and not math.isnan(loss))
    if improved:
        state.best_loss, state.best_step, state.best_state = loss, state.step, _snapshot(student)
        state.stale = 0
    else:
        state.stale += 1


def _identity(config: DistillConfig, length: int) -> dict:
    # The time budget is per call, so a resumed run may have another one; every other field
    # shapes the trajectory, and a checkpoint written under other values cannot be continued.
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    del fields["max_seconds"]
    return {**fields, "length": length}


def _cuda_devices(module: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in module.parameters() if t.device.type == "cuda"})


def _rng_state(cuda: list[int]) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(i) for i in cuda]}


def _save_checkpoint(
    path: Path, key: str, identity: dict, student: nn.Module, optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler, state: _LoopState, cuda: list[int],
) -> None:
    """Write the checkpoint to a temporary file beside ``path``, then rename it over ``path``:
    a crash mid-write leaves the previous checkpoint intact."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "key": key,
        "config": identity,
        "student": student.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": _rng_state(cuda),
        "state": {f.name: getattr(state, f.name) for f in dataclasses.fields(state)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_checkpoint(
    path: Path | None, key: str, identity: dict, log: Callable[[str], None]
) -> dict | None:
    """The checkpoint at ``path`` when it exists and was written for ``key`` and this config;
    otherwise ``None`` (logged: the run starts fresh and overwrites it at its first
    evaluation)."""
    if path is None or not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        log(f"distill: checkpoint {path} is unreadable ({exc}); starting fresh")
        return None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        log(f"distill: checkpoint {path} has an unknown format; starting fresh")
        return None
    if payload.get("key") != key:
        log(f"distill: checkpoint {path} was written for key {payload.get('key')!r}, not "
            f"{key!r}; starting fresh")
        return None
    stored = payload.get("config", {})
    changed = sorted(k for k in identity.keys() | stored.keys()
                     if identity.get(k) != stored.get(k))
    if changed:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {identity.get(k)!r}" for k in changed)
        log(f"distill: checkpoint {path} was written with other settings ({shown}); "
            "starting fresh")
        return None
    return payload


# --------------------------------------------------------------------------------------------
# the loop


def _quiet(line: str) -> None:
    """The default log: drop the line."""


def distill(
    student: nn.Module,
    teacher: nn.Module,
    source: NoisySource,
    config: DistillConfig,
    *,
    checkpoint: Path | None = None,
    checkpoint_key: str = "",
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = _quiet,
) -> DistillResult:
    """Train ``student`` in place to reproduce ``teacher`` on ``source``'s noisy audio.

    Both modules map waveforms ``[B, L] -> [B, L]``. The teacher runs in eval mode without
    gradients (its modes are restored afterwards); the student trains with Adam (see
    :class:`DistillConfig`), batch ``i`` being ``source.batch(i, batch_size, length, "train")``.
    The held-out loss (``holdout_batches`` fixed batches) is measured before training, every
    ``eval_every`` steps and at the end; the best weights seen, the untrained ones included,
    are loaded into the student at the end, which is left in eval mode.

    The run is deterministic for ``config.seed``: torch's random generators are seeded inside a
    fork that restores them afterwards, and deterministic algorithms are switched on for the
    call only. With ``checkpoint``, the loop state is written there at every evaluation and at
    a time stop (atomically); a later call with the same ``checkpoint_key`` and settings
    (``max_seconds`` aside) resumes from it and ends with exactly the weights an uninterrupted
    run would have; a finished run's checkpoint just returns its result again. The key must
    name what the settings do not (student initialisation, teacher, data): a checkpoint with
    another key or settings is logged and overwritten. ``log`` gets one line per
    evaluation, after its checkpoint is written; ``progress`` draws one bar over the steps.
    """
    start = time.monotonic()
    length = config.segment_samples(source.sample_rate)
    longest = max(n_fft for n_fft, _ in STFT_RESOLUTIONS)
    if config.stft_weight and length <= longest // 2:
        raise ValueError(f"segment_seconds={config.segment_seconds} gives {length} samples at "
                         f"{source.sample_rate} Hz; the STFT loss needs more than {longest // 2}")
    cuda = _cuda_devices(student)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: a student with an op that has no deterministic kernel should still train
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=cuda), _eval_mode(teacher):
            return _run(student, teacher, source, config, length, cuda, start,
                        Path(checkpoint) if checkpoint is not None else None, checkpoint_key,
                        progress, log)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _run(
    student: nn.Module, teacher: nn.Module, source: NoisySource, config: DistillConfig,
    length: int, cuda: list[int], start: float, checkpoint: Path | None, key: str,
    progress: ProgressFactory, log: Callable[[str], None],
) -> DistillResult:
    """The body of :func:`distill`, inside its RNG fork and determinism switch."""
    device = _device(student)
    weight = config.stft_weight
    held = _held_out(teacher, source, config.holdout_batches, config.batch_size, length, device)
    optimiser, schedule = adam_with_schedule(student, config.lr, config.steps, config.warmup)
    identity = _identity(config, length)
    torch.manual_seed(config.seed)
    for i in cuda:
        with torch.cuda.device(i):
            torch.cuda.manual_seed(config.seed)

    def save(state: _LoopState) -> None:
        if checkpoint is not None:
            _save_checkpoint(checkpoint, key, identity, student, optimiser, schedule, state, cuda)

    def report(state: _LoopState) -> None:
        step, loss = state.holdout_losses[-1]
        train = (f"{state.train_losses[-1][1]:9.4f}"
                 if state.train_losses and state.train_losses[-1][0] == step else "        -")
        log(f"distill step {step:5d}/{config.steps}  train {train}  held-out {loss:9.4f}  "
            f"best {state.best_loss:9.4f} @ {state.best_step}  {time.monotonic() - start:6.1f}s")

    payload = _read_checkpoint(checkpoint, key, identity, log)
    if payload is not None:
        try:
            student.load_state_dict(payload["student"])
            optimiser.load_state_dict(payload["optimiser"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(f"checkpoint {checkpoint} (key {key!r}) does not fit this student: "
                             f"{exc}") from exc
        schedule.load_state_dict(payload["schedule"])
        torch.set_rng_state(payload["rng"]["cpu"])
        for i, rng in zip(cuda, payload["rng"]["cuda"], strict=True):
            torch.cuda.set_rng_state(rng, i)
        state = _LoopState(**payload["state"])
        resumed_from: int | None = state.step
        log(f"distill: resuming from {checkpoint} at step {state.step}")
    else:
        loss = _mean_loss(student, held, weight)
        state = _LoopState(step=0, best_step=0, best_loss=loss, best_state=_snapshot(student),
                           stale=0, train_losses=[], holdout_losses=[(0, loss)], running_sum=0.0,
                           running_count=0)
        resumed_from = None
        save(state)
        report(state)

    final = state  # what the result reports; differs from ``state`` only after a time stop
    reason = state.stop_reason
    with progress(config.steps, "distill") as bar:
        if state.step:
            bar.update(state.step)
        student.train()
        while reason is None:
            inputs = source.batch(state.step, config.batch_size, length, "train").to(device)
            target = _teacher_output(teacher, inputs, device)
            loss = enhancement_loss(student(inputs), target, weight)
            state.running_sum += optimise(student, optimiser, schedule, loss, CLIP_NORM)
            state.running_count += 1
            state.step += 1
            bar.update()
            evaluated = state.step % config.eval_every == 0 or state.step == config.steps
            if evaluated:
                _record(state, student, _mean_loss(student, held, weight))
                if state.step == config.steps:
                    state.stop_reason = "steps"
                elif config.patience and state.stale >= config.patience:
                    state.stop_reason = "patience"
                reason = state.stop_reason
                save(state)
                report(state)
            elapsed = time.monotonic() - start
            if reason is None and config.max_seconds is not None and elapsed >= config.max_seconds:
                reason = "time"
                if not evaluated:
                    # The end-of-run evaluation goes into the result only: the checkpoint keeps
                    # the regular schedule, so a resumed run takes the same decisions (best,
                    # patience) as one that was never stopped.
                    final = dataclasses.replace(state, train_losses=list(state.train_losses),
                                                holdout_losses=list(state.holdout_losses))
                    _record(final, student, _mean_loss(student, held, weight))
                    save(state)
                    report(final)

    student.load_state_dict(final.best_state)
    student.eval()
    return DistillResult(
        steps=final.step,
        seconds=time.monotonic() - start,
        stop_reason=reason,
        best_step=final.best_step,
        holdout_before=final.holdout_losses[0][1],
        holdout_best=final.best_loss,
        train_losses=list(final.train_losses),
        holdout_losses=list(final.holdout_losses),
        resumed_from=resumed_from,
        holdout_si_sdr_db=_mean_si_sdr(student, held),
    )
