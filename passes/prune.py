"""``prune``: structured pruning that really shrinks tensors, then fine-tuning by distillation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from secompile.compiler.analysis.channels import (
    channel_groups,
    check_runs,
    conform_to_state,
    remove_channels,
)
from secompile.compiler.analysis.graph import example_batch, graph_of_artifact
from secompile.compiler.analysis.pruning import (
    CRITERIA,
    SCOPES,
    SelectionRules,
    count_macs,
    group_sizes,
    importance,
    select,
    select_for_macs,
)
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pass_base import Pass, PassResult
from secompile.compiler.training.finetune import (
    TrainingOptions,
    before_after,
    data_fingerprint,
    fine_tune,
    training_source,
)

if TYPE_CHECKING:
    from secompile.models.distillation import NoisySource

ACTIVATION_BATCHES = 4


@dataclass(frozen=True)
class PruneConfig(TrainingOptions):
    """Options of ``prune`` (plus the fine-tuning options of
    :class:`compiler.finetune.TrainingOptions`).

    ``macs_reduction`` > 0 searches the pruning ratio until the counted MACs fall by at least
    that fraction and overrides ``ratio``; otherwise ``ratio`` is the fraction of each group's
    channels removed (``per-layer``) or of all prunable channels (``global``).
    ``max_pesq_loss`` / ``max_si_sdr_loss``: with evaluation pairs, a pruned and fine-tuned
    model that loses more than this (PESQ-WB, dB SI-SDR) against the input model, overall or
    in any input-SNR bucket, is refused and the input model goes on unchanged. The defaults
    are the build's default quality gates, so a refused pruning never fails a default build.
    ``min_agreement_db``: without evaluation pairs, the pruned model is refused when its
    output on the parity clip agrees with the input model's by less than this (SI-SDR).
    """

    ratio: float = 0.0
    macs_reduction: float = 0.0
    scope: str = "per-layer"
    criterion: str = "l2"
    max_layer_ratio: float = 0.9
    round_to: int = 8
    max_pesq_loss: float = 0.05
    max_si_sdr_loss: float = 0.2
    min_agreement_db: float = 20.0

    def check(self) -> None:
        super().check()
        if not 0 <= self.ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if not 0 <= self.macs_reduction < 1:
            raise ValueError(f"macs_reduction must be in [0, 1), got {self.macs_reduction}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if not 0 < self.max_layer_ratio < 1:
            raise ValueError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        if self.max_pesq_loss < 0 or self.max_si_sdr_loss < 0 or self.min_agreement_db < 0:
            raise ValueError(f"max_pesq_loss, max_si_sdr_loss and min_agreement_db must be >= 0, "
                             f"got {self.max_pesq_loss}, {self.max_si_sdr_loss} and "
                             f"{self.min_agreement_db}")

    @property
    def removes_nothing(self) -> bool:
        """A 0% ratio and no MAC target: the pass is a no-op."""
        return self.ratio == 0 and self.macs_reduction == 0


class Prune(Pass):
    """Remove whole channels, then fine-tune the smaller model against the original.

    Rewrite rules: channel groups come from the model's ``torch.export`` graph
    (:mod:`compiler.analysis.channels`): output channels of ``Conv``/``ConvTranspose`` (any
    ``groups``: depthwise ones pass their channels through, grouped ones lose channels evenly
    per group), output features of ``Linear``, hidden units of ``GRU``/``LSTM`` layers, kept
    consistent across every reader (the next layer's input columns, BatchNorm/LayerNorm/PReLU,
    residual adds, concatenations). Channels that reach the model output, a reshape that merges
    them, a slice, or an op the analysis does not know are left alone. Importance is
    ``l1``/``l2`` magnitude or ``activation`` on the training audio
    (:mod:`compiler.analysis.pruning`); the lowest channels go, per layer or globally, by
    ``ratio`` or until counted MACs drop by ``macs_reduction``. The pruned copy is then
    distilled from the unpruned model (:func:`models.distillation.distill`). The input module is
    never mutated; a 0% ratio, a model without prunable channels or an untraceable model leave
    it as it is.
    """

    name = "prune"
    Config = PruneConfig
    input_formats = ("torch",)
    summary = "structured channel pruning (conv, convT, linear, GRU/LSTM) + distillation"
    checks_parity = False  # the output changes by design; quality is measured instead
    changes_function = True

    def reads_calibration(self) -> bool:
        return self.config.data == "calibration"

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        return {
            "data": data_fingerprint(self.config, ctx),
            "evaluation": ctx.evaluation.fingerprint() if ctx.evaluation else None,
            "seed": ctx.seed,
        }

    def restore(self, source: Artifact, state: dict[str, torch.Tensor]) -> Any:
        return conform_to_state(source.module, state)

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: PruneConfig = self.config
        if cfg.removes_nothing:
            return _unchanged(artifact, {}, "ratio 0 and no MAC target")
        start = time.monotonic()
        module = artifact.module
        graph, reason = graph_of_artifact(artifact, ctx.parity_audio)
        if graph is None:
            return _unchanged(artifact, {}, reason)
        groups = channel_groups(module, graph)
        blocked = [{"group": g.describe(), "why": g.blocked} for g in groups if not g.prunable]
        metrics: dict[str, Any] = {"criterion": cfg.criterion, "scope": cfg.scope,
                                   "blocked": blocked}
        if not any(g.prunable for g in groups):
            return _unchanged(artifact, metrics, "no prunable channel group")
        rate = artifact.info.sample_rate
        try:
            source = self._source(ctx, rate, needed=cfg.steps > 0 or cfg.criterion == "activation")
        except DataUnavailable as exc:
            return _unchanged(artifact, metrics, str(exc))
        example = example_batch(artifact, ctx.parity_audio)[:1]
        removal, ratio, why = self._select(module, groups, source, example, rate, metrics)
        if why:
            return _unchanged(artifact, metrics, why)
        try:
            pruned = remove_channels(module, groups, removal).eval()
            check_runs(module, pruned, example)
        except ValueError as exc:  # an analysis gap on this model: say so, ship it unpruned
            return _unchanged(artifact, metrics, f"the rewrite failed: {exc}")
        metrics.update({
            "ratio": round(ratio, 4), "pruned_channels": sum(len(v) for v in removal.values()),
            "groups": group_sizes(groups, removal),
            "macs_after_pruning": count_macs(pruned, example),
        })
        if cfg.steps:
            metrics["fine_tune"] = fine_tune(pruned, module, artifact.content_hash(), source,
                                             cfg, ctx, self.name, {})
        metrics.update(before_after(module, pruned, ctx, rate, np.asarray(ctx.parity_audio)))
        metrics["seconds"] = round(time.monotonic() - start, 1)
        refusal = self._refusal(metrics["quality"], metrics["agreement_db"])
        if refusal:
            return PassResult(artifact, False,
                              {**metrics, "refused": f"{refusal}; the unpruned model goes on"})
        return PassResult(artifact.derive(self.name, module=pruned), True, metrics)

    def _source(self, ctx: PassContext, rate: int, needed: bool) -> NoisySource | None:
        """The training audio when the pass needs it; ``DataUnavailable`` when the project's
        synthetic speech cannot be made here (espeak-ng missing)."""
        if not needed:
            return None
        try:
            return training_source(self.config, ctx, rate)
        except ConfigError as exc:
            if self.config.data == "synthetic":
                raise DataUnavailable(str(exc)) from None
            raise

    def _select(self, module: torch.nn.Module, groups: list, source: NoisySource | None,
                example: torch.Tensor, rate: int, metrics: dict[str, Any]
                ) -> tuple[dict[int, list[int]], float, str | None]:
        """Channels to remove, the ratio that gave them, or why nothing is removed."""
        cfg: PruneConfig = self.config
        batches = None
        if cfg.criterion == "activation":
            length = int(cfg.segment_seconds * rate)
            batches = [source.batch(i, cfg.batch_size, length, "train")
                       for i in range(ACTIVATION_BATCHES)]
        scores = importance(module, groups, cfg.criterion, batches)
        rules = SelectionRules(cfg.scope, cfg.max_layer_ratio, cfg.round_to)
        if not cfg.macs_reduction:
            removal = select(groups, scores, cfg.ratio, rules)
            return removal, cfg.ratio, None if removal else "the ratio removes no channel"
        selection = select_for_macs(module, groups, scores, cfg.macs_reduction, rules, example)
        metrics["macs_target"] = {"reduction": cfg.macs_reduction,
                                  "reachable": round(selection.macs_reduction, 4)}
        if selection.macs_reduction < cfg.macs_reduction:
            return {}, selection.ratio, (
                f"the prunable channels allow at most {selection.macs_reduction:.1%} fewer "
                f"MACs, short of the {cfg.macs_reduction:.1%} asked (the others are blocked: "
                "see 'blocked')")
        return selection.removal, selection.ratio, None

    def _refusal(self, quality: dict[str, Any] | None, agreement_db: float) -> str | None:
        """Why the pruned model loses too much: quality limits on the evaluation pairs, or
        without pairs its agreement with the input model on the parity clip."""
        if quality is None:
            floor = self.config.min_agreement_db
            if agreement_db < floor:
                return (f"without evaluation pairs, agreement with the unpruned model "
                        f"{agreement_db:.1f} dB SI-SDR is below min_agreement_db={floor}")
            return None
        limits = {"pesq": self.config.max_pesq_loss, "si_sdr": self.config.max_si_sdr_loss}
        scopes = {"all": quality["delta"]} | {f"SNR bucket {name}": bucket["delta"]
                                              for name, bucket in quality["buckets"].items()}
        for scope, delta in scopes.items():
            for metric, limit in limits.items():
                loss = -delta[metric]
                if loss > limit:  # NaN (PESQ found no speech) never refuses
                    return f"{metric} loss {loss:.3f} in {scope} exceeds the limit {limit}"
        return None


class DataUnavailable(Exception):
    """The default synthetic training audio cannot be made on this machine."""


def _unchanged(artifact: Artifact, metrics: dict[str, Any], why: str) -> PassResult:
    """The input model goes on: ``why`` is reported (and printed by the CLI)."""
    return PassResult(artifact, False, {**metrics, "pruned_channels": 0, "skipped": why})
