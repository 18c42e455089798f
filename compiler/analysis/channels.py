"""Which channels of a torch model can be removed together, and removing them for real.

Structured pruning removes whole channels: output channels of a convolution, output features
of a linear layer, hidden units of a GRU/LSTM layer. A channel produced by one layer is read by
others (the next convolution's input columns, a BatchNorm's statistics, the other operand of a
residual add, a slice of a concatenation), and all of them must lose the same channel or the
model no longer runs. This module finds those sets — *channel groups* — from the ATen graph that
``torch.export`` records for one real call (module attribute order proves nothing about how a
model is wired), then rewrites the modules so their tensors really shrink.

The analysis labels every tensor axis that indexes a group's channels and propagates labels
through the graph with one rule per op kind:

* a prunable layer (``nn.Conv*``, ``nn.ConvTranspose*``, ``nn.Linear``, ``nn.GRU``, ``nn.LSTM``)
  called once *consumes* the group on its input's channel axis and *produces* a new group on its
  output's; a depthwise convolution passes its group through; a grouped one requires removals
  to be spread evenly over its groups (``ChannelGroup.slices``);
* BatchNorm, LayerNorm over the channel axis and per-channel PReLU consume the group (their
  parameters shrink with it) and pass it through;
* elementwise ops pass labels through; a binary op joins the groups of its two operands
  (a residual add ties the two producers together) and *blocks* a group meeting an unlabeled
  operand of the same length (a fixed mask, a spectrum: those channels cannot go);
* ``cat`` along a labeled axis concatenates segments, so a consumer of the concatenation loses
  each group's channels at that group's offset; ``permute``, ``transpose``, ``unsqueeze`` and
  views that keep the channel axis whole move labels; anything else touching a labeled axis
  (slicing it, reshaping it into another axis, reducing over it, an op this module does not
  know, the model output) blocks the groups involved.

A multi-layer RNN's inner layers form groups of their own that only the RNN reads; since
``nn.GRU`` has one ``hidden_size`` for all its layers, those groups share a *tie*: they must
lose the same number of units, and none may lose any when one is blocked. An initial state
handed in from outside the RNN, or a final state that is used, blocks all its layers.

Blocking is conservative by design: an op the analysis does not know makes fewer channels
prunable. The passes still run every rewritten model on two shapes before keeping it
(:func:`check_runs`), and a failure there leaves the model unpruned with the reason.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from secompile.compiler.analysis.graph import module_path, op_name

# A tensor axis label: the channel segments along that axis, in order; each segment is a group
# id, or None for a fixed block of ``size`` channels that belongs to no prunable group.
Segment = tuple[int | None, int]
AxisLabel = tuple[Segment, ...] | None

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RNNS = (nn.GRU, nn.LSTM)
_GATES = {nn.GRU: 3, nn.LSTM: 4}

_UNARY = {
    "relu", "relu_", "sigmoid", "tanh", "gelu", "silu", "elu", "leaky_relu", "hardtanh",
    "hardsigmoid", "hardswish", "softplus", "clamp", "clip", "abs", "neg", "exp", "log", "log10",
    "log2", "log1p", "sqrt", "rsqrt", "square", "reciprocal", "sign", "dropout", "contiguous",
    "clone", "alias", "detach", "_to_copy", "to", "type_as", "zeros_like", "ones_like",
    "empty_like", "full_like", "rand_like", "randn_like", "sin", "cos", "erf", "floor", "ceil",
    "round", "_assert_tensor_metadata", "lift_fresh_copy", "feature_dropout", "relu6",
}
_BINARY = {"add", "sub", "mul", "div", "maximum", "minimum", "pow", "rsub", "where", "atan2",
           "copysign", "fmod", "remainder", "eq", "ne", "lt", "le", "gt", "ge", "true_divide",
           "add_", "mul_"}
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_copy"}
_SLICES = {"select", "slice", "narrow", "index_select", "split", "split_with_sizes", "chunk",
           "unbind", "unsafe_split", "tensor_split", "slice_copy", "select_copy", "index"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "logsumexp", "prod"}
_PASSIVE = {"sym_size", "sym_numel", "sym_stride", "_assert_async", "scalar_tensor",
            "_assert_scalar", "sym_constrain_range_for_size"}


@dataclass
class Site:
    """One place a group's channels live: ``module`` at path ``path`` in role ``role``.

    Roles: ``out`` (output channels/features of a conv, transposed conv or linear layer),
    ``in`` (their input channels at ``offset``), ``rnn_out`` (hidden units of an RNN's last
    layer), ``rnn_in`` (its input features at ``offset``), ``rnn_layer`` / ``rnn_layer_in``
    (hidden units of inner layer ``layer`` and the next layer's input columns), ``channel``
    (a per-channel parameter: BatchNorm, LayerNorm, PReLU, depthwise conv).
    """

    path: str
    role: str
    offset: int = 0
    layer: int = 0


@dataclass
class ChannelGroup:
    """Channels that must be removed together, where they live, and whether they may go.

    ``slices``: removals must take the same number of channels from each of this many equal
    contiguous blocks (grouped convolutions). ``tie``: groups with the same tie must lose the
    same number of channels (the layers of one ``nn.GRU``), so one blocked member blocks them
    all. ``blocked``: why these channels cannot be removed, or None.
    """

    id: int
    size: int
    producers: list[Site] = field(default_factory=list)
    consumers: list[Site] = field(default_factory=list)
    slices: int = 1
    tie: str | None = None
    blocked: str | None = None

    @property
    def prunable(self) -> bool:
        """Whether channels of this group may be removed."""
        return self.blocked is None and bool(self.producers) and self.size > self.slices

    def describe(self) -> str:
        """``fc.0 out -> gru in`` style summary for reports."""
        producers = ", ".join(f"{s.path}:{s.role}" for s in self.producers) or "-"
        consumers = ", ".join(f"{s.path}:{s.role}" for s in self.consumers) or "-"
        return f"{producers} -> {consumers} ({self.size})"


class _Groups:
    """Union-find over channel groups."""

    def __init__(self) -> None:
        self.groups: dict[int, ChannelGroup] = {}
        self.parent: dict[int, int] = {}
        self.tie_links: list[tuple[str, str]] = []  # ties that a union made one

    def new(self, size: int, producer: Site | None = None, tie: str | None = None) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = ChannelGroup(gid, size, [producer] if producer else [], tie=tie)
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def get(self, gid: int) -> ChannelGroup:
        return self.groups[self.find(gid)]

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        self.parent[rb] = ra
        ga.producers += gb.producers
        ga.consumers += gb.consumers
        ga.slices = math.lcm(ga.slices, gb.slices)
        if ga.tie and gb.tie and ga.tie != gb.tie:
            self.tie_links.append((ga.tie, gb.tie))
        ga.tie = ga.tie or gb.tie
        ga.blocked = ga.blocked or gb.blocked
        if ga.size != gb.size:
            ga.blocked = ga.blocked or f"joined channel groups of sizes {ga.size} and {gb.size}"
        del self.groups[rb]

    def block(self, label: AxisLabel, why: str) -> None:
        for gid, _ in label or ():
            if gid is not None:
                group = self.get(gid)
                group.blocked = group.blocked or why

    def consume(self, label: AxisLabel, site: Site, slices: int = 1) -> None:
        offset = 0
        for gid, size in label or ():
            if gid is not None:
                group = self.get(gid)
                group.consumers.append(Site(site.path, site.role, offset, site.layer))
                group.slices = math.lcm(group.slices, slices)
            offset += size

    def resolved(self, label: AxisLabel) -> AxisLabel:
        if label is None:
            return None
        return tuple((None if g is None else self.find(g), s) for g, s in label)


def _shape(node: object) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(value, torch.Tensor):
        try:
            return tuple(int(d) for d in value.shape)
        except TypeError:  # symbolic sizes
            return None
    return None


class _Analysis:
    """One walk over the graph, labelling axes and building groups (see the module doc)."""

    def __init__(self, root: nn.Module, graph: torch.fx.Graph) -> None:
        self.root = root
        self.graph = graph
        self.groups = _Groups()
        self.labels: dict[torch.fx.Node, object] = {}
        self.rnn_groups: dict[str, list[int]] = defaultdict(list)
        # calls per module object: one module registered under two paths is still one module
        self.calls: dict[int, int] = defaultdict(int)
        for node in graph.nodes:
            if node.op == "call_function" and (layer := self._layer(node)) is not None:
                self.calls[id(layer)] += 1

    # -- helpers ------------------------------------------------------------------------

    def _layer(self, node: torch.fx.Node) -> nn.Module | None:
        """The prunable or per-channel module a layer call node belongs to, if any."""
        path = module_path(node)
        if path is None or path == "":
            return None
        try:
            module = self.root.get_submodule(path)
        except AttributeError:
            return None
        name = op_name(node)
        kinds = {
            "linear": (nn.Linear,), "gru": (nn.GRU,), "lstm": (nn.LSTM,),
            "batch_norm": _NORMS, "_native_batch_norm_legit_no_training": _NORMS,
            "layer_norm": (nn.LayerNorm,), "prelu": (nn.PReLU,), "_prelu_kernel": (nn.PReLU,),
        }
        if name.startswith("conv") or name == "convolution":
            wanted = _CONVS + _TRANSPOSED
        else:
            wanted = kinds.get(name)
        return module if wanted and isinstance(module, wanted) else None

    def label(self, arg: object) -> list[AxisLabel] | None:
        """Axis labels of a tensor argument (None for non-tensors)."""
        if not isinstance(arg, torch.fx.Node):
            return None
        value = self.labels.get(arg)
        if isinstance(value, list) and (not value or not isinstance(value[0], list)):
            return [self.groups.resolved(a) for a in value]
        shape = _shape(arg)
        return [None] * len(shape) if shape is not None else None

    def block_all(self, args: Iterable[object], why: str) -> None:
        for arg in args:
            if isinstance(arg, (list, tuple)):
                self.block_all(arg, why)
                continue
            labels = self.label(arg)
            if isinstance(arg, torch.fx.Node) and isinstance(self.labels.get(arg), list) \
                    and self.labels[arg] and isinstance(self.labels[arg][0], list):
                for item in self.labels[arg]:  # a tuple of tensors (split, rnn outputs)
                    for axis in item:
                        self.groups.block(axis, why)
                continue
            for axis in labels or ():
                self.groups.block(axis, why)

    def merge(self, a: AxisLabel, b: AxisLabel, why: str) -> AxisLabel:
        """The label of an axis two operands share (a residual add, a cat's other axes)."""
        if a is None or b is None:
            if a is not None or b is not None:
                self.groups.block(a or b, why)
            return None
        if [s for _, s in a] != [s for _, s in b]:
            self.groups.block(a, why)
            self.groups.block(b, why)
            return None
        out = []
        for (ga, size), (gb, _) in zip(a, b, strict=True):
            if ga is None or gb is None:
                self.groups.block(((ga, size), (gb, size)), why)
                out.append((None, size))
            else:
                self.groups.union(ga, gb)
                out.append((self.groups.find(ga), size))
        return tuple(out)

    # -- rules --------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.graph.nodes:
            if node.op == "output":
                self.block_all(node.args, "reaches the model output")
            elif node.op == "call_function":
                self.labels[node] = self.visit(node)

    def visit(self, node: torch.fx.Node) -> object:
        name = op_name(node)
        layer = self._layer(node)
        shape = _shape(node)
        if layer is not None and self.calls[id(layer)] > 1:
            self.block_all(node.args, f"module '{module_path(node)}' is called more than once")
            return self._fresh(node)
        if isinstance(layer, _CONVS + _TRANSPOSED):
            return self.conv(node, layer)
        if isinstance(layer, nn.Linear):
            return self.linear(node, layer)
        if isinstance(layer, _RNNS):
            return self.rnn(node, layer)
        if isinstance(layer, _NORMS + (nn.LayerNorm, nn.PReLU)):
            return self.per_channel(node, layer)
        if name == "getitem":
            source, index = node.args
            items = self.labels.get(source)
            if isinstance(items, list) and items and isinstance(items[0], list):
                return items[index]
            return self._fresh(node)
        if name in _PASSIVE:
            return None
        tensor_args = [a for a in node.args if isinstance(a, torch.fx.Node)
                       and _shape(a) is not None]
        if shape is None:
            self.block_all(node.args, f"op '{name}' with a non-tensor or symbolic result")
            return self._fresh(node)
        if name in _UNARY or name in _BINARY:
            return self.elementwise(node, tensor_args, shape)
        if name in ("transpose", "t", "permute", "movedim", "swapaxes", "numpy_T"):
            return self.permute(node)
        if name in ("unsqueeze", "squeeze"):
            return self.squeeze(node, shape)
        if name in _VIEWS:
            return self.view(node, shape)
        if name == "cat":
            return self.cat(node, shape)
        if name in ("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
                    "replication_pad1d", "replication_pad2d"):
            return self.pad(node)
        if name in _SLICES:
            return self.slicing(node)
        if name in _REDUCTIONS or name in ("softmax", "_softmax", "log_softmax",
                                          "_log_softmax"):
            return self.reduce(node, shape)
        if name in ("expand", "expand_as", "repeat"):
            src = self.label(node.args[0])
            if src is not None and len(src) == len(shape) and _shape(node.args[0]) == shape:
                return src
        self.block_all(node.args, f"op '{name}' touches the channel axis")
        return self._fresh(node)

    def _fresh(self, node: torch.fx.Node) -> object:
        shape = _shape(node)
        return [None] * len(shape) if shape is not None else None

    def conv(self, node: torch.fx.Node, conv: nn.Module) -> list[AxisLabel]:
        path = module_path(node)
        src = self.label(node.args[0])
        shape = _shape(node)
        if src is None or shape is None or len(src) != len(shape):
            self.block_all(node.args, f"convolution '{path}' on an unexpected input")
            return self._fresh(node)
        out: list[AxisLabel] = [None] * len(shape)
        for axis in range(len(shape)):
            if axis != 1:
                out[axis] = src[axis]
            if axis >= 2:
                self.groups.block(src[axis], f"'{path}' convolves over that axis")
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if depthwise:
            self.groups.consume(src[1], Site(path, "channel"))
            out[1] = src[1]
            return out
        if conv.groups > 1 and src[1] is not None and len(src[1]) > 1:
            self.groups.block(src[1], f"grouped convolution '{path}' reads a concatenation")
        else:
            self.groups.consume(src[1], Site(path, "in"), slices=conv.groups)
        gid = self.groups.new(conv.out_channels, Site(path, "out"))
        self.groups.get(gid).slices = conv.groups
        out[1] = ((gid, conv.out_channels),)
        return out

    def linear(self, node: torch.fx.Node, linear: nn.Linear) -> list[AxisLabel]:
        path = module_path(node)
        src = self.label(node.args[0])
        if src is None:
            return self._fresh(node)
        self.groups.consume(src[-1], Site(path, "in"))
        gid = self.groups.new(linear.out_features, Site(path, "out"))
        return [*src[:-1], ((gid, linear.out_features),)]

    def rnn(self, node: torch.fx.Node, rnn: nn.RNNBase) -> list[list[AxisLabel]]:
        path = module_path(node)
        src = self.label(node.args[0])
        n_states = 2 if isinstance(rnn, nn.LSTM) else 1
        if getattr(rnn, "proj_size", 0) or src is None or len(src) != 3:
            self.block_all(node.args, f"RNN '{path}' has a projection or unbatched input")
            return [self._fresh_rnn_output(node)] + [[None, None, None]] * n_states
        hx = node.args[1]
        hx_nodes = [h for h in (hx if isinstance(hx, (list, tuple)) else [hx])
                    if isinstance(h, torch.fx.Node)]
        # a zero state the module makes itself is fine; a state handed in is sized by someone
        # else (a caller, a streaming loop) and would no longer fit
        outside = [h for h in hx_nodes if module_path(h) != path]
        final_used = any(op_name(u) == "getitem" and u.args[1] >= 1 and u.users
                         for u in node.users)
        why = (f"'{path}' gets its initial state from outside" if outside else
               f"'{path}' final state is used (it holds every layer's units)" if final_used
               else None)
        if why:
            self.block_all(hx_nodes, why)
        if src is not None:
            self.groups.consume(src[-1], Site(path, "rnn_in"))
        dirs = 2 if rnn.bidirectional else 1
        tie = path if rnn.num_layers > 1 else None
        for layer in range(rnn.num_layers - 1):  # inner layers: groups only the RNN reads
            gid = self.groups.new(rnn.hidden_size, Site(path, "rnn_layer", layer=layer), tie)
            self.rnn_groups[path].append(gid)
            for direction in range(dirs):
                self.groups.get(gid).consumers.append(
                    Site(path, "rnn_layer_in", direction * rnn.hidden_size, layer + 1))
        gid = self.groups.new(rnn.hidden_size, Site(path, "rnn_out", layer=rnn.num_layers - 1),
                              tie)
        self.rnn_groups[path].append(gid)
        output = list(src)
        output[-1] = tuple((gid, rnn.hidden_size) for _ in range(dirs))
        if why:
            for layer_gid in self.rnn_groups[path]:
                self.groups.get(layer_gid).blocked = why
        return [output] + [[None, None, None] for _ in range(n_states)]

    def _fresh_rnn_output(self, node: torch.fx.Node) -> list[AxisLabel]:
        value = node.meta.get("val")
        first = value[0] if isinstance(value, (list, tuple)) and value else None
        return [None] * first.dim() if isinstance(first, torch.Tensor) else [None] * 3

    def per_channel(self, node: torch.fx.Node, module: nn.Module) -> list[AxisLabel]:
        path = module_path(node)
        src = self.label(node.args[0])
        if src is None:
            return self._fresh(node)
        if isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1 or module.weight is None:
                for axis in src[-len(module.normalized_shape):]:
                    self.groups.block(axis, f"LayerNorm '{path}' normalises several axes or "
                                      "has no per-channel parameters")
                return src
            self.groups.consume(src[-1], Site(path, "channel"))
            return src
        if isinstance(module, nn.PReLU) and module.num_parameters == 1:
            return src
        if getattr(module, "weight", None) is None and getattr(module, "running_mean", None) is None:
            self.groups.block(src[1], f"norm '{path}' keeps no per-channel state")
            return src
        self.groups.consume(src[1], Site(path, "channel"))
        return src

    def elementwise(self, node: torch.fx.Node, args: list[torch.fx.Node],
                    shape: tuple[int, ...]) -> list[AxisLabel]:
        name = op_name(node)
        out: list[AxisLabel] = [None] * len(shape)
        why = f"'{name}' with a tensor that has no such channels"
        per_axis: list[list[AxisLabel]] = [[] for _ in shape]
        for arg in args:
            labels, arg_shape = self.label(arg), _shape(arg)
            for back in range(1, len(arg_shape) + 1):
                if back > len(shape):
                    self.groups.block(labels[-back], why)
                    continue
                size = arg_shape[-back]
                if size == shape[-back]:
                    per_axis[-back].append(labels[-back])
                elif labels[-back] is not None:  # broadcast from size 1: cannot be a channel
                    self.groups.block(labels[-back], why)
        for axis, candidates in enumerate(per_axis):
            if not candidates:
                continue
            if len(candidates) == 1 or shape[axis] == 1:
                out[axis] = candidates[0] if shape[axis] != 1 else None
                continue
            merged = candidates[0]
            for other in candidates[1:]:
                merged = self.merge(merged, other, why)
            out[axis] = merged
        return out

    def permute(self, node: torch.fx.Node) -> list[AxisLabel]:
        src = self.label(node.args[0])
        rank = len(src)
        name = op_name(node)
        if name == "permute":
            order = [d % rank for d in node.args[1]]
        elif name in ("transpose", "swapaxes"):
            a, b = (d % rank for d in node.args[1:3])
            order = list(range(rank))
            order[a], order[b] = order[b], order[a]
        elif name == "t":
            order = list(range(rank))[::-1]
        else:  # movedim
            source, dest = node.args[1] % rank, node.args[2] % rank
            order = [d for d in range(rank) if d != source]
            order.insert(dest, source)
        return [src[d] for d in order]

    def squeeze(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[AxisLabel]:
        src = self.label(node.args[0])
        in_shape = _shape(node.args[0])
        if op_name(node) == "unsqueeze":
            dim = node.args[1] % (len(in_shape) + 1)
            return [*src[:dim], None, *src[dim:]]
        dims = node.args[1] if len(node.args) > 1 else None
        if dims is None:
            dims = [d for d, size in enumerate(in_shape) if size == 1]
        dims = {d % len(in_shape) for d in ([dims] if isinstance(dims, int) else dims)
                if in_shape[d % len(in_shape)] == 1}
        return [label for d, label in enumerate(src) if d not in dims]

    def view(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[AxisLabel]:
        src = self.label(node.args[0])
        in_shape = _shape(node.args[0])
        out: list[AxisLabel] = [None] * len(shape)
        for axis, label in enumerate(src):
            if label is None:
                continue
            before = math.prod(in_shape[:axis])
            target = next((j for j in range(len(shape)) if shape[j] == in_shape[axis]
                           and math.prod(shape[:j]) == before), None)
            if target is None:
                self.groups.block(label, "a reshape merges or splits the channel axis")
            else:
                out[target] = label
        return out

    def cat(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[AxisLabel]:
        tensors = [t for t in node.args[0] if isinstance(t, torch.fx.Node)]
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(shape)
        labels = [self.label(t) for t in tensors]
        out: list[AxisLabel] = [None] * len(shape)
        for axis in range(len(shape)):
            if axis == dim:
                segments: list[Segment] = []
                for t, lab in zip(tensors, labels, strict=True):
                    segments += list(lab[axis] or ((None, _shape(t)[axis]),))
                out[axis] = tuple(segments) if any(g is not None for g, _ in segments) else None
                continue
            merged = labels[0][axis]
            for lab in labels[1:]:
                merged = self.merge(merged, lab[axis], "concatenated with unprunable channels")
            out[axis] = merged
        return out

    def pad(self, node: torch.fx.Node) -> list[AxisLabel]:
        src = self.label(node.args[0])
        pads = list(node.args[1])
        for i in range(len(pads) // 2):
            if pads[2 * i] or pads[2 * i + 1]:
                self.groups.block(src[-1 - i], "padding along the channel axis")
        return src

    def slicing(self, node: torch.fx.Node) -> object:
        name = op_name(node)
        src = self.label(node.args[0])
        rank = len(src)
        dim_arg = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if name in ("select", "index_select", "slice", "narrow", "slice_copy", "select_copy"):
            dim = node.args[1] if len(node.args) > 1 else 0
        elif name == "index":
            for axis in src:
                self.groups.block(axis, "advanced indexing")
            return self._fresh(node)
        elif name == "unbind":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        else:
            dim = dim_arg
        dim = dim % rank
        self.groups.block(src[dim], f"'{name}' along the channel axis")
        kept = [None if d == dim else src[d] for d in range(rank)]
        if name in ("select", "select_copy"):
            kept = kept[:dim] + kept[dim + 1:]
        if name in ("split", "split_with_sizes", "chunk", "unbind", "unsafe_split",
                    "tensor_split"):
            value = node.meta.get("val")
            count = len(value) if isinstance(value, (list, tuple)) else 1
            item = kept[:dim] + kept[dim + 1:] if name == "unbind" else kept
            return [list(item) for _ in range(count)]
        return kept

    def reduce(self, node: torch.fx.Node, shape: tuple[int, ...]) -> list[AxisLabel]:
        src = self.label(node.args[0])
        in_shape = _shape(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else None
        if isinstance(dims, int):
            dims = [dims]
        if dims is None or not isinstance(dims, (list, tuple)):
            dims = list(range(len(in_shape)))
        dims = {d % len(in_shape) for d in dims}
        for d in dims:
            self.groups.block(src[d], f"'{op_name(node)}' reduces over the channel axis")
        if len(shape) == len(in_shape):
            return [None if d in dims else src[d] for d in range(len(src))]
        return [src[d] for d in range(len(src)) if d not in dims]


def channel_groups(module: nn.Module, graph: torch.fx.Graph) -> list[ChannelGroup]:
    """Every channel group of ``module`` as wired in ``graph`` (its ``torch.export`` graph),
    prunable or blocked, in the order their producers run."""
    analysis = _Analysis(module, graph)
    analysis.run()
    groups = sorted(analysis.groups.groups.values(), key=operator.attrgetter("id"))
    groups = [g for g in groups if g.producers]
    _settle_ties(groups, analysis.groups.tie_links)
    return groups


def _settle_ties(groups: list[ChannelGroup], links: list[tuple[str, str]]) -> None:
    """One tie per set of layers that must keep one size (ties a union joined are one), and a
    tie with a blocked member blocks them all: ``nn.GRU`` cannot give its layers two sizes."""
    parent: dict[str, str] = {}

    def find(tie: str) -> str:
        while parent.setdefault(tie, tie) != tie:
            tie = parent[tie]
        return tie

    for a, b in links:
        parent[find(a)] = find(b)
    members: dict[str, list[ChannelGroup]] = defaultdict(list)
    for group in groups:
        if group.tie is not None:
            group.tie = find(group.tie)
            members[group.tie].append(group)
    for tie, tied in members.items():
        blocked = next((g.blocked for g in tied if g.blocked), None)
        if blocked:
            for group in tied:
                group.blocked = group.blocked or f"tied to a layer of '{tie}' that is blocked " \
                                                 f"({blocked})"


# --------------------------------------------------------------------------------------------
# removing channels


def check_runs(original: nn.Module, pruned: nn.Module, example: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``pruned`` maps ``example`` and a longer batch of three to
    outputs of the shapes ``original`` gives."""
    longer = torch.cat([example[:1], example[:1, : example.shape[1] // 2]], dim=1).repeat(3, 1)
    with torch.inference_mode():
        for x in (example, longer):
            try:
                got = tuple(pruned(x).shape)
            except Exception as exc:  # noqa: BLE001  (reported as why the rewrite failed)
                raise ValueError(f"the pruned model fails on {list(x.shape)}: "
                                 f"{type(exc).__name__}: {exc}") from None
            expected = tuple(original(x).shape)
            if got != expected:
                raise ValueError(f"the pruned model maps {list(x.shape)} to {list(got)}, the "
                                 f"original to {list(expected)}")


def _keep(size: int, removed: Iterable[int]) -> torch.Tensor:
    gone = {int(i) for i in removed}
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if isinstance(getattr(module, name), nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(),
                                           requires_grad=getattr(module, name).requires_grad))
    else:
        setattr(module, name, value.detach().clone())


def _conv_out(conv: nn.Module, keep: torch.Tensor) -> None:
    w = conv.weight.data
    if conv.transposed:  # [in, out/groups, *k]: output o is column o % (out/groups)
        per = w.shape[1]
        groups = conv.groups
        cols = [keep[(keep >= g * per) & (keep < (g + 1) * per)] - g * per for g in range(groups)]
        rows = w.shape[0] // groups
        parts = [w[g * rows:(g + 1) * rows][:, cols[g]] for g in range(groups)]
        _set(conv, "weight", torch.cat(parts, 0))
    else:
        _set(conv, "weight", w[keep])
    if conv.bias is not None:
        _set(conv, "bias", conv.bias.data[keep])
    conv.out_channels = len(keep)


def _conv_in(conv: nn.Module, keep: torch.Tensor) -> None:
    w = conv.weight.data
    if conv.transposed:  # [in, out/groups, *k]: input channels are rows
        _set(conv, "weight", w[keep])
    else:  # [out, in/groups, *k]: input c is column c % (in/groups) of group c // (in/groups)
        per = w.shape[1]
        rows = w.shape[0] // conv.groups
        parts = []
        for g in range(conv.groups):
            cols = keep[(keep >= g * per) & (keep < (g + 1) * per)] - g * per
            parts.append(w[g * rows:(g + 1) * rows][:, cols])
        _set(conv, "weight", torch.cat(parts, 0))
    conv.in_channels = len(keep)


def _channelwise(module: nn.Module, keep: torch.Tensor) -> None:
    """Shrink a per-channel module: BatchNorm, LayerNorm, PReLU, a depthwise convolution."""
    if isinstance(module, _CONVS + _TRANSPOSED):
        _set(module, "weight", module.weight.data[keep])
        if module.bias is not None:
            _set(module, "bias", module.bias.data[keep])
        module.in_channels = module.out_channels = module.groups = len(keep)
        return
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor):
            _set(module, name, value.data[keep])
    if isinstance(module, _NORMS):
        module.num_features = len(keep)
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (len(keep),)
    elif isinstance(module, nn.PReLU):
        module.num_parameters = len(keep)


def _suffixes(rnn: nn.RNNBase) -> tuple[str, ...]:
    return ("", "_reverse") if rnn.bidirectional else ("",)


def _rnn_hidden(rnn: nn.RNNBase, layer: int, keep: torch.Tensor) -> None:
    """Keep hidden units ``keep`` of layer ``layer``: gate rows and recurrent columns."""
    hidden = getattr(rnn, f"weight_hh_l{layer}").shape[1]
    gates = _GATES.get(type(rnn), 1)
    rows = torch.cat([keep + g * hidden for g in range(gates)])
    for sfx in _suffixes(rnn):
        for name in (f"weight_ih_l{layer}{sfx}", f"bias_ih_l{layer}{sfx}",
                     f"bias_hh_l{layer}{sfx}"):
            if getattr(rnn, name, None) is not None:
                _set(rnn, name, getattr(rnn, name).data[rows])
        name = f"weight_hh_l{layer}{sfx}"
        _set(rnn, name, getattr(rnn, name).data[rows][:, keep])


def _rnn_input(rnn: nn.RNNBase, layer: int, keep: torch.Tensor) -> None:
    for sfx in _suffixes(rnn):
        name = f"weight_ih_l{layer}{sfx}"
        _set(rnn, name, getattr(rnn, name).data[:, keep])


def _finish_rnn(rnn: nn.RNNBase) -> None:
    rnn.hidden_size = rnn.weight_hh_l0.shape[1]
    rnn.input_size = rnn.weight_ih_l0.shape[1]
    rnn._init_flat_weights()


def _sizes(module: nn.Module, site: Site) -> int:
    if site.role in ("in", "rnn_in", "rnn_layer_in"):
        if isinstance(module, _RNNS):
            return getattr(module, f"weight_ih_l{site.layer}").shape[1]
        if isinstance(module, nn.Linear):
            return module.in_features
        return module.in_channels
    raise ValueError(site.role)


def remove_channels(
    module: nn.Module,
    groups: list[ChannelGroup],
    removal: Mapping[int, Iterable[int]],
) -> nn.Module:
    """A copy of ``module`` without the channels ``removal`` names (group id -> indices).

    Every site of each group loses the same channels; a consumer reading a concatenation loses
    them at the group's offset. Raises ``ValueError`` for a blocked group, an index out of
    range, or an uneven removal from a grouped convolution.
    """
    pruned = copy.deepcopy(module)
    by_id = {g.id: g for g in groups}
    # (path, role, layer) -> removed indices in that site's own numbering
    edits: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    for gid, indices in removal.items():
        indices = sorted({int(i) for i in indices})
        if not indices:
            continue
        group = by_id[gid]
        if not group.prunable:
            raise ValueError(f"channel group {group.describe()} is blocked: {group.blocked}")
        if indices[0] < 0 or indices[-1] >= group.size:
            raise ValueError(f"channel index out of range for group of size {group.size}")
        per = group.size // group.slices
        counts = {s: sum(1 for i in indices if i // per == s) for s in range(group.slices)}
        if len(set(counts.values())) > 1 or len(indices) >= group.size:
            raise ValueError(f"removal from {group.describe()} must be even over its "
                             f"{group.slices} slices and leave channels: {counts}")
        for site in group.producers + group.consumers:
            edits[(site.path, site.role, site.layer)].update(site.offset + i for i in indices)
    rnns = set()
    for (path, role, layer), removed in edits.items():
        target = pruned.get_submodule(path)
        if role == "out":
            _conv_out(target, _keep(target.out_channels, removed)) \
                if isinstance(target, _CONVS + _TRANSPOSED) else _linear_out(target, removed)
        elif role == "in":
            size = _sizes(target, Site(path, role))
            keep = _keep(size, removed)
            if isinstance(target, nn.Linear):
                _set(target, "weight", target.weight.data[:, keep])
                target.in_features = len(keep)
            else:
                _conv_in(target, keep)
        elif role == "channel":
            size = (target.weight.shape[0] if getattr(target, "weight", None) is not None
                    else target.running_mean.shape[0])
            _channelwise(target, _keep(size, removed))
        elif role in ("rnn_out", "rnn_layer"):
            _rnn_hidden(target, layer, _keep(getattr(target, f"weight_hh_l{layer}").shape[1],
                                             removed))
            rnns.add(path)
        elif role in ("rnn_in", "rnn_layer_in"):
            _rnn_input(target, layer, _keep(_sizes(target, Site(path, role, layer=layer)),
                                            removed))
            rnns.add(path)
    for path in rnns:
        _finish_rnn(pruned.get_submodule(path))
    return pruned


def drop_rnn_layers(rnn: nn.RNNBase, keep: int) -> None:
    """Keep the first ``keep`` layers of ``rnn`` (in place): depth scaling of a stacked RNN."""
    if not 1 <= keep <= rnn.num_layers:
        raise ValueError(f"cannot keep {keep} of {rnn.num_layers} RNN layers")
    for layer in range(keep, rnn.num_layers):
        for sfx in _suffixes(rnn):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                name = f"{kind}_l{layer}{sfx}"
                if hasattr(rnn, name):
                    delattr(rnn, name)
    names = [f"_l{layer}" for layer in range(keep)]
    rnn._flat_weights_names = [n for n in rnn._flat_weights_names
                               if any(n.endswith(x) or f"{x}_" in n for x in names)]
    rnn._all_weights = [w for w in rnn._all_weights
                        if any(w[0].endswith(x) or f"{x}_" in w[0] for x in names)]
    rnn.num_layers = keep
    rnn._init_flat_weights()


def _linear_out(linear: nn.Linear, removed: Iterable[int]) -> None:
    keep = _keep(linear.out_features, removed)
    _set(linear, "weight", linear.weight.data[keep])
    if linear.bias is not None:
        _set(linear, "bias", linear.bias.data[keep])
    linear.out_features = len(keep)


def conform_to_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``module`` whose layers take the shapes of ``state`` (a state_dict of a pruned
    or width-scaled version of it), with ``state`` loaded.

    Used to rebuild a pruned model from stored weights alone, without pickled code. Layers
    keep their type; sizes (``out_channels``, ``hidden_size``, ...) follow the weights.
    """
    shaped = copy.deepcopy(module)
    for path, sub in shaped.named_modules():
        prefix = f"{path}." if path else ""
        own = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and "." not in k[len(prefix):]}
        for name, value in own.items():
            current = getattr(sub, name, None)
            if isinstance(current, torch.Tensor) and current.shape != value.shape:
                _set(sub, name, torch.zeros_like(value))
        if not own:
            continue
        if isinstance(sub, _CONVS + _TRANSPOSED):
            w = sub.weight
            if sub.groups > 1 and sub.groups == sub.in_channels == sub.out_channels:
                sub.in_channels = sub.out_channels = sub.groups = w.shape[0]
            elif sub.transposed:
                sub.in_channels, sub.out_channels = w.shape[0], w.shape[1] * sub.groups
            else:
                sub.out_channels, sub.in_channels = w.shape[0], w.shape[1] * sub.groups
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape
        elif isinstance(sub, _NORMS):
            sub.num_features = sub.running_mean.shape[0]
        elif isinstance(sub, nn.LayerNorm) and sub.weight is not None:
            sub.normalized_shape = (sub.weight.shape[0],)
        elif isinstance(sub, nn.PReLU):
            sub.num_parameters = sub.weight.shape[0]
        elif isinstance(sub, _RNNS):
            layers = sum(1 for k in own if k.startswith("weight_ih_l") and "reverse" not in k)
            drop_rnn_layers(sub, layers)
            _finish_rnn(sub)
    shaped.load_state_dict(dict(state))
    for sub in shaped.modules():
        if isinstance(sub, _RNNS):
            sub._init_flat_weights()
    return shaped
