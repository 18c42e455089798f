"""Per-layer INT8 plans for ONNX models: which layers there are, and how to apply a plan.

A *layer* is a node that holds learned weights: ``MatMul``/``Gemm`` (linear), ``Conv``,
``ConvTranspose``, ``GRU``, ``LSTM``. A *plan* gives each layer a precision tier:

* ``int8``: weights and activations in INT8. Linear and convolution layers get static QDQ
  from ONNX Runtime's ``quantize_static`` with calibrated activation ranges; GRUs are lowered
  by :mod:`compiler.quantization.int8_gru`; LSTMs get ONNX Runtime's dynamic
  ``DynamicQuantizeLSTM``.
* ``weights``: INT8 weights behind ``DequantizeLinear``, fp32 arithmetic on fp32 activations
  (4x smaller, and ONNX Runtime fuses ``DequantizeLinear -> MatMul`` into an 8-bit
  ``MatMulNBits``); for linear layers and GRUs.
* ``fp32``: untouched.

Layers whose weights are computed in the graph rather than stored (the DFT bases of an
in-graph STFT/iSTFT) are the spectral front/back end and always stay fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from secompile.compiler.lowering.onnx_export import consumers, quiet_ort_tools
from secompile.compiler.quantization.int8_gru import (
    drop_unused_initializers,
    gru_lowering_refusal,
    lower_gru_int8,
    quantize_per_channel,
    store_gru_weights_int8,
)
from secompile.targets.cpu_features import Int8Layout

TIERS = ("int8", "weights", "fp32")
LAYER_OPS = {"MatMul": "linear", "Gemm": "linear", "Conv": "conv",
             "ConvTranspose": "conv-transpose", "GRU": "gru", "LSTM": "lstm"}
_TIERS_OF = {"linear": ("int8", "weights", "fp32"), "conv": ("int8", "fp32"),
             "conv-transpose": ("int8", "fp32"), "gru": ("int8", "weights", "fp32"),
             "lstm": ("int8", "fp32")}


@dataclass
class Layer:
    """One weight-holding node: its name, kind, weight count, and the tiers it can take."""

    name: str
    kind: str
    params: int
    role: str = "inner"  # "input", "output" (first/last learned layer) or "inner"
    tiers: tuple[str, ...] = ("fp32",)
    notes: list[str] = field(default_factory=list)
    # ORT's per-channel scales for a grouped ConvTranspose follow the weight's axis 1 (out
    # channels per group), not the layer's output channels, and its bias quantizer then fails
    # on the shape mismatch: such a layer's weight (named here) gets a per-tensor scale.
    per_tensor_weight: str | None = None

    def demoted(self, tier: str) -> str:
        """The next tier down from ``tier`` this layer can take (``fp32`` at the bottom)."""
        lower = [t for t in self.tiers if TIERS.index(t) > TIERS.index(tier)]
        return lower[0] if lower else "fp32"


def _weight_names(node: onnx.NodeProto) -> list[str]:
    if node.op_type in ("GRU", "LSTM"):
        return [node.input[1], node.input[2]]
    return [node.input[1]] if len(node.input) > 1 else []


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (plans refer to layers by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


_METADATA_OPS = {"Shape", "Size"}  # their outputs carry sizes, not signal


def signal_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose outputs depend on the values of the graph inputs (sizes read
    through ``Shape``/``Size`` do not count)."""
    readers = consumers(model)
    reached: set[str] = set()
    stored = {t.name for t in model.graph.initializer}  # old exporters list weights as inputs
    frontier = [i.name for i in model.graph.input if i.name not in stored]
    while frontier:
        for node in readers.get(frontier.pop(), []):
            if node.name in reached or node.op_type in _METADATA_OPS:
                continue
            reached.add(node.name)
            frontier.extend(node.output)
    return reached


def find_layers(model: onnx.ModelProto, gru_min_weights: int) -> tuple[list[Layer], list[str]]:
    """The learned layers on the signal path in graph order, and notes on weight-holding nodes
    kept fp32 regardless (spectral front/back end, layers that see no signal, such as an
    overlap-add envelope computed from the input's length). Roles mark the first and last
    learned layer. Call :func:`ensure_node_names` first."""
    inits = {t.name: t for t in model.graph.initializer}
    on_signal = signal_nodes(model)
    layers: list[Layer] = []
    fixed: list[str] = []
    for node in model.graph.node:
        kind = LAYER_OPS.get(node.op_type)
        if kind is None:
            continue
        if node.name not in on_signal:
            fixed.append(f"{node.name} ({node.op_type}): not on the signal path (its input "
                         "depends only on sizes), kept fp32")
            continue
        weights = _weight_names(node)
        if not weights or not all(w in inits for w in weights):
            if kind in ("conv", "conv-transpose"):
                fixed.append(f"{node.name} ({node.op_type}): spectral front/back end (DFT basis "
                             "computed in the graph), kept fp32")
            continue
        params = int(sum(np.prod(inits[w].dims) for w in weights))
        layer = Layer(node.name, kind, params, tiers=_TIERS_OF[kind])
        if kind == "conv-transpose" and any(a.name == "group" and a.i > 1
                                            for a in node.attribute):
            layer.per_tensor_weight = weights[0]
        if kind == "gru":
            layer.notes.append("ONNX Runtime cannot quantize GRU: secompile lowers it itself "
                               "(INT8 GEMM + Scan) or stores its weights in INT8")
            refusal = gru_lowering_refusal(node, inits)
            recurrent = int(np.prod(inits[node.input[2]].dims))
            if refusal:
                layer.tiers = ("weights", "fp32")
                layer.notes.append(f"not lowered to INT8 arithmetic: {refusal}")
            elif recurrent < gru_min_weights:
                layer.tiers = ("weights", "fp32")
                layer.notes.append(
                    f"recurrent matrix of {recurrent} weights < gru_min_weights="
                    f"{gru_min_weights}: the INT8 Scan's per-step overhead outweighs its gain")
        layers.append(layer)
    if layers:
        layers[0].role = "input"
        layers[-1].role = "output" if len(layers) > 1 else "input"
    return layers, fixed


def _weight_only_linear(model: onnx.ModelProto, name: str, reduce_range: bool) -> None:
    """Store a MatMul/Gemm weight as INT8 per output column behind ``DequantizeLinear``."""
    graph = model.graph
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.name == name)
    inits = {t.name: t for t in graph.initializer}
    weight = numpy_helper.to_array(inits[node.input[1]])
    trans_b = node.op_type == "Gemm" and any(
        a.name == "transB" and a.i == 1 for a in node.attribute)
    axis = 0 if trans_b else weight.ndim - 1  # the output-feature axis
    q, scale = quantize_per_channel(weight, axis, reduce_range)
    prefix = f"{name}/w8"
    graph.initializer.extend([
        numpy_helper.from_array(q, f"{prefix}/q"),
        numpy_helper.from_array(scale, f"{prefix}/scale"),
        numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{prefix}/zp")])
    graph.node.insert(index, helper.make_node(
        "DequantizeLinear", [f"{prefix}/q", f"{prefix}/scale", f"{prefix}/zp"],
        [f"{prefix}/fp32"], axis=axis, name=f"{prefix}/dequantize"))
    old = node.input[1]
    node.input[1] = f"{prefix}/fp32"
    drop_unused_initializers(graph, {old})


def _layout_types(layout: Int8Layout) -> tuple[object, object]:
    from onnxruntime.quantization import QuantType

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    return types[layout.activation_type], types[layout.weight_type]


@dataclass(frozen=True)
class StaticSettings:
    """What ``quantize_static`` needs besides the plan: calibration and format choices."""

    reader: object  # an onnxruntime CalibrationDataReader
    method: str  # "minmax" | "entropy" | "percentile"
    per_channel: bool
    symmetric_activations: bool
    layout: Int8Layout
    cache_path: Path  # calibration ranges are computed once and reused for every plan


def _quantize_static(source: Path, target: Path, layers: Sequence[Layer],
                     settings: StaticSettings) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activation_type, weight_type = _layout_types(settings.layout)
    extra: dict[str, object] = {"ActivationSymmetric": settings.symmetric_activations,
                                "WeightSymmetric": True}
    if settings.per_channel:
        overrides = {layer.per_tensor_weight: [{"symmetric": True}]  # no "axis": per-tensor
                     for layer in layers if layer.per_tensor_weight}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
    settings.reader.rewind()
    with quiet_ort_tools():
        quantize_static(
            str(source), str(target), settings.reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=sorted({"MatMul", "Gemm", "Conv", "ConvTranspose"}),
            nodes_to_quantize=[layer.name for layer in layers],
            per_channel=settings.per_channel, reduce_range=settings.layout.reduce_range,
            activation_type=activation_type, weight_type=weight_type,
            calibrate_method=methods[settings.method],
            calibration_cache_path=str(settings.cache_path), extra_options=extra)


def _quantize_lstm(source: Path, target: Path, nodes: Sequence[str], layout: Int8Layout) -> None:
    from onnxruntime.quantization import quantize_dynamic

    _, weight_type = _layout_types(layout)
    with quiet_ort_tools():
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["LSTM"],
                         nodes_to_quantize=list(nodes), weight_type=weight_type,
                         reduce_range=layout.reduce_range)


def apply_plan(source: Path, target: Path, plan: dict[str, str], layers: Sequence[Layer],
               settings: StaticSettings, scratch: Path) -> None:
    """Write ``source`` with ``plan`` applied (layer name -> tier) to ``target``."""
    at = {tier: [layer for layer in layers if plan[layer.name] == tier] for tier in TIERS}
    static = [layer for layer in at["int8"] if layer.kind in ("linear", "conv", "conv-transpose")]
    lstm = [layer.name for layer in at["int8"] if layer.kind == "lstm"]
    current = source
    if static:
        _quantize_static(current, scratch / "static.onnx", static, settings)
        current = scratch / "static.onnx"
    if lstm:
        _quantize_lstm(current, scratch / "lstm.onnx", lstm, settings.layout)
        current = scratch / "lstm.onnx"
    model = onnx.load(str(current))
    reduce = settings.layout.reduce_range
    for layer in at["int8"]:
        if layer.kind == "gru":
            lower_gru_int8(model, layer.name, reduce)
    for layer in at["weights"]:
        if layer.kind == "gru":
            store_gru_weights_int8(model, layer.name, reduce)
        else:
            _weight_only_linear(model, layer.name, reduce)
    onnx.save(model, str(target))
