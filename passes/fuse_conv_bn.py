"""``fuse-conv-bn``: fold eval-mode BatchNorm into the convolution that feeds it."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from secompile.compiler.analysis.graph import graph_of_artifact, module_path, op_name
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FuseConvBnConfig(PassConfig):
    """Options of ``fuse-conv-bn``."""

    parity_tolerance: float = 1e-5

    def check(self) -> None:
        if not self.parity_tolerance > 0:
            raise ValueError(f"parity_tolerance must be > 0, got {self.parity_tolerance}")


def fold_batchnorm(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn``'s running statistics and affine into ``conv`` in place.

    A convolution's weight is ``[out, in/groups, *k]``: scale row ``o`` by
    ``gamma_o / sqrt(var_o + eps)``. A transposed convolution's is ``[in, out/groups, *k]``
    and output channel ``o`` lives in group ``o // (out/groups)`` at column ``o % (out/groups)``,
    so the scale is applied per (group, column) — which is why grouped transposed
    convolutions need this rather than ``torch.nn.utils.fusion``.
    """
    with torch.no_grad():
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        scale = gamma / torch.sqrt(bn.running_var + bn.eps)
        shift = beta - bn.running_mean * scale
        weight = conv.weight
        if isinstance(conv, _TRANSPOSED):
            groups = conv.groups
            per_group = weight.shape[1]
            w = weight.reshape(groups, weight.shape[0] // groups, per_group, *weight.shape[2:])
            s = scale.reshape(groups, 1, per_group, *([1] * (weight.dim() - 2)))
            new_weight = (w * s).reshape(weight.shape)
        else:
            new_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(new_weight)
        conv.bias = nn.Parameter(bias * scale + shift)


def find_conv_bn_pairs(graph: torch.fx.Graph) -> list[tuple[str, str]]:
    """(conv path, batchnorm path) pairs where the BN is the conv output's only consumer.

    A conv or BN called more than once is left alone, since folding would change its other
    uses.
    """
    calls: Counter[str] = Counter()
    for node in graph.nodes:
        path = module_path(node)
        if node.op == "call_function" and path and op_name(node).startswith(("conv", "batch_norm")):
            calls[path] += 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_function" or op_name(node) != "batch_norm":
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or len(source.users) != 1:
            continue
        if not op_name(source).startswith("conv"):
            continue
        conv_path, bn_path = module_path(source), module_path(node)
        if conv_path and bn_path and calls[conv_path] == 1 and calls[bn_path] == 1:
            pairs.append((conv_path, bn_path))
    return pairs


class FuseConvBn(Pass):
    """Fold BatchNorm into the preceding convolution.

    Rewrite rules: ``BN(Conv(x))`` → ``Conv'(x)`` with ``W' = W·γ/σ`` per output channel and
    ``b' = (b − μ)·γ/σ + β``; the same for ``ConvTranspose`` of any ``groups``; the BN module
    becomes ``nn.Identity``. Only applied when the BN is in eval mode, the conv output feeds
    nothing else, and both modules are called once. The input module is never mutated.
    """

    name = "fuse-conv-bn"
    Config = FuseConvBnConfig
    input_formats = ("torch",)
    summary = "fold BatchNorm into the preceding conv / transposed conv (any groups)"

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        module = artifact.module
        graph, reason = graph_of_artifact(artifact, ctx.parity_audio)
        if graph is None:
            return PassResult(artifact, False, {"fused": 0, "skipped": reason})
        pairs = [
            (c, b) for c, b in find_conv_bn_pairs(graph)
            if isinstance(module.get_submodule(c), _CONVS + _TRANSPOSED)
            and isinstance(module.get_submodule(b), _NORMS)
            and not module.get_submodule(b).training
            and module.get_submodule(b).track_running_stats
        ]
        if not pairs:
            return PassResult(artifact, False, {"fused": 0})
        fused = copy.deepcopy(module)
        for conv_path, bn_path in pairs:
            fold_batchnorm(fused.get_submodule(conv_path), fused.get_submodule(bn_path))
            fused.set_submodule(bn_path, nn.Identity())
        fused.eval()
        params_before = sum(p.numel() for p in module.parameters())
        params_after = sum(p.numel() for p in fused.parameters())
        metrics = {
            "fused": len(pairs),
            "pairs": [f"{c} + {b}" for c, b in pairs],
            "params_before": params_before,
            "params_after": params_after,
        }
        return PassResult(artifact.derive(self.name, module=fused), True, metrics)
