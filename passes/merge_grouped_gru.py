"""``merge-grouped-gru``: run a group of parallel GRUs as one block-diagonal GRU."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from secompile.compiler.analysis.graph import graph_of_artifact, module_path, op_name, within
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult


@dataclass(frozen=True)
class MergeGroupedGruConfig(PassConfig):
    """Options of ``merge-grouped-gru``."""

    parity_tolerance: float = 1e-5

    def check(self) -> None:
        if not self.parity_tolerance > 0:
            raise ValueError(f"parity_tolerance must be > 0, got {self.parity_tolerance}")


class MergedGroupedGru(nn.Module):
    """``k`` GRUs on ``k`` equal slices of the feature axis, as one block-diagonal GRU.

    Gate ``g`` of member ``i`` occupies rows ``g*k*h + i*h ...`` of the merged weights, and
    its input columns ``i*I ...``; every other entry is zero, so each member's units see only
    their own inputs and hidden state and the arithmetic is the members' own. A bidirectional
    merged GRU emits ``[fwd_1..fwd_k, bwd_1..bwd_k]``; ``order`` restores the grouped layout
    ``[fwd_1, bwd_1, ..., fwd_k, bwd_k]``.
    """

    def __init__(self, members: list[nn.GRU]) -> None:
        super().__init__()
        first = members[0]
        k, h, i = len(members), first.hidden_size, first.input_size
        self.gru = nn.GRU(k * i, k * h, batch_first=first.batch_first,
                          bidirectional=first.bidirectional)
        suffixes = ["", "_reverse"] if first.bidirectional else [""]
        with torch.no_grad():
            for suffix in suffixes:
                for kind, width in (("ih", i), ("hh", h)):
                    weight = torch.zeros(3 * k * h, k * width)
                    bias = torch.zeros(3 * k * h)
                    for m, member in enumerate(members):
                        w = getattr(member, f"weight_{kind}_l0{suffix}")
                        b = getattr(member, f"bias_{kind}_l0{suffix}")
                        for gate in range(3):
                            rows = slice(gate * k * h + m * h, gate * k * h + (m + 1) * h)
                            weight[rows, m * width:(m + 1) * width] = w[gate * h:(gate + 1) * h]
                            bias[rows] = b[gate * h:(gate + 1) * h]
                    getattr(self.gru, f"weight_{kind}_l0{suffix}").copy_(weight)
                    getattr(self.gru, f"bias_{kind}_l0{suffix}").copy_(bias)
        self.reorder = first.bidirectional
        order = [d * k * h + m * h + j for m in range(k) for d in range(2) for j in range(h)]
        self.register_buffer("order", torch.tensor(order if self.reorder else []),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gru(x)[0]
        return y.index_select(-1, self.order) if self.reorder else y


def _mergeable(grus: list[nn.Module]) -> bool:
    first = grus[0]
    return all(
        isinstance(g, nn.GRU) and g.num_layers == 1 and g.bias and not g.training
        and (g.input_size, g.hidden_size, g.bidirectional, g.batch_first)
        == (first.input_size, first.hidden_size, first.bidirectional, first.batch_first)
        for g in grus
    ) and len({id(g) for g in grus}) == len(grus)


def find_grouped_grus(graph: torch.fx.Graph) -> list[tuple[str, list[str]]]:
    """(container path, GRU paths in slice order) for each container whose whole forward is
    ``chunk(x, k, dim=-1) -> GRU_i(slice_i) -> cat(outputs, dim=-1)`` with default zero
    initial states and unused final states, called once."""
    found = []
    for cat in graph.nodes:
        if cat.op != "call_function" or op_name(cat) != "cat" or cat.args[1:] not in ((-1,), ()):
            continue
        outs = cat.args[0]
        if len(outs) < 2 or not all(op_name(o) == "getitem" and o.args[1] == 0 for o in outs):
            continue
        grus = [o.args[0] for o in outs]
        if not all(op_name(g) == "gru" and op_name(g.args[1]) == "zeros" for g in grus):
            continue
        slices = [g.args[0] for g in grus]
        if not all(op_name(s) == "getitem" for s in slices):
            continue
        chunk = slices[0].args[0]
        if op_name(chunk) != "chunk" or chunk.args[1:] != (len(grus), -1):
            continue
        if [s.args[0] for s in slices] != [chunk] * len(grus) or [
            s.args[1] for s in slices] != list(range(len(grus))):
            continue
        scope = module_path(cat)
        gru_paths = [module_path(g) for g in grus]
        if module_path(chunk) != scope or not all(within(p, scope) for p in gru_paths):
            continue
        allowed = {cat, chunk, *outs, *grus, *slices, *(g.args[1] for g in grus)}
        allowed |= {u for g in grus for u in g.users}  # the (unused) final-state getitems
        in_scope = {n for n in graph.nodes if n.op == "call_function" and within(
            module_path(n), scope)}
        if in_scope != allowed or any(
                len(u.users) for g in grus for u in g.users if u.args[1] != 0):
            continue
        found.append((scope, gru_paths))
    return found


class MergeGroupedGru(Pass):
    """Replace grouped GRUs by one block-diagonal GRU.

    Rewrite rule: a module computing ``cat([GRU_i(x_i) for x_i in chunk(x, k, -1)], -1)``
    (GTCRN's grouped RNNs, grouped dual-path RNNs in general) becomes one GRU of ``k`` times
    the width with block-diagonal weights, followed, when bidirectional, by a fixed channel
    permutation. The maths is unchanged (the extra entries are exact zeros) while ONNX Runtime
    runs one recurrent loop instead of ``k``: its per-step overhead dominates small GRUs.
    Applied only when the members share sizes and direction, use single layers with biases,
    start from zero state, their final states are unused, and the container is called once.
    """

    name = "merge-grouped-gru"
    Config = MergeGroupedGruConfig
    input_formats = ("torch",)
    summary = "run grouped parallel GRUs (split -> GRUs -> concat) as one block-diagonal GRU"

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        module = artifact.module
        graph, reason = graph_of_artifact(artifact, ctx.parity_audio)
        if graph is None:
            return PassResult(artifact, False, {"merged": 0, "skipped": reason})
        groups = [(scope, paths) for scope, paths in find_grouped_grus(graph)
                  if _mergeable([module.get_submodule(p) for p in paths])]
        if not groups:
            return PassResult(artifact, False, {"merged": 0})
        merged = copy.deepcopy(module)
        for scope, paths in groups:
            members = [merged.get_submodule(p) for p in paths]
            merged.set_submodule(scope, MergedGroupedGru(members).eval())
        metrics = {"merged": len(groups),
                   "groups": [f"{scope}: {len(paths)} GRUs" for scope, paths in groups]}
        return PassResult(artifact.derive(self.name, module=merged), True, metrics)
