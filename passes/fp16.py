"""``fp16``: an FP16 ONNX model for GPUs, float32 at its edges and wherever fp16 would hurt."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from secompile.calibration.metrics import si_sdr
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError, PassError
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.lowering.onnx_export import consumers, quiet_ort_tools
from secompile.compiler.quantization.int8_plan import ensure_node_names, find_layers, signal_nodes
from secompile.compiler.runtime.runners import OrtRunner

FP16_MAX = 65504.0
# Ops whose fp16 result loses far more than one rounding of their inputs: exponentials,
# logarithms and powers amplify relative error, divisions and reciprocals blow up small
# denominators, and reductions and normalizations sum many elements (the sum overflows 65504
# or loses the small terms) before they divide or take a root.
DEFAULT_SENSITIVE_OPS = (
    "Log", "Exp", "Pow", "Sqrt", "Reciprocal", "Div", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "Erf", "CumSum",
    "Range",
)
SIMULATION = ("ONNX Runtime CPU, fp32 arithmetic: (a) the fp16 file as ORT runs it (fp16 "
              "weights, fp32 kernels between casts) and (b) the fp32 graph with fp16-rounded "
              "weights and every fp16 tensor rounded to fp16; no fp16 accumulation, no GPU "
              "kernels or TensorRT fusions")
_FRONT, _BACK = "spectral front end", "spectral back end"
_OPS, _RANGE, _READS, _FEEDS = ("op type", "range overflow", "reads an out-of-range tensor",
                                "computes a constant input of an fp32 node")


@dataclass(frozen=True)
class Fp16Config(PassConfig):
    """Options of ``fp16``.

    ``min_agreement_db`` is the SI-SDR the fp16 output must keep against the fp32 output (both
    on ONNX Runtime CPU) on the parity clip and on that clip scaled to peak 1.0;
    ``keep_fp32_ops`` are op types always computed in fp32 (ONNX Runtime's own
    ``DEFAULT_OP_BLOCK_LIST`` is added to them); a node whose output reaches
    ``range_margin * 65504`` on those clips stays fp32; ``spectral_fp32`` keeps the spectral
    front/back end (STFT, features before the first learned layer, mask, overlap-add) fp32.
    """

    min_agreement_db: float = 40.0
    keep_fp32_ops: tuple[str, ...] = DEFAULT_SENSITIVE_OPS
    range_margin: float = 0.5
    spectral_fp32: bool = True

    def check(self) -> None:
        if not self.min_agreement_db > 0:
            raise ValueError(f"min_agreement_db must be > 0, got {self.min_agreement_db}")
        if not 0 < self.range_margin <= 1:
            raise ValueError(f"range_margin must be in (0, 1], got {self.range_margin}")
        bad = [op for op in self.keep_fp32_ops if not (op and op[:1].isupper() and op.isalnum())]
        if bad:
            raise ValueError(f"keep_fp32_ops must be ONNX op type names, got {bad!r}")


class Fp16(Pass):
    """Convert the fp32 ONNX model to FP16 for GPU runtimes (TensorRT, ORT's CUDA provider),
    with float32 graph inputs and outputs.

    The conversion is ONNX Runtime's ``convert_float_to_float16`` (``keep_io_types``, op and
    node block lists): a maintained library beats a hand-written type rewrite. This pass only
    decides which nodes stay fp32 and tidies the converter's casts.

    Rewrite rules:

    1. Op types in ``keep_fp32_ops`` and ONNX Runtime's ``DEFAULT_OP_BLOCK_LIST`` (which holds
       ``Max``/``Min``, used by the PReLU rewrite of ``export-onnx``) compute in fp32.
    2. Spectral front/back end (``spectral_fp32``): the learned layers are the weight-holding
       nodes on the signal path (:func:`compiler.int8_plan.find_layers`; a stored windowed-DFT
       basis ``[N+2, 1, N]`` does not count). A signal-path node that no learned layer feeds
       is front end (framing, the STFT Conv, magnitude and compression); one that feeds no
       learned layer is back end (mask, mask times spectrum, the overlap-add ConvTranspose,
       the envelope division). Both stay fp32: they see raw signal levels and their rounding
       goes straight into the waveform.
    3. Range (data-aware): the fp32 model runs on the parity clip and on the clip scaled to
       peak 1.0 (loudest input) with every float tensor exposed; a node whose output's max
       ``|x|`` reaches ``range_margin * 65504`` stays fp32 and so do its readers (an fp16
       copy of that tensor would overflow); so do readers of a weight beyond that bound.
    4. A node off the signal path (constant subgraphs such as compacted DFT bases, the
       overlap-add envelope computed from the input length) whose float outputs are read only
       by fp32 nodes stays fp32: its values are those nodes' weights.
    5. Cast tidying: the converter stores a kept node's output in fp16 even between two kept
       nodes (fp32 -> fp16 -> fp32); such round trips are removed, so a tensor is rounded to
       fp16 only where an fp16 node reads it. Nodes are then put back in topological order.
    6. ``secompile.*`` metadata props are kept and ``secompile.precision = fp16`` added.

    Agreement is measured on ONNX Runtime's CPU provider, the CPU simulation of FP16. Its x86
    kernels are fp32 and it runs fp16 nodes by inserting casts, but around a whole chain of
    them, which then runs in fp32 (measured with ORT 1.32: ``(x + 1) - 1`` in fp16 keeps
    ``x = 1e-4``, and an fp16 overflow inside a chain goes unseen). So two fp16 runs are
    compared with the fp32 model: the shipped file (fp16 weights; proves the graph loads and
    runs), and the fp32 graph with fp16-rounded weights and every tensor the fp16 model stores
    in fp16 rounded through a ``Cast`` pair (``fp16_storage_simulation.onnx`` in the pass
    folder: fp16 storage, fp32 arithmetic). Each runs on the parity clip and on it scaled to
    peak 1.0; the worst of the four SI-SDRs must reach ``min_agreement_db``. Neither run
    models fp16 accumulation inside convolutions, GEMMs, GRUs or reductions, the GPU's own
    kernels (e.g. approximate transcendentals), or TensorRT's layer fusions and per-layer
    precision choices.
    """

    name = "fp16"
    Config = Fp16Config
    input_formats = ("onnx",)
    summary = "FP16 ONNX for GPUs: fp32 I/O, spectral ends, sensitive ops and overflows kept fp32"
    checks_parity = False  # fp16 changes the output by design; agreement is measured below

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        clip = np.ascontiguousarray(ctx.parity_audio, np.float32)
        return {"parity_audio": hashlib.sha256(clip.tobytes()).hexdigest()}

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: Fp16Config = self.config
        model = onnx.load(str(artifact.path))
        props = {p.key: p.value for p in model.metadata_props}
        precision = artifact.metadata.get("precision") or props.get("secompile.precision")
        if precision == "fp16":
            return PassResult(artifact, False, {"reason": "the model is already fp16"})
        if precision not in (None, "fp32") or _holds_fp16(model):
            raise ConfigError(f"fp16 needs an fp32 ONNX model; this one is "
                              f"{precision or 'already partly fp16'} (run fp16 before quantize)")
        ensure_node_names(model)
        source = ctx.pass_dir / "fp32.onnx"
        onnx.save(model, str(source))
        clip = np.ascontiguousarray(ctx.parity_audio, np.float32)
        peak = float(np.max(np.abs(clip)))
        clips = {"parity": clip, "parity_peak_1.0": clip / peak if peak > 0 else clip}

        floats = _float_tensors(model)
        float_nodes = [n for n in model.graph.node if any(o in floats for o in n.output)]
        ops = set(cfg.keep_fp32_ops) | set(_ort_default_block_list())
        limit = cfg.range_margin * FP16_MAX
        plan, overflow = _plan(model, floats, ops, cfg.spectral_fp32, limit,
                               list(clips.values()))
        fp16_nodes = [n.name for n in float_nodes if n.name not in plan.reason]
        if not fp16_nodes:
            return PassResult(artifact, False, {
                "reason": "every float node is kept fp32: nothing would compute in fp16",
                "kept_fp32": plan.summary(overflow)})

        converted = self._convert(model, sorted(ops), sorted(plan.reason))
        casts_removed = _drop_cast_round_trips(converted)
        _topological_sort(converted)
        del converted.graph.value_info[:]  # ONNX Runtime re-infers the types
        onnx.helper.set_model_props(converted, {**props, "secompile.precision": "fp16"})
        try:
            onnx.checker.check_model(converted, full_check=True)
        except Exception as exc:  # the checker raises several types
            raise PassError(self.name, f"the converted graph is not valid ONNX: {exc}") from exc
        shipped = ctx.pass_dir / "model.onnx"
        onnx.save(converted, str(shipped))
        storage = ctx.pass_dir / "fp16_storage_simulation.onnx"
        onnx.save(_storage_simulation(model, set(fp16_nodes), floats), str(storage))

        agreement = self._agreement(source, shipped, storage, clips, ctx.threads)
        worst = min(agreement["si_sdr_db"].values())
        if not worst >= cfg.min_agreement_db:
            detail = ", ".join(f"{k} {_db(v)}" for k, v in agreement["si_sdr_db"].items())
            raise PassError(self.name, f"fp16 output is {_db(worst)} SI-SDR from the fp32 "
                                       f"output ({detail}; {agreement['max_abs']:.3g} max abs); "
                                       f"needs >= {cfg.min_agreement_db} dB")
        before, after = artifact.path.stat().st_size, shipped.stat().st_size
        count = sum(1 for n in converted.graph.node if n.op_type == "Cast")
        metrics = {
            "nodes_total": len(model.graph.node),
            "nodes_float": len(float_nodes),
            "nodes_fp16": len(fp16_nodes),
            "nodes_kept_fp32": len(plan.reason),
            "nodes_shape_arithmetic": len(model.graph.node) - len(float_nodes),
            "kept_fp32": plan.summary(overflow),
            "range_limit": limit,
            "cast_nodes_inserted": count - sum(1 for n in model.graph.node
                                               if n.op_type == "Cast"),
            "cast_round_trips_removed": casts_removed,
            "size_bytes": {"fp32": before, "fp16": after},
            "weight_bytes": {"fp32": _weight_bytes(model), "fp16": _weight_bytes(converted)},
            "size_reduction": round(before / after, 3),
            "agreement_db": round(worst, 2),
            "agreement_db_by_run": {k: round(v, 2) for k, v in agreement["si_sdr_db"].items()},
            "max_abs": agreement["max_abs"],
            "simulation": SIMULATION,
        }
        new = artifact.derive(self.name, path=shipped, metadata={"precision": "fp16"})
        return PassResult(new, True, metrics)

    def _convert(self, model: onnx.ModelProto, ops: list[str], nodes: list[str]
                 ) -> onnx.ModelProto:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        try:
            with quiet_ort_tools():
                return convert_float_to_float16(copy, keep_io_types=True, op_block_list=ops,
                                                node_block_list=nodes)
        except Exception as exc:  # the converter raises assertion and value errors
            raise PassError(self.name, f"ONNX Runtime's fp16 converter failed: {exc}") from exc

    def _agreement(self, source: Path, shipped: Path, storage: Path,
                   clips: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
        try:
            runners = {"ort_cpu": OrtRunner(shipped, threads),
                       "fp16_storage": OrtRunner(storage, threads)}
        except Exception as exc:  # ORT raises its own exception types
            raise PassError(self.name, f"ONNX Runtime cannot load the fp16 model: {exc}") \
                from exc
        reference = OrtRunner(source, threads)
        scores, errors = {}, []
        for clip_name, clip in clips.items():
            expected = reference(clip)
            for run_name, runner in runners.items():
                got = runner(clip)
                with np.errstate(invalid="ignore", over="ignore"):
                    score = si_sdr(got[0], expected[0])
                # an overflow gives inf/NaN output: NaN must fail the check, not escape min()
                scores[f"{run_name}/{clip_name}"] = score if np.isfinite(score) else -np.inf
                errors.append(np.max(np.abs(got - expected)))
        return {"si_sdr_db": scores, "max_abs": float(np.max(errors))}


def _db(value: float) -> str:
    return f"{value:.1f} dB" if np.isfinite(value) else "non-finite (overflow)"


def _ort_default_block_list() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return list(DEFAULT_OP_BLOCK_LIST)


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the stored initializers (the rest of a file is the graph itself)."""
    return sum(len(numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer)


def _holds_fp16(model: onnx.ModelProto) -> bool:
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16
                                    for a in n.attribute) for n in model.graph.node)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors (inputs, weights, node outputs) by ONNX type inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)
             if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    names |= {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type == TensorProto.FLOAT:
                names.add(node.output[0])
    return names


def _stored_dft_basis(tensor: onnx.TensorProto | None) -> bool:
    """A ``[N+2, 1, N]`` weight whose first sine row (bin 0) is all zeros: a windowed DFT
    basis stored by an export without ``compact_dft``, not a learned layer."""
    if tensor is None or len(tensor.dims) != 3:
        return False
    rows, one, n = tensor.dims
    if one != 1 or n < 16 or n % 2 or rows != n + 2:
        return False
    values = numpy_helper.to_array(tensor).reshape(rows, n)
    return bool(np.all(values[n // 2 + 1] == 0) and np.any(values[0] != 0))


def _spectral_ends(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Signal-path nodes no learned layer feeds (front end) and that feed no learned layer
    (back end), in graph order; a node with neither is both and listed as front end."""
    inits = {t.name: t for t in model.graph.initializer}
    layers, _ = find_layers(model, 0)
    nodes = {n.name: n for n in model.graph.node}
    learned = {layer.name for layer in layers
               if not (len(nodes[layer.name].input) > 1
                       and _stored_dft_basis(inits.get(nodes[layer.name].input[1])))}
    on_signal = signal_nodes(model)
    readers = consumers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    downstream: set[str] = set()
    frontier = [o for name in learned for o in nodes[name].output]
    while frontier:
        for node in readers.get(frontier.pop(), []):
            if node.name in on_signal and node.name not in downstream:
                downstream.add(node.name)
                frontier.extend(node.output)
    upstream: set[str] = set()
    frontier = [i for name in learned for i in nodes[name].input]
    while frontier:
        node = producer.get(frontier.pop())
        if node is not None and node.name in on_signal and node.name not in upstream:
            upstream.add(node.name)
            frontier.extend(node.input)
    plain = [n.name for n in model.graph.node if n.name in on_signal and n.name not in learned]
    front = [n for n in plain if n not in downstream]
    back = [n for n in plain if n not in upstream and n in downstream]
    return front, back


class _Plan:
    """Which nodes stay fp32, each with the first reason found."""

    def __init__(self, model: onnx.ModelProto, floats: set[str]) -> None:
        self.model = model
        self.floats = floats
        self.float_nodes = {n.name for n in model.graph.node if any(o in floats
                                                                     for o in n.output)}
        self.reason: dict[str, str] = {}

    def keep(self, names: Iterable[str], reason: str) -> None:
        """Keep the float nodes among ``names`` fp32 (shape arithmetic has no precision)."""
        for name in names:
            if name in self.float_nodes:
                self.reason.setdefault(name, reason)

    def keep_constant_feeders(self) -> None:
        """Rule 4, to a fixpoint: off-signal nodes whose float outputs only fp32 nodes read."""
        on_signal = signal_nodes(self.model)
        readers = consumers(self.model)
        outputs = {o.name for o in self.model.graph.output}
        changed = True
        while changed:
            changed = False
            for node in reversed(self.model.graph.node):
                if node.name in self.reason or node.name in on_signal:
                    continue
                used = [o for o in node.output if o in self.floats]
                users = [r for o in used for r in readers.get(o, [])]
                if used and users and not any(o in outputs for o in used) and all(
                        r.name in self.reason for r in users):
                    self.reason[node.name] = _FEEDS
                    changed = True

    def summary(self, overflow: list[dict[str, Any]]) -> dict[str, Any]:
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.reason.items():
            by_reason.setdefault(reason, []).append(name)
        op_of = {n.name: n.op_type for n in self.model.graph.node}
        ops: dict[str, int] = {}
        for name in by_reason.get(_OPS, []):
            ops[op_of[name]] = ops.get(op_of[name], 0) + 1
        return {
            "by_reason": {k: len(v) for k, v in by_reason.items()},
            "op_types": dict(sorted(ops.items())),
            _FRONT: by_reason.get(_FRONT, []),
            _BACK: by_reason.get(_BACK, []),
            _RANGE: [{k: o[k] for k in ("tensor", "node", "op_type", "max_abs", "readers")}
                     for o in overflow],
            _FEEDS: len(by_reason.get(_FEEDS, [])),
        }


def _plan(model: onnx.ModelProto, floats: set[str], ops: set[str], spectral: bool,
          limit: float, clips: list[np.ndarray]) -> tuple[_Plan, list[dict[str, Any]]]:
    """Rules 1-4: the nodes kept fp32 and why, and the tensors beyond ``limit``."""
    plan = _Plan(model, floats)
    plan.keep((n.name for n in model.graph.node if n.op_type in ops), _OPS)
    if spectral:
        front, back = _spectral_ends(model)
        plan.keep(front, _FRONT)
        plan.keep(back, _BACK)
    overflow = _overflows(model, _measure_ranges(model, floats, clips), limit)
    plan.keep((o["node"] for o in overflow if o["node"]), _RANGE)
    plan.keep((r for o in overflow for r in o["readers"]), _READS)
    plan.keep_constant_feeders()
    return plan, overflow


def _measure_ranges(model: onnx.ModelProto, floats: set[str], clips: list[np.ndarray]
                    ) -> dict[str, float]:
    """Max ``|x|`` of every float node output of the fp32 model over ``clips``."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o in floats]
    probe.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                              for o in names if o not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
    input_name = session.get_inputs()[0].name
    ranges: dict[str, float] = {}
    for clip in clips:
        values = session.run(wanted, {input_name: clip})
        for name, value in zip(wanted, values, strict=True):
            if value.size:
                ranges[name] = max(ranges.get(name, 0.0), float(np.max(np.abs(value))))
    return ranges


def _overflows(model: onnx.ModelProto, ranges: dict[str, float], limit: float
               ) -> list[dict[str, Any]]:
    """Tensors whose values reach ``limit``: measured node outputs and stored weights."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = consumers(model)
    found = [(name, value) for name, value in ranges.items() if value >= limit]
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(init)
            if values.size and float(np.max(np.abs(values))) >= limit:
                found.append((init.name, float(np.max(np.abs(values)))))
    result = []
    for name, value in found:
        node = producer.get(name)
        result.append({"tensor": name, "node": node.name if node else None,
                       "op_type": node.op_type if node else "initializer",
                       "max_abs": float(f"{value:.6g}"),
                       "readers": [r.name for r in readers.get(name, [])]})
    return result


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Bypass ``Cast(to=fp32)`` nodes reading a ``Cast(fp32 -> fp16)``: the reader gets the
    fp32 original. Casts left without readers are removed. Returns the pairs bypassed."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    bypassed = 0
    for node in graph.node:
        first = producer.get(node.input[0]) if _cast_to(node) == TensorProto.FLOAT else None
        if first is None or _cast_to(first) != TensorProto.FLOAT16:
            continue
        original = first.input[0]
        if node.output[0] in outputs:  # a graph output keeps its name
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = original
        else:
            renamed[node.output[0]] = original
        bypassed += 1
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return bypassed
        for node in dead:
            graph.node.remove(node)


def _topological_sort(model: onnx.ModelProto) -> None:
    """Order the nodes so each comes after its inputs' producers (the converter appends its
    casts at the end); nodes that cannot be placed keep their relative order at the end."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    progress = True
    while pending and progress:
        progress = False
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
                progress = True
            else:
                waiting.append(node)
        pending = waiting
    nodes = ordered + pending
    del graph.node[:]
    graph.node.extend(nodes)


def _storage_simulation(model: onnx.ModelProto, fp16_nodes: set[str], floats: set[str]
                        ) -> onnx.ModelProto:
    """The fp32 model with fp16 storage: weights read by an fp16 node rounded to fp16 (as the
    converter stores them), and every float input and output of an fp16 node rounded through
    ``Cast(fp16) -> Cast(fp32)``, which ONNX Runtime executes as written."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    sim = onnx.ModelProto()
    sim.CopyFrom(model)
    graph = sim.graph
    readers = consumers(sim)
    inits = {t.name: t for t in graph.initializer}
    for name, init in inits.items():
        if init.data_type == TensorProto.FLOAT and any(
                r.name in fp16_nodes for r in readers.get(name, [])):
            values = numpy_helper.to_array(init)
            rounded = convert_np_to_float16(values.reshape(-1)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded.reshape(values.shape), name))
    rounded_name: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []

    def rounding(name: str) -> str:
        if name not in rounded_name:
            rounded_name[name] = f"{name}__fp16"
            nodes.extend([
                helper.make_node("Cast", [name], [f"{name}__h"], to=TensorProto.FLOAT16,
                                 name=f"{name}__to_fp16"),
                helper.make_node("Cast", [f"{name}__h"], [f"{name}__fp16"],
                                 to=TensorProto.FLOAT, name=f"{name}__to_fp32")])
        return rounded_name[name]

    stored_fp16 = {n for n in inits if n in floats}
    for node in graph.node:
        if node.name in fp16_nodes:
            for i, name in enumerate(node.input):
                if name in floats and name not in stored_fp16:
                    node.input[i] = rounding(name)
        nodes.append(node)
        if node.name in fp16_nodes:
            for name in node.output:
                if name in floats:
                    node_output = f"{name}__exact"
                    node.output[list(node.output).index(name)] = node_output
                    nodes.extend([
                        helper.make_node("Cast", [node_output], [f"{name}__h"],
                                         to=TensorProto.FLOAT16, name=f"{name}__to_fp16"),
                        helper.make_node("Cast", [f"{name}__h"], [name], to=TensorProto.FLOAT,
                                         name=f"{name}__to_fp32")])
                    rounded_name[name] = name  # already rounded where it is produced
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return sim
