"""INT8 for ONNX ``GRU`` nodes, which ONNX Runtime cannot quantize.

Two rewrites, both exact in structure and approximate only by weight rounding:

* :func:`lower_gru_int8` replaces a forward GRU (``linear_before_reset=1``, PyTorch's
  formulation) by its unrolled-in-time form with INT8 matrix products:
  the input projection of every time step at once (``DynamicQuantizeMatMul``, one large GEMM),
  then a ``Scan`` over time whose body multiplies the hidden state by the INT8 recurrent
  weights (``DynamicQuantizeMatMul`` again) and applies the gates:
  ``z, r = sigmoid(x_zr + h R_zr + b)``, ``n = tanh(x_n + r * (h R_n + b_n))``,
  ``h' = n + z * (h - n)``. The recurrent matrix is a quarter of its fp32 size, so it stays in
  the core's cache across steps; the input projection runs at INT8 GEMM speed.
* :func:`store_gru_weights_int8` keeps the ``GRU`` node and stores ``W`` and ``R`` as INT8 with
  ``DequantizeLinear`` in front: the file shrinks 4x, the arithmetic stays fp32.

Weights are quantized symmetrically per output channel; ``reduce_range`` keeps 7 bits where
the CPU's INT8 kernel would saturate (see :mod:`targets.cpu_features`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def gru_lowering_refusal(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> \
        str | None:
    """Why ``node`` cannot take :func:`lower_gru_int8`, or ``None`` when it can."""
    attrs = _attrs(node)
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    inputs = list(node.input) + [""] * (6 - len(node.input))
    if direction != "forward":
        return f"direction={direction} (only forward GRUs are lowered)"
    if attrs.get("linear_before_reset", 0) != 1:
        return "linear_before_reset=0 (only the PyTorch formulation is lowered)"
    if "activations" in attrs or "clip" in attrs or attrs.get("layout", 0) != 0:
        return "custom activations, clip or batch-first layout"
    if inputs[4]:
        return "per-sequence lengths (sequence_lens) are used"
    if inputs[1] not in initializers or inputs[2] not in initializers:
        return "W or R is not a constant initializer"
    if inputs[3] and inputs[3] not in initializers:
        return "B is not a constant initializer"
    return None


def quantize_per_channel(weight: np.ndarray, axis: int, reduce_range: bool) -> \
        tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 of ``weight`` with one scale per index of ``axis``: ``(q, scale)``."""
    limit = 63 if reduce_range else 127
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    peak = np.abs(weight).max(axis=reduce_axes)
    scale = np.where(peak > 0, peak / limit, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -limit, limit).astype(np.int8)
    return q, scale


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _scan_body(prefix: str, hidden: int, r_q: np.ndarray, r_scale: np.ndarray,
               r_bias: np.ndarray) -> onnx.GraphProto:
    """One time step: state ``h [B, H]`` and projected input ``x [B, 3H]`` (gates z, r, h)."""
    p = f"{prefix}/step/"
    nodes = [
        helper.make_node("DynamicQuantizeMatMul", ["h", p + "R", p + "R_scale", "", p + "R_b"],
                         [p + "hr"], domain=MS_DOMAIN, name=p + "recurrent"),
        helper.make_node("Split", ["x", p + "split"], [p + "x_zr", p + "x_n"], axis=1,
                         name=p + "split_x"),
        helper.make_node("Split", [p + "hr", p + "split"], [p + "hr_zr", p + "hr_n"], axis=1,
                         name=p + "split_hr"),
        helper.make_node("Add", [p + "x_zr", p + "hr_zr"], [p + "pre_zr"], name=p + "add_zr"),
        helper.make_node("Sigmoid", [p + "pre_zr"], [p + "zr"], name=p + "gates"),
        helper.make_node("Split", [p + "zr", p + "half"], [p + "z", p + "r"], axis=1,
                         name=p + "split_zr"),
        helper.make_node("Mul", [p + "r", p + "hr_n"], [p + "r_hn"], name=p + "reset"),
        helper.make_node("Add", [p + "x_n", p + "r_hn"], [p + "pre_n"], name=p + "add_n"),
        helper.make_node("Tanh", [p + "pre_n"], [p + "n"], name=p + "candidate"),
        helper.make_node("Sub", ["h", p + "n"], [p + "h_minus_n"], name=p + "sub"),
        helper.make_node("Mul", [p + "z", p + "h_minus_n"], [p + "z_term"], name=p + "update"),
        helper.make_node("Add", [p + "n", p + "z_term"], ["h_next"], name=p + "h_next"),
        helper.make_node("Identity", ["h_next"], ["y"], name=p + "y"),
    ]
    consts = [
        _const(p + "R", r_q), _const(p + "R_scale", r_scale), _const(p + "R_b", r_bias),
        _const(p + "split", np.array([2 * hidden, hidden], np.int64)),
        _const(p + "half", np.array([hidden, hidden], np.int64)),
    ]
    state = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", hidden])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3 * hidden])
    outs = [helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["B", hidden]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", hidden])]
    return helper.make_graph(nodes, f"{prefix}_step", [state, x], outs, consts)


def _node_and_prefix(graph: onnx.GraphProto, node_name: str, suffix: str) -> tuple[
        int, onnx.NodeProto, str]:
    """Where GRU ``node_name`` is, the node, and a unique prefix for the names replacing it."""
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.name == node_name)
    return index, node, (node.name or f"gru{index}").replace("/", "_").strip("_") + suffix


def lower_gru_int8(model: onnx.ModelProto, node_name: str, reduce_range: bool) -> None:
    """Replace GRU ``node_name`` of ``model`` (in place) by INT8 GEMM + ``Scan`` (see module
    docstring). The caller checks :func:`gru_lowering_refusal` first."""
    graph = model.graph
    index, node, p = _node_and_prefix(graph, node_name, "_int8")
    inits = {t.name: t for t in graph.initializer}
    inputs = list(node.input) + [""] * (6 - len(node.input))
    outputs = list(node.output) + [""] * (2 - len(node.output))
    w = numpy_helper.to_array(inits[inputs[1]])[0]  # [3H, I], gates z, r, h
    r = numpy_helper.to_array(inits[inputs[2]])[0]  # [3H, H]
    hidden = r.shape[1]
    bias = (numpy_helper.to_array(inits[inputs[3]])[0] if inputs[3]
            else np.zeros(6 * hidden, np.float32))
    w_q, w_scale = quantize_per_channel(np.ascontiguousarray(w.T), 1, reduce_range)
    r_q, r_scale = quantize_per_channel(np.ascontiguousarray(r.T), 1, reduce_range)
    consts = [_const(f"{p}/W", w_q), _const(f"{p}/W_scale", w_scale),
              _const(f"{p}/W_b", bias[:3 * hidden].astype(np.float32)),
              _const(f"{p}/zero", np.array([0], np.int64)),
              _const(f"{p}/one", np.array([1], np.int64)),
              _const(f"{p}/two", np.array([2], np.int64)),
              _const(f"{p}/hidden", np.array([hidden], np.int64))]
    new = [helper.make_node("DynamicQuantizeMatMul",
                            [inputs[0], f"{p}/W", f"{p}/W_scale", "", f"{p}/W_b"],
                            [f"{p}/x_proj"], domain=MS_DOMAIN, name=f"{p}/input_projection")]
    if inputs[5]:
        new.append(helper.make_node("Squeeze", [inputs[5], f"{p}/zero"], [f"{p}/h0"],
                                    name=f"{p}/h0"))
    else:
        new += [helper.make_node("Shape", [inputs[0]], [f"{p}/x_shape"], name=f"{p}/x_shape"),
                helper.make_node("Slice", [f"{p}/x_shape", f"{p}/one", f"{p}/two"],
                                 [f"{p}/batch"], name=f"{p}/batch"),
                helper.make_node("Concat", [f"{p}/batch", f"{p}/hidden"], [f"{p}/h0_shape"],
                                 axis=0, name=f"{p}/h0_shape"),
                helper.make_node("ConstantOfShape", [f"{p}/h0_shape"], [f"{p}/h0"],
                                 value=numpy_helper.from_array(np.zeros(1, np.float32)),
                                 name=f"{p}/h0")]
    body = _scan_body(p, hidden, r_q, r_scale, bias[3 * hidden:].astype(np.float32))
    new.append(helper.make_node("Scan", [f"{p}/h0", f"{p}/x_proj"], [f"{p}/h_last", f"{p}/ys"],
                                num_scan_inputs=1, body=body, name=f"{p}/scan"))
    if outputs[0]:  # Y [T, 1, B, H]
        new.append(helper.make_node("Unsqueeze", [f"{p}/ys", f"{p}/one"], [outputs[0]],
                                    name=f"{p}/Y"))
    if outputs[1]:  # Y_h [1, B, H]
        new.append(helper.make_node("Unsqueeze", [f"{p}/h_last", f"{p}/zero"], [outputs[1]],
                                    name=f"{p}/Y_h"))
    del graph.node[index]
    for offset, made in enumerate(new):
        graph.node.insert(index + offset, made)
    graph.initializer.extend(consts)
    drop_unused_initializers(graph, {inputs[1], inputs[2], inputs[3]})
    _ensure_ms_opset(model)


def store_gru_weights_int8(model: onnx.ModelProto, node_name: str, reduce_range: bool) -> None:
    """Store GRU ``node_name``'s ``W`` and ``R`` as INT8 behind ``DequantizeLinear`` (in place)."""
    graph = model.graph
    index, node, p = _node_and_prefix(graph, node_name, "_w8")
    inits = {t.name: t for t in graph.initializer}
    dequantize = []
    for slot in (1, 2):
        name = node.input[slot]
        weight = numpy_helper.to_array(inits[name])  # [D, 3H, I]
        q, scale = quantize_per_channel(weight, 1, reduce_range)
        graph.initializer.extend([_const(f"{p}/{slot}_q", q),
                                  _const(f"{p}/{slot}_scale", scale),
                                  _const(f"{p}/{slot}_zp", np.zeros_like(scale, np.int8))])
        dequantize.append(helper.make_node(
            "DequantizeLinear", [f"{p}/{slot}_q", f"{p}/{slot}_scale", f"{p}/{slot}_zp"],
            [f"{p}/{slot}_fp32"], axis=1, name=f"{p}/dequantize_{slot}"))
        node.input[slot] = f"{p}/{slot}_fp32"
        drop_unused_initializers(graph, {name})
    for offset, made in enumerate(dequantize):
        graph.node.insert(index + offset, made)


def _names_used(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:  # subgraphs may read outer-scope names
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _names_used(attr.g)
    return used


def drop_unused_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the initializers named in ``candidates`` that nothing reads any more."""
    dead = (candidates - {""}) - _names_used(graph)
    if dead:
        keep = [t for t in graph.initializer if t.name not in dead]
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
