"""``aot-inductor``: a compiled PyTorch artifact (``torch.export`` + AOTInductor package)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import TargetError
from secompile.compiler.core.pass_base import Pass, PassResult
from secompile.compiler.lowering.torch_export import (
    AOTI_FILE,
    PRECISIONS,
    CompiledShapeConfig,
    HopPadded,
    export_program,
    parity_checks,
    worst_agreement,
)

DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class AotInductorConfig(CompiledShapeConfig):
    """Options of ``aot-inductor``: device and precision of the compiled code, plus the shape
    range and agreement floor of :class:`~compiler.lowering.torch_export.CompiledShapeConfig`."""

    device: str = "cuda"
    precision: str = "fp16"

    def check(self) -> None:
        super().check()
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got "
                             f"{self.precision!r}")


class AotInductor(Pass):
    """Write ``model_aoti.pt2``: the model ahead-of-time compiled by TorchInductor.

    Rewrite rules (on a copy; the pipeline's model passes through unchanged):

    * every ``nn.GRU``/``nn.LSTM`` becomes one opaque operator running PyTorch's fused RNN
      (``compiler.lowering.torch_export``), so the time axis stays dynamic;
    * a spectral model uses its convolutional STFT; under ``precision`` fp16/bf16 its core runs
      under ``torch.autocast`` (matrix products, convolutions and RNNs in reduced precision,
      autocast's fp32 ops such as log, pow, norms and reductions in fp32), the STFT and inverse
      STFT in fp32; inputs and outputs are float32;
    * ``torch.export`` with a dynamic batch (1..``max_batch``) and length
      (``min_frames``..``max_frames`` hops), then ``aoti_compile_and_package`` for ``device``.

    The package is loaded back and run on the parity clip and on a batch of two clips of
    another length; its output must keep ``min_agreement_db`` SI-SDR against the fp32 eager
    model on the same device. Load it with ``import secompile.compiler.lowering.torch_export``
    (registers the RNN operators) and ``torch._inductor.aoti_load_package``; lengths must be
    whole hops (``compiler.lowering.torch_export.HopPadded`` pads others).
    """

    name = "aot-inductor"
    Config = AotInductorConfig
    input_formats = ("torch",)
    summary = "write model_aoti.pt2: torch.export + AOTInductor, fp16/bf16, dynamic length"
    checks_parity = False  # the artifact is unchanged; the package is proven below

    def requires_cuda(self) -> bool:
        return self.config.device == "cuda"

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        device = (torch.cuda.get_device_name() if self.requires_cuda()
                  and torch.cuda.is_available() else "cpu")
        return {"torch": torch.__version__, "device": device}

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: AotInductorConfig = self.config
        if self.requires_cuda() and not torch.cuda.is_available():
            raise TargetError("aot-inductor with device=cuda needs a CUDA GPU; this machine has "
                              "none (use device=cpu for a CPU package)")
        shapes = cfg.shapes(artifact)
        started = time.perf_counter()
        program, rnns = export_program(self.name, artifact.module, shapes, cfg.device,
                                       cfg.precision)
        exported = time.perf_counter()
        path = ctx.pass_dir / AOTI_FILE
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        compiled = time.perf_counter()
        package = HopPadded(torch._inductor.aoti_load_package(str(path)), shapes.hop)
        checks = parity_checks(artifact.module, package, ctx, shapes, cfg.device)
        worst = worst_agreement(self.name, checks, cfg.min_agreement_db,
                                f"{AOTI_FILE} ({cfg.precision} on {cfg.device})")
        metrics = {
            "file": AOTI_FILE, "device": cfg.device, "precision": cfg.precision,
            "shapes": shapes.as_dict(), "opaque_rnns": rnns,
            "export_seconds": round(exported - started, 2),
            "compile_seconds": round(compiled - exported, 2),
            "size_bytes": path.stat().st_size, "agreement_db": worst, "parity": checks,
            "torch": torch.__version__,
            "load": ("import secompile.compiler.lowering.torch_export; "
                     "torch._inductor.aoti_load_package(path)"),
        }
        return PassResult(artifact, False, metrics, files=(path,))
