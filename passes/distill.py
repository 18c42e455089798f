"""``distill``: train a smaller student of the model (width/depth-scaled, or the user's own)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secompile.compiler.analysis.channels import (
    channel_groups,
    check_runs,
    conform_to_state,
    drop_rnn_layers,
    remove_channels,
)
from secompile.compiler.analysis.graph import example_batch, trace_graph
from secompile.compiler.analysis.pruning import SelectionRules, importance, select
from secompile.compiler.core.artifact import Artifact, file_sha256
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError, ModelError
from secompile.compiler.core.pass_base import Pass, PassResult
from secompile.compiler.training.finetune import (
    TrainingOptions,
    before_after,
    data_fingerprint,
    fine_tune,
    training_source,
)

INITS = ("teacher", "random")


@dataclass(frozen=True)
class DistillPassConfig(TrainingOptions):
    """Options of ``distill`` (plus the training options of
    :class:`compiler.finetune.TrainingOptions`).

    ``width``: the fraction of every prunable channel group (:mod:`compiler.analysis.channels`) the
    student keeps; ``depth``: the layers every stacked GRU/LSTM keeps (0: as the teacher);
    ``student``: a user's student as ``FILE.py:factory`` (overrides ``width`` and ``depth``);
    ``init``: ``teacher`` starts the scaled student from the teacher's strongest channels (L2)
    and lower layers, ``random`` re-initialises it.
    """

    width: float = 0.5
    depth: int = 0
    student: str = ""
    init: str = "teacher"
    steps: int = 1500
    minutes: float = 15.0

    def check(self) -> None:
        super().check()
        if not 0 < self.width <= 1:
            raise ValueError(f"width must be in (0, 1], got {self.width}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.student and ".py:" not in self.student:
            raise ValueError(f"student must be FILE.py:factory, got {self.student!r}")
        if not self.student and self.width == 1 and self.depth == 0:
            raise ValueError("width=1 and depth=0 make the student the teacher: scale one")


def _reset(module: nn.Module) -> None:
    """Fresh initialisation of every layer that has one (deterministic under the seed)."""
    for sub in module.modules():
        if hasattr(sub, "reset_parameters") and sub is not module:
            sub.reset_parameters()


def scaled_student(teacher: nn.Module, example: torch.Tensor, width: float, depth: int,
                   init: str, seed: int) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The teacher's architecture with ``depth`` RNN layers and ``width`` of its channels;
    returns the student and what was scaled."""
    student = teacher
    scaled: list[dict[str, Any]] = []
    if depth:
        student = _shallower(teacher, depth, scaled)
    if width < 1:
        groups = channel_groups(student, trace_graph(student, example))
        scores = importance(student, groups, "l2")
        removal = select(groups, scores, 1 - width, SelectionRules(max_layer_ratio=0.95))
        if removal:
            student = remove_channels(student, groups, removal)
            scaled += [{"group": g.describe(), "before": g.size,
                        "after": g.size - len(removal.get(g.id, ()))}
                       for g in groups if g.prunable]
    if student is teacher:
        raise ConfigError(f"the teacher has nothing to scale at width={width} depth={depth} "
                          "(no stacked RNN to make shallower, no prunable channel group that "
                          "loses a channel)")
    if init == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _reset(student)
    return student.eval(), scaled


def _shallower(teacher: nn.Module, depth: int, scaled: list[dict[str, Any]]) -> nn.Module:
    student = copy.deepcopy(teacher)
    for path, sub in student.named_modules():
        if isinstance(sub, nn.RNNBase) and sub.num_layers > depth:
            scaled.append({"rnn": path, "layers_before": sub.num_layers, "layers_after": depth})
            drop_rnn_layers(sub, depth)
    return student if scaled else teacher


def _user_student(ref: str, teacher: Artifact, example: torch.Tensor) -> nn.Module:
    from secompile.models.registry import load_model

    try:
        loaded = load_model(ref)
    except ModelError as exc:
        raise ConfigError(f"student {ref!r}: {exc}") from None
    if loaded.info.sample_rate != teacher.info.sample_rate:
        raise ConfigError(f"student {ref!r} runs at {loaded.info.sample_rate} Hz, the teacher "
                          f"at {teacher.info.sample_rate} Hz")
    student = loaded.module
    with torch.inference_mode():
        try:
            shape = tuple(student(example).shape)
        except Exception as exc:  # noqa: BLE001  (a user's model: any failure is their input)
            raise ConfigError(f"student {ref!r} cannot run on a [B, L] waveform: "
                              f"{type(exc).__name__}: {exc}") from None
    if shape != tuple(example.shape):
        raise ConfigError(f"student {ref!r} maps {list(example.shape)} to {list(shape)}; it must "
                          "return a waveform of its input's shape")
    return student.eval()


class Distill(Pass):
    """Replace the model by a smaller student trained to reproduce it.

    Rewrite rules: the student is the teacher's own architecture scaled down — ``width`` keeps
    that fraction of each prunable channel group (the same dependency analysis as ``prune``:
    convolutions, transposed convolutions, linear layers, RNN hidden units, consistent across
    residual adds and concatenations), ``depth`` keeps the lower layers of each stacked
    GRU/LSTM — or a user's ``FILE.py:factory`` model. It is trained by distillation on unlabeled
    noisy audio (:func:`models.distillation.distill`: the teacher's output is the target) and
    replaces the teacher. Quality is reported overall and per input-SNR bucket; the later
    ``validate`` pass judges the final artifact against the original model.
    """

    name = "distill"
    Config = DistillPassConfig
    input_formats = ("torch",)
    summary = "train a width/depth-scaled (or user) student from the model by distillation"
    checks_parity = False
    changes_function = True

    def reads_calibration(self) -> bool:
        return self.config.data == "calibration"

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        return {
            "data": data_fingerprint(self.config, ctx),
            "evaluation": ctx.evaluation.fingerprint() if ctx.evaluation else None,
            "seed": ctx.seed,
            "student_code": self._student_code(),
        }

    def _student_code(self) -> str | None:
        """sha256 of a user student's factory file (None for a scaled student)."""
        path = Path(self.config.student.rsplit(":", 1)[0]) if self.config.student else None
        return file_sha256(path) if path is not None and path.is_file() else None

    def restore(self, source: Artifact, state: dict[str, torch.Tensor]) -> Any:
        if self.config.student:
            from secompile.models.registry import load_model

            student = load_model(self.config.student).module
            student.load_state_dict(state)
            return student.eval()
        return conform_to_state(source.module, state).eval()

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: DistillPassConfig = self.config
        start = time.monotonic()
        teacher = artifact.module
        if isinstance(teacher, torch.jit.ScriptModule) and not cfg.student:
            raise ConfigError("distill cannot scale a TorchScript model: give student=FILE.py:"
                              "factory")
        example = example_batch(artifact, ctx.parity_audio)
        if cfg.student:
            with torch.random.fork_rng():  # its initial weights follow the build's seed
                torch.manual_seed(ctx.seed)
                student, scaled = _user_student(cfg.student, artifact, example), []
        else:
            student, scaled = scaled_student(teacher, example, cfg.width, cfg.depth, cfg.init,
                                             ctx.seed)
            try:
                check_runs(teacher, student, example[:1])
            except ValueError as exc:
                raise ConfigError(f"cannot scale this model: {exc}") from None
        rate = artifact.info.sample_rate
        metrics: dict[str, Any] = {"student": cfg.student or "scaled", "scaled": scaled}
        if cfg.steps:
            metrics["fine_tune"] = fine_tune(student, teacher, artifact.content_hash(),
                                             training_source(cfg, ctx, rate), cfg, ctx, self.name,
                                             {"student_code": self._student_code()})
        metrics.update(before_after(teacher, student, ctx, rate, np.asarray(ctx.parity_audio)))
        macs = metrics["macs_per_second"]
        metrics["macs_ratio"] = round(macs["before"] / macs["after"], 3) if macs["after"] else None
        metrics["seconds"] = round(time.monotonic() - start, 1)
        return PassResult(artifact.derive(self.name, module=student.eval()), True, metrics)
