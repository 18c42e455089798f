"""``tensorrt``: a Torch-TensorRT exported program, with the ops left to PyTorch reported."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import PassError, TargetError
from secompile.compiler.core.pass_base import Pass, PassResult
from secompile.compiler.lowering.torch_export import (
    TRT_FILE,
    CompiledShapeConfig,
    HopPadded,
    export_program,
    parity_checks,
    worst_agreement,
)

TRT_PRECISIONS = ("fp16", "fp32")
_STRUCTURAL = {"aten.sym_size", "aten._assert_tensor_metadata",
               "aten.sym_constrain_range_for_size", "aten._assert_scalar"}


@dataclass(frozen=True)
class TensorRtConfig(CompiledShapeConfig):
    """Options of ``tensorrt``: precision (taken from the graph: autocast casts in the exported
    program, Torch-TensorRT's explicit typing), the smallest block worth an engine, whether a
    machine without Torch-TensorRT fails the build (``require``) or skips the pass, plus the
    shape range (``opt_frames`` is the shape TensorRT tunes for; 20 s at most by default: the
    engine is built for the largest shape) and agreement floor of
    :class:`~compiler.lowering.torch_export.CompiledShapeConfig`."""

    precision: str = "fp16"
    max_frames: int = 2000
    min_block_size: int = 3
    require: bool = False

    def check(self) -> None:
        super().check()
        if self.precision not in TRT_PRECISIONS:
            raise ValueError(f"precision must be one of {TRT_PRECISIONS}, got "
                             f"{self.precision!r}")
        if self.min_block_size < 1:
            raise ValueError(f"min_block_size must be >= 1, got {self.min_block_size}")


def op_name(target: Any) -> str:
    """A readable operator name: ``aten.conv1d``, ``secompile.gru``, ``mul``."""
    name = getattr(target, "__name__", None) or str(target)
    text = str(target)
    if text.startswith(("aten.", "secompile.", "prims.")):
        name = text.rsplit(".", 1)[0] if text.count(".") >= 2 else text
    return name


def count_ops(graph: torch.fx.Graph) -> Counter:
    """How many times each compute operator is called in ``graph``: PyTorch operators only
    (Python arithmetic on sizes and ``getitem`` are not computation), shape bookkeeping
    excluded."""
    return Counter(op_name(n.target) for n in graph.nodes if n.op == "call_function"
                   and isinstance(n.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
                   and op_name(n.target) not in _STRUCTURAL)


def op_coverage(before: Counter, compiled: torch.fx.GraphModule) -> dict[str, Any]:
    """Which operators TensorRT runs and which fall back to PyTorch.

    Torch-TensorRT partitions the graph into TensorRT engines (``_run_on_acc_*`` submodules)
    and PyTorch subgraphs (``_run_on_gpu_*`` and the top-level graph); an operator's fallback
    count is how often it is still called as an operator outside the engines."""
    fallback = count_ops(compiled.graph)
    engines = 0
    for name, child in compiled.named_children():
        if name.startswith("_run_on_acc"):
            engines += 1
        elif isinstance(child, torch.fx.GraphModule):
            fallback += count_ops(child.graph)
    rows = [{"op": op, "total": total, "pytorch": min(fallback.get(op, 0), total),
             "tensorrt": total - min(fallback.get(op, 0), total)}
            for op, total in sorted(before.items())]
    in_trt = sum(r["tensorrt"] for r in rows)
    return {"engines": engines, "ops": rows, "ops_total": sum(before.values()),
            "ops_in_tensorrt": in_trt,
            "share_in_tensorrt": round(in_trt / max(1, sum(before.values())), 3)}


def _tensorrt_decompositions() -> dict | None:
    """Torch-TensorRT's own decomposition table, so the op-coverage counts start from the graph
    it converts (``None``: PyTorch's default table, where the table is not importable)."""
    try:
        from torch_tensorrt.dynamo.lowering import get_decompositions
    except ImportError:
        return None
    return get_decompositions()


class TensorRt(Pass):
    """Write ``model_trt.ep``: the model compiled by Torch-TensorRT (the ``gpu`` extra).

    Rewrite rules (on a copy; the pipeline's model passes through unchanged): the model is
    exported as ``aot-inductor`` exports it (opaque RNN operators, convolutional STFT,
    autocast core in ``precision``, dynamic batch and length), decomposed to ATen, and compiled
    with ``torch_tensorrt.dynamo.compile`` using explicit typing (the precision comes from the
    graph, not from ``enabled_precisions``). Operators without a TensorRT converter, such as
    the RNN operators, run in PyTorch; the op-coverage table in the metrics says which. The
    result must keep ``min_agreement_db`` SI-SDR against the fp32 eager model on the parity
    clip; it is saved with ``torch_tensorrt.save`` as an exported program.

    Where Torch-TensorRT is not installed the pass does not apply (``skipped`` names why)
    unless ``require`` is set, which makes it an error.
    """

    name = "tensorrt"
    Config = TensorRtConfig
    input_formats = ("torch",)
    summary = "write model_trt.ep: Torch-TensorRT engines, fallback ops reported"
    checks_parity = False

    def requires_cuda(self) -> bool:
        return True

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        from secompile.targets.hardware import detect

        hw = detect()
        return {"torch_tensorrt": hw.torch_tensorrt, "tensorrt": hw.tensorrt,
                "device": [d.name for d in hw.cuda_devices]}

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: TensorRtConfig = self.config
        try:
            import torch_tensorrt
        except ImportError as exc:
            why = (f"Torch-TensorRT is not importable ({exc}); install the gpu extra "
                   "(pip install 'secompile[gpu]') on a machine with CUDA and TensorRT")
            if cfg.require:
                raise TargetError(f"tensorrt: {why}") from None
            return PassResult(artifact, False, {"skipped": why})
        if not torch.cuda.is_available():
            raise TargetError("tensorrt needs a CUDA GPU; this machine has none")
        shapes = cfg.shapes(artifact)
        started = time.perf_counter()
        program, rnns = export_program(self.name, artifact.module, shapes, "cuda", cfg.precision)
        program = program.run_decompositions(_tensorrt_decompositions())
        before = count_ops(program.graph)
        spec = torch_tensorrt.Input(
            min_shape=(1, shapes.samples(shapes.min_frames)),
            opt_shape=(1, shapes.samples(shapes.opt_frames)),
            max_shape=(shapes.max_batch, shapes.samples(shapes.max_frames)),
            dtype=torch.float32)
        try:
            compiled = torch_tensorrt.dynamo.compile(
                program, arg_inputs=[spec], use_explicit_typing=True,
                min_block_size=cfg.min_block_size, require_full_compilation=False)
        except Exception as exc:  # TensorRT's builder raises many types
            raise PassError(self.name, f"Torch-TensorRT could not compile the model: "
                                       f"{str(exc).splitlines()[0]}") from exc
        built = time.perf_counter()
        coverage = op_coverage(before, compiled)
        path = ctx.pass_dir / TRT_FILE
        # Input specs, not an example tensor: an example would save fixed shapes
        torch_tensorrt.save(compiled, str(path), output_format="exported_program",
                            arg_inputs=[spec])
        runner = HopPadded(torch_tensorrt.load(str(path)).module(), shapes.hop)
        checks = parity_checks(artifact.module, runner, ctx, shapes, "cuda")  # saved program
        worst = worst_agreement(self.name, checks, cfg.min_agreement_db, TRT_FILE)
        metrics = {
            "file": TRT_FILE, "precision": cfg.precision, "shapes": shapes.as_dict(),
            "opaque_rnns": rnns, "compile_seconds": round(built - started, 2),
            "size_bytes": path.stat().st_size, "agreement_db": worst, "parity": checks,
            "op_coverage": coverage, "torch_tensorrt": torch_tensorrt.__version__,
        }
        return PassResult(artifact, False, metrics, files=(path,))
