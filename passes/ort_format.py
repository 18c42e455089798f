"""``ort-format``: write ONNX Runtime's mobile ``.ort`` model and its reduced-operator config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secompile.calibration.metrics import si_sdr
from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import PassError
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.lowering.onnx_export import quiet_ort_tools
from secompile.compiler.runtime.runners import OrtRunner, session_options

ORT_FILE = "model.ort"
OPERATORS_FILE = "model.required_operators.config"
LEVELS = ("basic", "extended")


@dataclass(frozen=True)
class OrtFormatConfig(PassConfig):
    """Options of ``ort-format``: the graph optimizations baked into the ``.ort`` file, and the
    SI-SDR its output must keep against the ``.onnx`` output on the parity clip. (An INT8
    graph run with other kernels than the ``.onnx`` session picks, e.g. without x86's NCHWc
    layout, may round a requantization differently: a tiny, not a zero, difference.)"""

    optimization: str = "extended"
    min_agreement_db: float = 60.0

    def check(self) -> None:
        if self.optimization not in LEVELS:
            raise ValueError(f"optimization must be one of {LEVELS}, got {self.optimization!r}")
        if not self.min_agreement_db > 0:
            raise ValueError(f"min_agreement_db must be > 0, got {self.min_agreement_db}")


class OrtFormat(Pass):
    """Convert the ONNX artifact to ONNX Runtime's ``.ort`` format for mobile and minimal builds.

    Rewrite rules: none on the artifact (``model.onnx`` ships unchanged); side outputs
    ``model.ort`` (graph optimized at ``optimization`` level, which stays portable across CPU
    architectures: the x86-only NCHWc layout is not baked in) and
    ``model.required_operators.config``, the operator list that ONNX Runtime's
    ``--include_ops_by_config`` build option takes to compile a runtime with only these
    operators. The ``.ort`` file is loaded back and its output must agree with the ``.onnx``
    output on the parity clip to ``min_agreement_db`` SI-SDR.
    """

    name = "ort-format"
    Config = OrtFormatConfig
    input_formats = ("onnx",)
    summary = "write model.ort (ORT mobile format) and its reduced-operator build config"
    checks_parity = False  # the artifact is unchanged; the .ort file is proven below

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        import onnxruntime as ort
        from onnxruntime.tools.ort_format_model import create_config_from_models

        cfg: OrtFormatConfig = self.config
        target = ctx.pass_dir / ORT_FILE
        options = session_options(1)
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[cfg.optimization]
        options.optimized_model_filepath = str(target)
        options.add_session_config_entry("session.save_model_format", "ORT")
        try:
            ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise PassError(self.name, f"ONNX Runtime could not write the .ort model: {exc}") \
                from exc
        config = ctx.pass_dir / OPERATORS_FILE
        with quiet_ort_tools():
            create_config_from_models([target], config, enable_type_reduction=False)
        clip = np.asarray(ctx.parity_audio, np.float32)
        expected = OrtRunner(artifact.path, ctx.threads)(clip)
        got = OrtRunner(target, ctx.threads)(clip)
        max_abs = float(np.max(np.abs(expected - got)))
        agreement = si_sdr(got[0], expected[0])
        if not agreement >= cfg.min_agreement_db:
            raise PassError(self.name, f"{ORT_FILE} output is {agreement:.1f} dB SI-SDR from "
                                       f"model.onnx's ({max_abs:.3g} max abs); needs "
                                       f">= {cfg.min_agreement_db} dB")
        operators = [line.strip() for line in config.read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
        metrics = {
            "file": ORT_FILE, "size_bytes": target.stat().st_size,
            "onnx_size_bytes": artifact.path.stat().st_size, "optimization": cfg.optimization,
            "operators_config": OPERATORS_FILE, "operator_lines": operators,
            "max_abs_vs_onnx": max_abs, "agreement_db": round(agreement, 2),
        }
        return PassResult(artifact, False, metrics, files=(target, config))
