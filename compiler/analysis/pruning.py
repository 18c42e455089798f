"""Which channels to remove: importance criteria, ratio and MAC-target selection, and the
before/after measurements the ``prune`` and ``distill`` passes report.

Importance of channel ``c`` of a group (:mod:`compiler.analysis.channels`):

``l1`` / ``l2``
    magnitude: the L1 / L2 norm of every weight slice that belongs to ``c`` (a producer's
    output row, an RNN unit's gate rows and recurrent column, a consumer's input column),
    each site normalised by its mean so no layer dominates by scale, summed over sites.
``activation``
    data-aware: the mean absolute activation of ``c`` at its producers' outputs on real audio,
    times the L2 norm of the weights that read it (the expected size of what ``c`` contributes
    downstream), summed over sites.

Selection removes the lowest-ranked channels per group (``per-layer``: the same fraction of
each group) or over all groups at once (``global``: importances normalised by each group's
mean, then one ranking), always evenly over a grouped convolution's slices, the same count
across the layers of one RNN, at most ``max_layer_ratio`` of a group, and keeping a multiple
of ``round_to`` channels where the group is large enough. :func:`select_for_macs` searches the
ratio by bisection until the *counted* MACs of the rewritten model fall by the asked fraction.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from secompile.compiler.analysis.channels import _GATES, _RNNS, ChannelGroup, Site, remove_channels
from secompile.compiler.analysis.costs import count_layer_costs

CRITERIA = ("l1", "l2", "activation")
SCOPES = ("per-layer", "global")


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one ``module(example)`` call, counted from the shapes every
    convolution, linear and recurrent layer really sees
    (:func:`compiler.analysis.costs.count_layer_costs`)."""
    return sum(cost.macs for cost in count_layer_costs(module, example).values())


def count_params(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


# --- importance ------------------------------------------------------------------------------


def _rnn_unit_slices(rnn: nn.RNNBase, layer: int) -> torch.Tensor:
    """``[hidden, n]``: per hidden unit of ``layer``, its gate rows of the input and recurrent
    weights and its recurrent column, over both directions."""
    hidden = getattr(rnn, f"weight_hh_l{layer}").shape[1]
    gates = _GATES.get(type(rnn), 1)
    parts = []
    for sfx in ("", "_reverse") if rnn.bidirectional else ("",):
        for name in (f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}"):
            w = getattr(rnn, name).detach()
            parts.append(w.reshape(gates, hidden, -1).permute(1, 0, 2).reshape(hidden, -1))
        parts.append(getattr(rnn, f"weight_hh_l{layer}{sfx}").detach().t())
    return torch.cat(parts, dim=1)


def _site_slices(module: nn.Module, site: Site, size: int) -> torch.Tensor | None:
    """``[size, n]``: the weights of ``site`` that belong to each of the group's channels."""
    if site.role in ("rnn_out", "rnn_layer"):
        return _rnn_unit_slices(module, site.layer)
    if site.role in ("rnn_in", "rnn_layer_in"):
        w = torch.cat([getattr(module, f"weight_ih_l{site.layer}{sfx}").detach() for sfx in
                       (("", "_reverse") if module.bidirectional else ("",))])
        return w[:, site.offset: site.offset + size].t()
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    w = weight.detach()
    if site.role == "channel":
        return w.reshape(w.shape[0], -1)[site.offset: site.offset + size]
    if isinstance(module, nn.Linear):
        return w if site.role == "out" else w[:, site.offset: site.offset + size].t()
    transposed = getattr(module, "transposed", False)
    groups = module.groups
    if site.role == "out":
        if not transposed:
            return w.reshape(w.shape[0], -1)
        per = w.shape[1]  # [in, out/groups, *k] -> per output channel
        blocks = w.reshape(groups, w.shape[0] // groups, per, -1)
        return blocks.permute(0, 2, 1, 3).reshape(groups * per, -1)
    if transposed:  # input channels are rows
        return w.reshape(w.shape[0], -1)[site.offset: site.offset + size]
    per = w.shape[1]
    blocks = w.reshape(groups, w.shape[0] // groups, per, -1)
    columns = blocks.permute(0, 2, 1, 3).reshape(groups * per, -1)
    return columns[site.offset: site.offset + size]


def magnitude_importance(module: nn.Module, group: ChannelGroup, p: int) -> np.ndarray:
    """Per-channel L``p`` magnitude importance of ``group`` (see the module docstring)."""
    score = np.zeros(group.size)
    for site in group.producers + group.consumers:
        slices = _site_slices(module.get_submodule(site.path), site, group.size)
        if slices is None or slices.shape[0] != group.size:
            continue
        norms = slices.abs().sum(1) if p == 1 else slices.pow(2).sum(1).sqrt()
        norms = norms.double().numpy()
        score += norms / (norms.mean() + 1e-12)
    return score


@torch.no_grad()
def _producer_activations(module: nn.Module, groups: list[ChannelGroup],
                          batches: Iterable[torch.Tensor]
                          ) -> dict[tuple[str, str, int], np.ndarray]:
    """Mean |activation| per channel at every producer site, over ``batches``."""
    sums: dict[tuple[str, str, int], np.ndarray] = defaultdict(lambda: 0.0)
    inputs: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = []
    sites = {(s.path, s.role, s.layer): s for g in groups for s in g.producers}

    def hook(path: str) -> Callable[..., None]:
        def record(mod: nn.Module, args: tuple, out: Any) -> None:
            y = out[0] if isinstance(out, tuple) else out
            if isinstance(mod, _RNNS):
                inputs[path].append(args[0])
                hidden = mod.hidden_size
                a = y.abs().reshape(-1, y.shape[-1])
                a = a.reshape(a.shape[0], -1, hidden).sum(1)
            elif isinstance(mod, nn.Linear):
                a = y.abs().reshape(-1, y.shape[-1])
            else:
                a = y.abs().transpose(0, 1).reshape(y.shape[1], -1).t()
            key = (path, "rnn_out" if isinstance(mod, _RNNS) else "out",
                   mod.num_layers - 1 if isinstance(mod, _RNNS) else 0)
            sums[key] = sums[key] + a.mean(0).double().numpy()
        return record

    for path in {s.path for s in sites.values()}:
        handles.append(module.get_submodule(path).register_forward_hook(hook(path)))
    try:
        for batch in batches:
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
    for (path, role, layer) in sites:  # inner RNN layers: rerun the stack layer by layer
        if role != "rnn_layer":
            continue
        rnn = module.get_submodule(path)
        for x in inputs[path]:
            h = x
            for index in range(layer + 1):
                h = _single_layer(rnn, index)(h)[0]
            hidden = rnn.hidden_size
            a = h.abs().reshape(-1, h.shape[-1]).reshape(-1, h.shape[-1] // hidden, hidden).sum(1)
            sums[(path, role, layer)] = sums[(path, role, layer)] + a.mean(0).double().numpy()
    return dict(sums)


def _single_layer(rnn: nn.RNNBase, layer: int) -> nn.RNNBase:
    """Layer ``layer`` of ``rnn`` as a one-layer RNN of the same kind."""
    width = getattr(rnn, f"weight_ih_l{layer}").shape[1]
    single = type(rnn)(width, rnn.hidden_size, num_layers=1, bias=rnn.bias,
                       batch_first=rnn.batch_first, bidirectional=rnn.bidirectional)
    for sfx in ("", "_reverse") if rnn.bidirectional else ("",):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if hasattr(rnn, f"{kind}_l{layer}{sfx}"):
                getattr(single, f"{kind}_l0{sfx}").data.copy_(
                    getattr(rnn, f"{kind}_l{layer}{sfx}").detach())
    return single.eval()


def activation_importance(module: nn.Module, groups: list[ChannelGroup],
                          batches: list[torch.Tensor]) -> dict[int, np.ndarray]:
    """Per-channel activation x downstream-weight importance of every group."""
    activity = _producer_activations(module, groups, batches)
    scores = {}
    for group in groups:
        act = np.zeros(group.size)
        for site in group.producers:
            value = activity.get((site.path, site.role, site.layer))
            if value is not None and np.size(value) == group.size:
                act += value / (np.mean(value) + 1e-12)
        reach = np.zeros(group.size)
        for site in group.consumers:
            slices = _site_slices(module.get_submodule(site.path), site, group.size)
            if slices is not None and slices.shape[0] == group.size:
                norms = slices.pow(2).sum(1).sqrt().double().numpy()
                reach += norms / (norms.mean() + 1e-12)
        if not reach.any():
            reach = np.ones(group.size)
        scores[group.id] = (act if act.any() else np.ones(group.size)) * reach
    return scores


def importance(module: nn.Module, groups: list[ChannelGroup], criterion: str,
               batches: list[torch.Tensor] | None = None) -> dict[int, np.ndarray]:
    """Per-channel importance of every prunable group by ``criterion`` (one of CRITERIA)."""
    prunable = [g for g in groups if g.prunable]
    if criterion == "activation":
        if not batches:
            raise ValueError("the activation criterion needs audio batches")
        return activation_importance(module, prunable, batches)
    p = {"l1": 1, "l2": 2}[criterion]
    return {g.id: magnitude_importance(module, g, p) for g in prunable}


# --- selection -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionRules:
    """How many channels a group may lose (see the module docstring)."""

    scope: str = "per-layer"
    max_layer_ratio: float = 0.9
    round_to: int = 8


def _allowed(group: ChannelGroup, wanted: int, rules: SelectionRules) -> int:
    """The number of channels to remove nearest below ``wanted`` that the group allows."""
    per = group.size // group.slices
    cap = min(per - 1, math.floor(per * rules.max_layer_ratio))
    per_slice = max(0, min(wanted // group.slices, cap))
    keep = per - per_slice
    if rules.round_to > 1 and per >= 2 * rules.round_to and per_slice:
        keep = min(per, math.ceil(keep / rules.round_to) * rules.round_to)
    return (per - keep) * group.slices


def _lowest(scores: np.ndarray, count: int, slices: int) -> list[int]:
    """Indices of the ``count`` lowest scores, taken evenly from ``slices`` blocks."""
    per = len(scores) // slices
    out: list[int] = []
    for s in range(slices):
        block = scores[s * per:(s + 1) * per]
        out += [s * per + int(i) for i in np.argsort(block, kind="stable")[: count // slices]]
    return sorted(out)


def select(groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
           rules: SelectionRules) -> dict[int, list[int]]:
    """Channels to remove per group id for a pruning ``ratio`` in [0, 1)."""
    prunable = [g for g in groups if g.prunable and g.id in scores]
    if ratio <= 0 or not prunable:
        return {}
    if rules.scope == "global":
        relative = {g.id: scores[g.id] / (scores[g.id].mean() + 1e-12) for g in prunable}
        threshold = np.quantile(np.concatenate(list(relative.values())), ratio)
        wanted = {gid: int((score < threshold).sum()) for gid, score in relative.items()}
    else:
        wanted = {g.id: round(ratio * g.size) for g in prunable}
    counts = {g.id: _allowed(g, wanted[g.id], rules) for g in prunable}
    tied: dict[str, list[ChannelGroup]] = defaultdict(list)
    for g in prunable:  # the layers of one RNN share one hidden size
        if g.tie is not None:
            tied[g.tie].append(g)
    for members in tied.values():
        if len({m.size for m in members}) > 1:  # cannot keep one size: leave them whole
            count = 0
        else:  # the largest count every member allows (slices and rounding differ)
            count = min(counts[m.id] for m in members)
            while (lowest := min(_allowed(m, count, rules) for m in members)) != count:
                count = lowest
        for m in members:
            counts[m.id] = count
    return {g.id: _lowest(scores[g.id], counts[g.id], g.slices)
            for g in prunable if counts[g.id]}


@dataclass(frozen=True)
class Selection:
    """A chosen removal, the ratio that gave it and the counted MACs it leaves."""

    removal: dict[int, list[int]]
    ratio: float
    macs_before: int
    macs_after: int

    @property
    def macs_reduction(self) -> float:
        """Fraction of MACs removed."""
        return 1 - self.macs_after / self.macs_before if self.macs_before else 0.0


def select_for_macs(module: nn.Module, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
                    target: float, rules: SelectionRules, example: torch.Tensor,
                    iterations: int = 14) -> Selection:
    """The smallest ratio whose removal cuts counted MACs by at least ``target`` (bisection
    over the ratio; each candidate is rewritten and counted). When even the largest allowed
    removal falls short, that removal is returned and its reduction says so."""
    before = count_macs(module, example)

    def macs_at(ratio: float) -> tuple[dict[int, list[int]], int]:
        removal = select(groups, scores, ratio, rules)
        if not removal:
            return removal, before
        return removal, count_macs(remove_channels(module, groups, removal), example)

    low, high = 0.0, 0.99
    best_removal, best_macs = macs_at(high)
    best_ratio = high
    if 1 - best_macs / before < target:
        return Selection(best_removal, high, before, best_macs)
    for _ in range(iterations):
        mid = (low + high) / 2
        removal, macs = macs_at(mid)
        if 1 - macs / before >= target:
            high, best_removal, best_macs, best_ratio = mid, removal, macs, mid
        else:
            low = mid
    return Selection(best_removal, best_ratio, before, best_macs)


def group_sizes(groups: list[ChannelGroup], removal: dict[int, list[int]]) -> list[dict]:
    """Report rows: each prunable group's sites and its size before and after."""
    return [{"group": g.describe(), "before": g.size,
             "after": g.size - len(removal.get(g.id, ()))}
            for g in groups if g.prunable]
