"""``export-onnx``: lower a torch model to an optimized, portable ONNX file."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass

import onnx
import torch

from compiler.artifact import Artifact
from compiler.context import PassContext
from compiler.graph import example_batch
from compiler.onnx_tools import (
    check_export_options,
    compact_dft_bases,
    drop_unused_opsets,
    ort_optimize,
    rewrite_prelu,
    simplify,
)
from compiler.passes import Pass, PassConfig, PassResult, register_pass

INPUT_NAME, OUTPUT_NAME = "noisy", "enhanced"
ORT_LEVELS = ("disabled", "basic", "extended")


@dataclass(frozen=True)
class ExportOnnxConfig(PassConfig):
    """Options of ``export-onnx``. ``opset = 0`` means the target's opset."""

    opset: int = 0
    simplify: str = "auto"
    ort_level: str = "basic"
    compact_dft: bool = True
    fast_prelu: bool = True
    parity_tolerance: float = 1e-4

    def check(self) -> None:
        check_export_options(self.opset, self.simplify)
        if self.ort_level not in ORT_LEVELS:
            raise ValueError(f"ort_level must be one of {ORT_LEVELS}, got {self.ort_level!r}")
        if not self.parity_tolerance > 0:
            raise ValueError(f"parity_tolerance must be > 0, got {self.parity_tolerance}")


@register_pass
class ExportOnnx(Pass):
    """Export a waveform-in, waveform-out torch model to ONNX with a dynamic time axis.

    Rewrite rules: a spectral model's ``torch.stft``/``torch.istft`` become the convolution
    form of ``models.spectral.ConvStft`` (windowed DFT basis as Conv, overlap-add as
    ConvTranspose divided by the window envelope), so the STFT runs inside the graph; export
    with the TorchScript exporter (``dynamo=False``: the dynamo exporter cannot export GRUs
    with a derived time length), dynamic ``batch`` and ``samples`` axes; then onnxsim (or
    onnxslim), then ONNX Runtime's offline optimizer at ``ort_level`` (``basic`` keeps
    standard ONNX ops, so the file stays portable); with ``compact_dft``, stored DFT bases
    become small subgraphs that ONNX Runtime folds back at load (same speed, file ~10x smaller
    for GTCRN); with ``fast_prelu``, constant-slope PRelu becomes the exact LeakyRelu or
    Max(x, slope*x) form, which ONNX Runtime runs faster (see ``rewrite_prelu``).
    """

    name = "export-onnx"
    Config = ExportOnnxConfig
    input_formats = ("torch",)
    output_format = "onnx"
    summary = "lower to ONNX (dynamic time axis, STFT in-graph), simplify, ORT-optimize"

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: ExportOnnxConfig = self.config
        opset = cfg.opset or ctx.target.opset
        module = artifact.module
        stft_placement = "none (waveform model)"
        if hasattr(module, "with_stft_impl"):
            module = module.with_stft_impl("conv")
            stft_placement = "in-graph: Conv with a windowed DFT basis, ConvTranspose overlap-add"
        example = example_batch(artifact, ctx.parity_audio)
        raw = ctx.pass_dir / "exported.onnx"
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(raw), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"},
                              OUTPUT_NAME: {0: "batch", 1: "samples"}},
            )
        model = onnx.load(str(raw))
        nodes_exported = len(model.graph.node)
        model, simplifier = simplify(model, cfg.simplify)
        simplified = ctx.pass_dir / "simplified.onnx"
        onnx.save(model, str(simplified))
        final = ctx.pass_dir / "model.onnx"
        if cfg.ort_level == "disabled":
            final.write_bytes(simplified.read_bytes())
        else:
            ort_optimize(simplified, final, cfg.ort_level)
        model = onnx.load(str(final))
        compacted = compact_dft_bases(model) if cfg.compact_dft else 0
        prelus = rewrite_prelu(model) if cfg.fast_prelu else 0
        del model.graph.value_info[:]  # shape annotations: ONNX Runtime re-infers them
        drop_unused_opsets(model)
        onnx.checker.check_model(model)
        props = {
            "secompile.model": artifact.info.name,
            "secompile.sample_rate": str(artifact.info.sample_rate),
            "secompile.min_samples": str(artifact.info.min_samples),
            "secompile.stft": stft_placement,
        }
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(final))
        metrics = {
            "opset": opset,
            "nodes_exported": nodes_exported,
            "nodes_final": len(model.graph.node),
            "simplifier": simplifier,
            "ort_offline_level": cfg.ort_level,
            "stft": stft_placement,
            "dft_bases_compacted": compacted,
            "prelu_rewritten": prelus,
            "size_bytes": final.stat().st_size,
        }
        metadata = {"opset": opset, "input": INPUT_NAME, "output": OUTPUT_NAME,
                    "stft": stft_placement}
        new = artifact.derive(self.name, format="onnx", module=None, path=final, metadata=metadata)
        return PassResult(new, True, metrics)
