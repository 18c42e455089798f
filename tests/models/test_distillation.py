"""Tests for the teacher-student distillation loop and its data sources (models/distillation.py).

The student and teacher are the shared tiny spectral model (Conv2d + BN, a GRU, grouped
ConvTranspose: the layer kinds whose state a resume must carry) or, where weights must not move
at all, a tiny FIR filter without batch norm. Runs are 20 steps of 4 x 0.25 s crops.
"""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secompile.calibration.synthetic import SyntheticMixtures
from secompile.compiler.core.progress import Progress
from secompile.models.distillation import (
    HOLDOUT_OFFSET,
    DistillConfig,
    DistillResult,
    FolderCrops,
    NoisySource,
    SyntheticNoisy,
    distill,
    teacher_agreement_db,
)
from secompile.models.train import enhancement_loss
from tests.conftest import requires_espeak, tiny_module

RATE = 16000
CONFIG = DistillConfig(steps=20, batch_size=4, segment_seconds=0.25, lr=1e-2, eval_every=5,
                       patience=0, holdout_batches=2, seed=3)
LENGTH = CONFIG.segment_samples(RATE)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def waveforms(seconds: tuple[float, ...] = (1.0, 0.7, 1.3, 0.2, 0.9), seed: int = 0
              ) -> list[np.ndarray]:
    """Distinct random recordings (so a crop identifies the one it came from)."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(round(RATE * s))).astype(np.float32) for s in seconds]


@pytest.fixture(scope="module")
def source() -> FolderCrops:
    return FolderCrops(waveforms(), RATE, seed=0)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return tiny_module(seed=7)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def history(result: DistillResult) -> tuple:
    return result.steps, result.best_step, result.train_losses, result.holdout_losses


class Fir(nn.Module):
    """A waveform FIR filter ``[B, L] -> [B, L]``: no batch norm, so lr=0 freezes it exactly."""

    def __init__(self, seed: int, taps: int = 17, dropout: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        weight = 0.1 * torch.randn(1, 1, taps, generator=gen)
        weight[0, 0, taps // 2] += 1.0
        self.weight = nn.Parameter(weight)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        return F.conv1d(x[:, None], self.weight, padding=self.weight.shape[-1] // 2)[:, 0]


class Crash(Exception):
    """Raised from the log callback to simulate a process killed after a checkpoint."""


def crash_at(step: int):
    def log(line: str) -> None:
        match = re.match(r"distill step +(\d+)/", line)
        if match and int(match.group(1)) == step:
            raise Crash(line)
    return log


@pytest.fixture(scope="module")
def reference(source: FolderCrops, teacher: nn.Module) -> tuple[nn.Module, DistillResult]:
    """An uninterrupted run of CONFIG, the yardstick for determinism and resume tests."""
    student = tiny_module(seed=1)
    return student, distill(student, teacher, source, CONFIG)


# --------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(("field", "value"), [
    ("steps", 0), ("steps", 2.5), ("steps", True), ("max_seconds", 0), ("max_seconds", -1.0),
    ("batch_size", 0), ("segment_seconds", 0.0), ("segment_seconds", float("nan")),
    ("lr", -1e-3), ("stft_weight", -1.0), ("eval_every", 0), ("patience", -1),
    ("holdout_batches", 0), ("seed", -1),
])
def test_config_rejects_out_of_range_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"DistillConfig\.{field} must be .*got {value!r}"):
        DistillConfig(**{field: value})


def test_config_defaults_and_derived_values() -> None:
    config = DistillConfig()
    assert (config.steps, config.eval_every, config.patience, config.max_seconds) == \
        (400, 50, 4, None)
    assert config.warmup == 40 and DistillConfig(steps=5000).warmup == 100
    assert config.segment_samples(16000) == 32000
    with pytest.raises(FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]


def test_segment_too_short_for_stft_loss(source: FolderCrops, teacher: nn.Module) -> None:
    config = DistillConfig(steps=2, segment_seconds=0.02)
    with pytest.raises(ValueError, match="STFT loss needs more than 512"):
        distill(tiny_module(1), teacher, source, config)


# --------------------------------------------------------------------------------------------
# FolderCrops


def _rows_come_from(batch: torch.Tensor, clips: tuple[np.ndarray, ...]) -> bool:
    """Every row is a contiguous crop of one of ``clips`` (zero-padded when the clip is short)."""
    for row in batch.numpy():
        found = False
        for clip in clips:
            if clip.size <= row.size:
                found |= np.array_equal(row[: clip.size], clip) and not row[clip.size:].any()
            else:
                hits = np.flatnonzero(clip == row[0])
                found |= any(np.array_equal(clip[h : h + row.size], row) for h in hits)
        if not found:
            return False
    return True


def test_folder_crops_multi_file_split_is_disjoint_and_seeded() -> None:
    audio = waveforms()
    crops = FolderCrops(audio, RATE, seed=0)
    assert len(crops.train_audio) == 4 and len(crops.holdout_audio) == 1
    ids = lambda clips: {id(c) for c in clips}
    assert ids(crops.train_audio).isdisjoint(ids(crops.holdout_audio))
    assert ids(crops.train_audio) | ids(crops.holdout_audio) == ids(audio)
    again = FolderCrops(audio, RATE, seed=0)
    assert ids(again.holdout_audio) == ids(crops.holdout_audio)
    ten = FolderCrops(waveforms((0.3,) * 10), RATE, seed=0)
    assert (len(ten.train_audio), len(ten.holdout_audio)) == (8, 2)
    two = FolderCrops(waveforms((0.3, 0.3)), RATE, seed=5)
    assert (len(two.train_audio), len(two.holdout_audio)) == (1, 1)
    for split, clips in (("train", crops.train_audio), ("holdout", crops.holdout_audio)):
        batch = crops.batch(3, 6, 4000, split)
        assert batch.shape == (6, 4000) and batch.dtype == torch.float32
        assert _rows_come_from(batch, clips)


def test_folder_crops_batches_depend_only_on_seed_split_and_index() -> None:
    a, b = FolderCrops(waveforms(), RATE, seed=0), FolderCrops(waveforms(), RATE, seed=0)
    later_first = [a.batch(i, 4, 2000, "train") for i in (5, 0, 2)]
    in_order = {i: b.batch(i, 4, 2000, "train") for i in (0, 2, 5)}
    for got, i in zip(later_first, (5, 0, 2), strict=True):
        assert torch.equal(got, in_order[i])
    assert not torch.equal(in_order[0], in_order[2])
    assert not torch.equal(a.batch(0, 4, 2000, "train"), a.batch(0, 4, 2000, "holdout"))
    other_seed = FolderCrops(waveforms(), RATE, seed=1)
    assert not torch.equal(other_seed.batch(0, 4, 2000, "train"), in_order[0])


def test_folder_crops_single_file_is_split_in_time() -> None:
    (clip,) = waveforms((1.0,))
    crops = FolderCrops([clip], RATE, seed=0)
    (train,), (holdout,) = crops.train_audio, crops.holdout_audio
    assert train.size == 12800 and holdout.size == 3200
    assert np.array_equal(np.concatenate([train, holdout]), clip)
    batch = crops.batch(0, 8, 1000, "holdout")
    assert _rows_come_from(batch, (holdout,))
    assert _rows_come_from(crops.batch(1, 8, 1000, "train"), (train,))
    # a crop longer than the held-out tail is that tail, zero-padded
    long = crops.batch(0, 2, 4000, "holdout")
    assert torch.equal(long[:, :3200], torch.from_numpy(holdout).expand(2, -1))
    assert not long[:, 3200:].any()


def test_folder_crops_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="needs audio"):
        FolderCrops([], RATE)
    with pytest.raises(ValueError, match="needs audio"):
        FolderCrops([np.zeros(0, np.float32)], RATE)
    with pytest.raises(ValueError, match="mono"):
        FolderCrops([np.zeros((2, 100), np.float32)], RATE)
    crops = FolderCrops(waveforms(), RATE)
    with pytest.raises(ValueError, match="split must be one of"):
        crops.batch(0, 2, 100, "test")
    assert isinstance(crops, NoisySource)


# --------------------------------------------------------------------------------------------
# SyntheticNoisy


def _fake_speech() -> list[np.ndarray]:
    # SyntheticMixtures takes any utterances; chirps stand in for espeak-ng speech here
    t = np.arange(8000) / RATE
    return [np.sin(2 * np.pi * (200 + 300 * k) * t * (1 + t)).astype(np.float32)
            for k in range(3)]


def test_synthetic_noisy_splits_are_disjoint_and_deterministic() -> None:
    mixtures = SyntheticMixtures(_fake_speech(), length=4000, seed=2)
    source = SyntheticNoisy(mixtures)
    assert source.sample_rate == RATE and isinstance(source, NoisySource)
    train = source.batch(1, 3, 4000, "train")
    assert train.shape == (3, 4000) and train.dtype == torch.float32
    # training batch 1 holds mixtures 3..5, the held-out one starts at HOLDOUT_OFFSET
    assert torch.equal(train[0], torch.from_numpy(mixtures.pair(3)[0]))
    holdout = source.batch(0, 3, 4000, "holdout")
    assert torch.equal(holdout[0], torch.from_numpy(mixtures.pair(HOLDOUT_OFFSET)[0]))
    assert torch.equal(source.batch(1, 3, 4000, "train"), train)
    assert source.batch(0, 2, 2500, "train").shape == (2, 2500)
    with pytest.raises(ValueError, match="held-out"):
        source.batch(HOLDOUT_OFFSET, 1, 100, "train")


@requires_espeak
def test_synthetic_noisy_generate_with_espeak() -> None:
    source = SyntheticNoisy.generate(utterances=2, seconds=0.5, seed=0)
    assert source.mixtures.length == 8000 and len(source.mixtures.speech) == 2
    batch = source.batch(0, 2, 8000, "train")
    assert batch.shape == (2, 8000) and torch.isfinite(batch).all() and batch.abs().max() > 0
    again = SyntheticNoisy.generate(utterances=2, seconds=0.5, seed=0)
    assert torch.equal(again.batch(0, 2, 8000, "holdout"), source.batch(0, 2, 8000, "holdout"))


# --------------------------------------------------------------------------------------------
# the loop


def test_distill_is_deterministic_and_restores_global_state(
    source: FolderCrops, teacher: nn.Module, reference: tuple[nn.Module, DistillResult]
) -> None:
    ref_student, ref = reference
    assert ref.stop_reason == "steps" and ref.steps == 20 and ref.resumed_from is None
    assert [s for s, _ in ref.holdout_losses] == [0, 5, 10, 15, 20]
    assert [s for s, _ in ref.train_losses] == [5, 10, 15, 20]
    assert ref.holdout_best < ref.holdout_before  # the student learned something

    teacher.train()
    student = tiny_module(seed=1)  # seeds torch itself, so take the RNG state after it
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    teacher_before = weights(teacher)
    result = distill(student, teacher, source, CONFIG)
    assert_same_weights(student, ref_student)
    assert history(result) == history(ref)
    assert result.holdout_si_sdr_db == ref.holdout_si_sdr_db
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before
    assert teacher.training  # its mode is put back
    teacher.eval()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not student.training


def test_best_weights_are_returned_and_scored(
    source: FolderCrops, teacher: nn.Module, reference: tuple[nn.Module, DistillResult]
) -> None:
    student, result = reference
    best_step, best = min(result.holdout_losses, key=lambda row: row[1])
    assert (result.best_step, result.holdout_best) == (best_step, best)
    with torch.no_grad():
        losses = []
        for i in range(CONFIG.holdout_batches):
            x = source.batch(i, CONFIG.batch_size, LENGTH, "holdout")
            losses.append(enhancement_loss(student(x), teacher(x), CONFIG.stft_weight).item())
    assert sum(losses) / len(losses) == pytest.approx(result.holdout_best, abs=1e-5)
    agreement = teacher_agreement_db(student, teacher, source, CONFIG.holdout_batches,
                                     CONFIG.batch_size, LENGTH)
    assert agreement == pytest.approx(result.holdout_si_sdr_db, abs=1e-5)
    report = result.as_dict()
    assert report["train_losses"][0] == [5, result.train_losses[0][1]]
    assert report["stop_reason"] == "steps" and report["resumed_from"] is None


def test_resume_after_crash_equals_uninterrupted_run(
    source: FolderCrops, teacher: nn.Module, reference: tuple[nn.Module, DistillResult],
    tmp_path: Path,
) -> None:
    ref_student, ref = reference
    path = tmp_path / "ckpt" / "distill.pt"
    with pytest.raises(Crash):
        distill(tiny_module(1), teacher, source, CONFIG, checkpoint=path, checkpoint_key="k",
                log=crash_at(10))
    assert sorted(p.name for p in path.parent.iterdir()) == ["distill.pt"]  # no temp files
    saved = torch.load(path, weights_only=True)
    assert saved["key"] == "k" and saved["state"]["step"] == 10

    lines: list[str] = []
    student = tiny_module(1)
    result = distill(student, teacher, source, CONFIG, checkpoint=path, checkpoint_key="k",
                     log=lines.append)
    assert result.resumed_from == 10
    assert any("resuming" in line for line in lines)
    assert_same_weights(student, ref_student)
    assert history(result) == history(ref)

    # a finished run's checkpoint gives the same result again without training
    again = tiny_module(1)
    repeat = distill(again, teacher, source, CONFIG, checkpoint=path, checkpoint_key="k")
    assert repeat.resumed_from == 20 and repeat.stop_reason == "steps"
    assert_same_weights(again, ref_student)
    assert history(repeat) == history(ref)


def test_resume_restores_the_random_generator(source: FolderCrops, tmp_path: Path) -> None:
    # dropout draws from torch's generator at every step: a resume must continue its stream
    config = replace(CONFIG, lr=1e-3, eval_every=4, steps=12)
    teacher, whole, resumed = Fir(seed=1), Fir(seed=0, dropout=0.3), Fir(seed=0, dropout=0.3)
    distill(whole, teacher, source, config)
    path = tmp_path / "distill.pt"
    with pytest.raises(Crash):
        distill(Fir(seed=0, dropout=0.3), teacher, source, config, checkpoint=path,
                log=crash_at(8))
    assert distill(resumed, teacher, source, config, checkpoint=path).resumed_from == 8
    assert_same_weights(resumed, whole)


def test_time_budget_stops_and_resumes_to_the_same_weights(
    source: FolderCrops, teacher: nn.Module, reference: tuple[nn.Module, DistillResult],
    tmp_path: Path,
) -> None:
    ref_student, ref = reference
    path = tmp_path / "distill.pt"
    config = replace(CONFIG, max_seconds=1e-9)
    stopped = distill(tiny_module(1), teacher, source, config, checkpoint=path,
                      checkpoint_key="k")
    assert stopped.stop_reason == "time" and stopped.steps == 1
    assert [s for s, _ in stopped.holdout_losses] == [0, 1]  # evaluated at the end

    student = tiny_module(1)
    result = distill(student, teacher, source, CONFIG, checkpoint=path, checkpoint_key="k")
    assert result.resumed_from == 1 and result.stop_reason == "steps"
    assert_same_weights(student, ref_student)
    # the stop's extra evaluation is not part of the resumed run's history
    assert history(result) == history(ref)


def test_checkpoint_with_other_key_or_settings_is_ignored(
    source: FolderCrops, teacher: nn.Module, reference: tuple[nn.Module, DistillResult],
    tmp_path: Path,
) -> None:
    ref_student, ref = reference
    path = tmp_path / "distill.pt"
    with pytest.raises(Crash):
        distill(tiny_module(1), teacher, source, CONFIG, checkpoint=path, checkpoint_key="old",
                log=crash_at(15))
    lines: list[str] = []
    student = tiny_module(1)
    result = distill(student, teacher, source, CONFIG, checkpoint=path, checkpoint_key="new",
                     log=lines.append)
    assert "key 'old', not 'new'; starting fresh" in lines[0]
    assert result.resumed_from is None
    assert_same_weights(student, ref_student)
    assert history(result) == history(ref)
    assert torch.load(path, weights_only=True)["key"] == "new"  # overwritten by the new run

    # same key, other settings: the trajectory would differ, so it starts fresh too
    other = replace(CONFIG, lr=5e-2, steps=10)
    lines.clear()
    result = distill(tiny_module(1), teacher, source, other, checkpoint=path,
                     checkpoint_key="new", log=lines.append)
    assert re.search(r"lr: 0\.01 -> 0\.05, steps: 20 -> 10\); starting fresh", lines[0])
    assert result.resumed_from is None and result.steps == 10


def test_patience_stops_a_run_that_never_improves(source: FolderCrops) -> None:
    student, teacher = Fir(seed=0), Fir(seed=1)
    before = weights(student)
    config = DistillConfig(steps=20, batch_size=4, segment_seconds=0.25, lr=0.0, eval_every=2,
                           patience=3, holdout_batches=2)
    lines: list[str] = []
    result = distill(student, teacher, source, config, log=lines.append)
    assert result.stop_reason == "patience" and result.steps == 6
    assert [s for s, _ in result.holdout_losses] == [0, 2, 4, 6] and len(lines) == 4
    assert {loss for _, loss in result.holdout_losses} == {result.holdout_before}
    assert result.best_step == 0 and result.holdout_best == result.holdout_before
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key
    # patience 0 never stops early
    never = distill(Fir(seed=0), teacher, source, replace(config, patience=0))
    assert never.stop_reason == "steps" and never.steps == 20


def test_progress_bar_counts_every_step(source: FolderCrops) -> None:
    bars: list[Progress] = []
    closed: list[bool] = []

    class Recording(Progress):
        def close(self) -> None:
            closed.append(True)

    def factory(total: int, label: str) -> Progress:
        bars.append(Recording(total, label, enabled=False))
        return bars[-1]

    config = DistillConfig(steps=4, batch_size=2, segment_seconds=0.25, eval_every=2)
    distill(Fir(seed=0), Fir(seed=1), source, config, progress=factory)
    assert [(bar.total, bar.label, bar.done) for bar in bars] == [(4, "distill", 4)]
    assert closed == [True]
