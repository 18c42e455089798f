"""``export-onnx``: lower a torch model to an optimized, portable ONNX file."""

from __future__ import annotations

from dataclasses import dataclass

from secompile.compiler.analysis.graph import example_batch
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.lowering.onnx_export import (
    check_export_options,
    export_torchscript,
    finish_export,
)

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
        export_torchscript(module, (example,), raw, opset, [INPUT_NAME], [OUTPUT_NAME],
                           {INPUT_NAME: {0: "batch", 1: "samples"},
                            OUTPUT_NAME: {0: "batch", 1: "samples"}})
        final = ctx.pass_dir / "model.onnx"
        props = {
            "secompile.model": artifact.info.name,
            "secompile.sample_rate": str(artifact.info.sample_rate),
            "secompile.min_samples": str(artifact.info.min_samples),
            "secompile.stft": stft_placement,
        }
        _, steps = finish_export(raw, final, cfg.simplify, cfg.ort_level, cfg.compact_dft,
                                 cfg.fast_prelu, props)
        metrics = {
            "opset": opset,
            "nodes_exported": steps["nodes_exported"],
            "nodes_final": steps["nodes_final"],
            "simplifier": steps["simplifier"],
            "ort_offline_level": cfg.ort_level,
            "stft": stft_placement,
            "dft_bases_compacted": steps["dft_bases_compacted"],
            "prelu_rewritten": steps["prelu_rewritten"],
            "size_bytes": final.stat().st_size,
        }
        metadata = {"opset": opset, "input": INPUT_NAME, "output": OUTPUT_NAME,
                    "stft": stft_placement}
        new = artifact.derive(self.name, format="onnx", module=None, path=final, metadata=metadata)
        return PassResult(new, True, metrics)
