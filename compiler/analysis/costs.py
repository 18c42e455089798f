"""The cost model: MACs, FLOPs and bytes per layer of a torch model, counted from real shapes.

Forward hooks record the input and output shapes each leaf module sees in one call, and a
formula per layer type turns them into multiply-adds (convolutions of any ``groups``,
transposed convolutions, linear layers, GRU/LSTM/RNN including projections and both
directions) and other FLOPs (biases, activations, normalisation, gate arithmetic).
:func:`check_flops` cross-checks the matmul part against ``torch.utils.flop_counter``.
Pruning counts MACs with it; the profiler adds time and the roofline on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# FLOPs per output element of modules that are not matrix products (transcendentals count one).
_ELEMENTWISE_FLOPS: dict[type[nn.Module], int] = {
    nn.ReLU: 1, nn.ReLU6: 1, nn.PReLU: 2, nn.LeakyReLU: 2, nn.ELU: 1, nn.SELU: 2,
    nn.GELU: 1, nn.SiLU: 2, nn.Sigmoid: 1, nn.Tanh: 1, nn.Softplus: 1, nn.Hardtanh: 1,
    # eval-mode normalisation: BatchNorm is one multiply-add per element, the others also
    # reduce a mean and a variance first.
    nn.BatchNorm1d: 2, nn.BatchNorm2d: 2, nn.BatchNorm3d: 2,
    nn.LayerNorm: 5, nn.GroupNorm: 5, nn.InstanceNorm1d: 5, nn.InstanceNorm2d: 5,
}
# Gate arithmetic per hidden unit and time step of a recurrent layer, besides its matmuls.
_RNN_GATE_FLOPS: dict[type[nn.Module], int] = {nn.GRU: 15, nn.LSTM: 17, nn.RNN: 3}
_RNN_GATES: dict[type[nn.Module], int] = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}

@dataclass
class LayerCost:
    """FLOPs and bytes of one layer summed over its calls in one forward pass.

    ``matmul_flops`` are the multiply-adds of convolutions, linear layers and recurrent
    matmuls (2 FLOPs per MAC), the part ``FlopCounterMode`` also counts; ``other_flops`` are
    biases, activations, normalisation and gate arithmetic. ``counted`` is False for module
    types this counter does not know (their FLOPs read 0, their bytes are still counted).
    """

    kind: str
    calls: int = 0
    macs: int = 0
    matmul_flops: int = 0
    other_flops: int = 0
    bytes: int = 0
    counted: bool = True

    @property
    def flops(self) -> int:
        """All counted FLOPs."""
        return self.matmul_flops + self.other_flops


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def _module_flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int] | None:
    """(MACs, other FLOPs) of one call of a leaf module with first input ``x`` and first
    output ``y``; None for module types without a formula."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        if module.transposed:  # every input element scatters into out/groups x kernel outputs
            macs = x.numel() * module.out_channels // module.groups * kernel
        else:  # every output element gathers in/groups x kernel inputs
            macs = y.numel() * module.in_channels // module.groups * kernel
        return macs, y.numel() if module.bias is not None else 0
    if isinstance(module, nn.Linear):
        return y.numel() * module.in_features, y.numel() if module.bias is not None else 0
    if isinstance(module, nn.RNNBase):
        kind = next((k for k in (nn.GRU, nn.LSTM) if isinstance(module, k)), nn.RNN)
        gates, hidden = _RNN_GATES[kind], module.hidden_size
        out = getattr(module, "proj_size", 0) or hidden  # an LSTM may project its state
        dirs = 2 if module.bidirectional else 1
        steps = x.numel() // module.input_size  # time steps x batch
        macs = 0
        for layer in range(module.num_layers):
            width = module.input_size if layer == 0 else out * dirs
            projection = hidden * out if out != hidden else 0
            macs += steps * dirs * (gates * hidden * (width + out) + projection)
        gate_flops = steps * dirs * hidden * module.num_layers * _RNN_GATE_FLOPS[kind]
        return macs, gate_flops
    per_element = next((f for t, f in _ELEMENTWISE_FLOPS.items() if isinstance(module, t)), None)
    if per_element is not None:
        return 0, per_element * y.numel()
    return None


def count_layer_costs(module: nn.Module, example: torch.Tensor) -> dict[str, LayerCost]:
    """FLOPs and bytes per leaf module path over one ``module(example)`` call.

    Shapes are the real ones each leaf sees (forward hooks); bytes are parameters plus every
    tensor input and output, at their element size, per call.
    """
    costs: dict[str, LayerCost] = {}
    handles = []

    def hook(path: str) -> Callable[..., None]:
        def record(mod: nn.Module, args: tuple, out: Any) -> None:
            ins, outs = _tensors(args), _tensors(out)
            cost = costs.setdefault(path, LayerCost(type(mod).__name__))
            cost.calls += 1
            params = sum(p.numel() * p.element_size() for p in mod.parameters())
            cost.bytes += params + sum(t.numel() * t.element_size() for t in ins + outs)
            flops = _module_flops(mod, ins[0], outs[0]) if ins and outs else None
            if flops is None:
                cost.counted = False
                return
            cost.macs += flops[0]
            cost.matmul_flops += 2 * flops[0]
            cost.other_flops += flops[1]

        return record

    for path, sub in module.named_modules():
        if path and not any(True for _ in sub.children()):
            handles.append(sub.register_forward_hook(hook(path)))
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return costs


@dataclass(frozen=True)
class FlopCheck:
    """Our FLOP count against ``torch.utils.flop_counter.FlopCounterMode`` on the same input.

    ``FlopCounterMode`` counts matrix products and convolutions only, so it is compared with
    our matmul part, ``counted_matmul``. A GRU runs as ``addmm``/``bmm`` calls it sees; an LSTM
    on CPU runs as one oneDNN kernel it does not, so recurrent layers it reports no FLOPs for
    are left out of both sides and named in ``excluded`` (their FLOPs in ``excluded_flops``).
    ``counted_total`` is all our FLOPs: every layer, elementwise work included.
    """

    counted_matmul: int
    reference: int
    counted_total: int
    excluded: tuple[str, ...] = ()
    excluded_flops: int = 0
    uncounted: tuple[str, ...] = ()  # layer types without a FLOP formula

    @property
    def relative_difference(self) -> float:
        """``(ours - reference) / reference`` of the compared part; NaN without a reference."""
        if not self.reference:
            return math.nan
        return (self.counted_matmul - self.reference) / self.reference

    @property
    def note(self) -> str:
        """What was compared, in words."""
        text = ("compared: conv, linear and recurrent matmul FLOPs (FlopCounterMode counts "
                "matmuls and convolutions only); elementwise FLOPs are ours alone")
        if self.excluded:
            text += (f"; left out, unseen by FlopCounterMode: {', '.join(self.excluded)} "
                     f"({self.excluded_flops / 1e6:.2f} MFLOPs)")
        if self.uncounted:
            text += f"; layer types without a FLOP formula: {', '.join(self.uncounted)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the relative difference and the note."""
        diff = self.relative_difference
        return {**asdict(self), "relative_difference": None if math.isnan(diff) else diff,
                "note": self.note}


def check_flops(module: nn.Module, example: torch.Tensor,
                costs: dict[str, LayerCost]) -> FlopCheck:
    """Compare ``costs`` (from :func:`count_layer_costs`) with ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(example)
    # FlopCounterMode keys its per-module counts "<RootClass>.<path>".
    seen = {key.split(".", 1)[1]: sum(ops.values())
            for key, ops in counter.get_flop_counts().items() if "." in key}
    rnns = {p for p, m in module.named_modules() if isinstance(m, nn.RNNBase)}
    excluded = tuple(sorted(p for p in rnns & set(costs)
                            if seen and costs[p].matmul_flops and not seen.get(p)))
    return FlopCheck(
        counted_matmul=sum(c.matmul_flops for p, c in costs.items() if p not in excluded),
        reference=int(counter.get_total_flops()),
        counted_total=sum(c.flops for c in costs.values()),
        excluded=excluded,
        excluded_flops=sum(costs[p].matmul_flops for p in excluded),
        uncounted=tuple(sorted({c.kind for c in costs.values() if not c.counted})),
    )
