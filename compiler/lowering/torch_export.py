"""``torch.export`` of enhancement models with a dynamic time axis, for AOTInductor and
TensorRT.

Two things stop a recurrent SE model from exporting with a dynamic number of frames, and this
module fixes both without touching the model's code:

* PyTorch decomposes ``aten::gru``/``aten::lstm`` into a Python loop over time steps while
  exporting, which specializes the sequence length to the example's (measured: GTCRN, NSNet2 and
  the default model all fail with ``Constraints violated``). :func:`opaque_rnns` replaces each
  ``nn.GRU``/``nn.LSTM`` by a call to a custom operator (``secompile::gru``,
  ``secompile::lstm``) whose kernel is PyTorch's own fused RNN (cuDNN on CUDA), so the graph
  keeps one node per RNN. AOTInductor calls such an operator through its proxy executor;
  TensorRT has no converter for it and leaves it to PyTorch (its op-coverage table shows it).
  Load an artifact that uses them after ``import secompile.compiler.lowering.torch_export``
  (which registers them).
* ``torch.stft`` specializes the length too; a :class:`~models.spectral.SpectralEnhancer` is
  exported with its convolutional STFT (the same transform, ``stft_impl="conv"``).

Reduced precision follows ``torch.autocast`` (:class:`MixedPrecision`): matrix products,
convolutions and RNNs run in FP16/BF16, while the ops autocast keeps in fp32 (logarithms,
powers, norms, reductions, softmax) stay fp32, and the STFT front end and inverse STFT of a
spectral model run entirely in fp32. Inputs and outputs are float32 waveforms ``[B, L]``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from secompile.calibration.metrics import si_sdr
from secompile.compiler.core.pass_base import PassConfig

if TYPE_CHECKING:
    from secompile.compiler.core.artifact import Artifact
    from secompile.compiler.core.context import PassContext

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
AOTI_FILE = "model_aoti.pt2"  # written by aot-inductor, measured by validate-gpu
TRT_FILE = "model_trt.ep"  # written by tensorrt, measured by validate-gpu


@torch.library.custom_op("secompile::gru", mutates_args=())
def gru_op(x: Tensor, hx: Tensor, weights: list[Tensor], has_biases: bool, num_layers: int,
           bidirectional: bool, batch_first: bool) -> tuple[Tensor, Tensor]:
    """PyTorch's fused GRU as one opaque operator (inference: no dropout)."""
    out, h = torch.gru(x, hx, weights, has_biases, num_layers, 0.0, False, bidirectional,
                       batch_first)
    return out.contiguous(), h.contiguous()


@gru_op.register_fake
def _gru_shape(x: Tensor, hx: Tensor, weights: list[Tensor], has_biases: bool, num_layers: int,
               bidirectional: bool, batch_first: bool) -> tuple[Tensor, Tensor]:
    directions = 2 if bidirectional else 1
    return x.new_empty((x.shape[0], x.shape[1], directions * hx.shape[-1])), torch.empty_like(hx)


@torch.library.custom_op("secompile::lstm", mutates_args=())
def lstm_op(x: Tensor, hx: Tensor, cx: Tensor, weights: list[Tensor], has_biases: bool,
            num_layers: int, bidirectional: bool,
            batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch's fused LSTM as one opaque operator (inference, no projection)."""
    out, h, c = torch.lstm(x, (hx, cx), weights, has_biases, num_layers, 0.0, False,
                           bidirectional, batch_first)
    return out.contiguous(), h.contiguous(), c.contiguous()


@lstm_op.register_fake
def _lstm_shape(x: Tensor, hx: Tensor, cx: Tensor, weights: list[Tensor], has_biases: bool,
                num_layers: int, bidirectional: bool,
                batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    directions = 2 if bidirectional else 1
    out = x.new_empty((x.shape[0], x.shape[1], directions * hx.shape[-1]))
    return out, torch.empty_like(hx), torch.empty_like(cx)


class OpaqueRNN(nn.Module):
    """An ``nn.GRU``/``nn.LSTM`` (same parameters, same results) that exports as one node.

    Under ``torch.autocast`` the input, state and weights are cast to the autocast dtype, as
    autocast does for PyTorch's own RNNs; the outputs keep that dtype.
    """

    def __init__(self, rnn: nn.GRU | nn.LSTM) -> None:
        super().__init__()
        if getattr(rnn, "proj_size", 0):
            raise ValueError("an LSTM with proj_size cannot be exported as an opaque RNN")
        self.rnn = rnn

    def forward(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None):
        rnn = self.rnn
        if x.dim() != 3:
            raise ValueError(f"OpaqueRNN needs a batched [B, T, F] or [T, B, F] input, got "
                             f"{tuple(x.shape)}")
        weights = [getattr(rnn, name) for name in rnn._flat_weights_names]
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weights = x.to(dtype), [w.to(dtype) for w in weights]
        states = 2 if rnn.bidirectional else 1
        batch = x.shape[0] if rnn.batch_first else x.shape[1]
        zeros = x.new_zeros(rnn.num_layers * states, batch, rnn.hidden_size)
        flags = (rnn.bias, rnn.num_layers, rnn.bidirectional, rnn.batch_first)
        if isinstance(rnn, nn.LSTM):
            h0, c0 = (zeros, zeros) if hx is None else (hx[0].to(x.dtype), hx[1].to(x.dtype))
            out, h, c = lstm_op(x, h0, c0, weights, *flags)
            return out, (h, c)
        h0 = zeros if hx is None else hx.to(x.dtype)
        return gru_op(x, h0, weights, *flags)


def opaque_rnns(module: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``module`` whose GRUs and LSTMs are :class:`OpaqueRNN`, and their count."""
    clone = copy.deepcopy(module)
    count = 0
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.GRU, nn.LSTM):
                setattr(parent, name, OpaqueRNN(child))
                count += 1
    return clone, count


class MixedPrecision(nn.Module):
    """Run ``model`` under ``torch.autocast(device, dtype)``; float32 waveforms in and out.

    For a spectral model only the spectrum-to-spectrum core is autocast: the STFT and the
    inverse STFT (overlap-add and window-envelope division) stay fp32. ``dtype=None`` is fp32.
    """

    def __init__(self, model: nn.Module, device: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.device_type = device
        self.dtype = dtype

    def forward(self, wav: Tensor) -> Tensor:
        model = self.model
        if self.dtype is None:
            return model(wav)
        spectral = hasattr(model, "analyse") and hasattr(model, "core")
        if not spectral:
            with torch.autocast(self.device_type, dtype=self.dtype):
                return model(wav).float()
        spec = model.analyse(wav)
        with torch.autocast(self.device_type, dtype=self.dtype):
            core = model.core(spec)
        return model.synthesise(core.float(), wav.shape[-1])


@dataclass(frozen=True)
class ShapeRange:
    """The input shapes an exported program accepts: ``[batch, hop * frames]``, both dynamic.

    The length is a whole number of hops: exporting a spectral model with a free length
    specializes it anyway (the frame count is ``length // hop``), so the contract says it and
    :class:`HopPadded` pads any other length with zeros and crops the output.
    """

    hop: int
    min_frames: int
    opt_frames: int
    max_frames: int
    max_batch: int

    def __post_init__(self) -> None:
        if not 0 < self.min_frames <= self.opt_frames <= self.max_frames:
            raise ValueError(f"need 0 < min_frames <= opt_frames <= max_frames, got "
                             f"{self.min_frames}, {self.opt_frames}, {self.max_frames}")
        if self.max_batch < 2:
            raise ValueError(f"max_batch must be >= 2, got {self.max_batch}")
        if self.hop < 1:
            raise ValueError(f"hop must be >= 1, got {self.hop}")

    def samples(self, frames: int) -> int:
        """Input length of ``frames`` hops."""
        return self.hop * frames

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form for manifests."""
        return {"hop": self.hop, "min_samples": self.samples(self.min_frames),
                "opt_samples": self.samples(self.opt_frames),
                "max_samples": self.samples(self.max_frames), "min_batch": 1,
                "max_batch": self.max_batch, "length_multiple_of": self.hop}


@dataclass(frozen=True)
class CompiledShapeConfig(PassConfig):
    """Options shared by the passes that compile an exported program: the accepted input
    lengths in STFT hops (``opt_frames``: the length to tune for), the largest batch, and the
    SI-SDR the compiled output must keep against the fp32 eager model on the parity inputs."""

    min_frames: int = 8
    opt_frames: int = 100
    max_frames: int = 6000
    max_batch: int = 32
    min_agreement_db: float = 30.0

    def check(self) -> None:
        ShapeRange(1, self.min_frames, self.opt_frames, self.max_frames, self.max_batch)
        if not self.min_agreement_db > 0:
            raise ValueError(f"min_agreement_db must be > 0, got {self.min_agreement_db}")

    def shapes(self, artifact: Artifact) -> ShapeRange:
        """The range for ``artifact`` (:func:`shape_range`)."""
        return shape_range(artifact, self.min_frames, self.opt_frames, self.max_frames,
                           self.max_batch)


class HopPadded:
    """Call a compiled model on any length: zero-pad ``[B, L]`` to a whole number of hops, run,
    crop back to ``L``. The padding changes only the last hop's reflection padding. The input
    is made contiguous: compiled code assumes the strides it was exported with."""

    def __init__(self, compiled, hop: int) -> None:
        self.compiled = compiled
        self.hop = hop

    def __call__(self, wav: Tensor) -> Tensor:
        length = wav.shape[-1]
        extra = -length % self.hop
        if extra:
            wav = torch.nn.functional.pad(wav, (0, extra))
        return self.compiled(wav.contiguous())[..., :length]


def exportable(module: nn.Module, device: str, precision: str) -> tuple[nn.Module, int]:
    """The module as it is exported: RNNs opaque, convolutional STFT, autocast to
    ``precision``, on ``device``, in eval mode; and the number of RNNs made opaque."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    model = module.with_stft_impl("conv") if hasattr(module, "with_stft_impl") else module
    model, rnns = opaque_rnns(model)
    wrapped = MixedPrecision(model, device, PRECISIONS[precision])
    return wrapped.to(device).eval(), rnns


def export_dynamic(model: nn.Module, shapes: ShapeRange,
                   device: str) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` (from :func:`exportable`) with dynamic batch and length.

    The example input is two clips of ``opt_frames`` hops (a size of 1 would be specialized).
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=shapes.max_batch)
    frames = Dim("frames", min=shapes.min_frames, max=shapes.max_frames)
    example = torch.randn(2, shapes.samples(shapes.opt_frames), device=device) * 0.1
    dynamic = {"wav": {0: batch, 1: shapes.hop * frames}}
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)


def export_program(pass_name: str, module: nn.Module, shapes: ShapeRange, device: str,
                   precision: str) -> tuple[torch.export.ExportedProgram, int]:
    """:func:`exportable` then :func:`export_dynamic`; a failure is a ``PassError`` of
    ``pass_name`` naming the cause. Returns the program and the number of opaque RNNs."""
    from secompile.compiler.core.errors import PassError

    model, rnns = exportable(module, device, precision)
    try:
        return export_dynamic(model, shapes, device), rnns
    except Exception as exc:  # torch.export raises many types; name the pass and the cause
        raise PassError(pass_name, f"torch.export failed: {str(exc).splitlines()[0]}") from exc


def worst_agreement(pass_name: str, checks: list[dict[str, Any]], floor_db: float,
                    what: str) -> float:
    """The lowest agreement of :func:`parity_checks`; a ``PassError`` of ``pass_name`` when it
    is under ``floor_db`` (``what`` names the artifact and how it was made)."""
    from secompile.compiler.core.errors import PassError

    worst = min(c["agreement_db"] for c in checks)
    if not worst >= floor_db:
        raise PassError(pass_name, f"{what} keeps {worst:.1f} dB SI-SDR against the fp32 "
                                   f"model; needs >= {floor_db} dB")
    return worst


def shape_range(artifact: Artifact, min_frames: int, opt_frames: int, max_frames: int,
                max_batch: int) -> ShapeRange:
    """The exported shape contract of ``artifact``: lengths in hops of its STFT (one sample for
    a waveform model)."""
    stft = getattr(artifact.module, "stft", None)
    hop = getattr(stft, "hop", None) or (artifact.info.stft or {}).get("hop", 1)
    return ShapeRange(int(hop), min_frames, opt_frames, max_frames, max_batch)


def parity_checks(module: nn.Module, compiled: Callable[[Tensor], Tensor], ctx: PassContext,
                  shapes: ShapeRange, device: str) -> list[dict[str, Any]]:
    """``compiled`` against a copy of the fp32 ``module`` on ``device`` (TF32 off) on the
    :func:`parity_inputs`: one row per input with its shape, SI-SDR agreement and max abs."""
    from secompile.compiler.runtime.gpu import strict_fp32

    reference = copy.deepcopy(module).to(device).eval()
    strict = strict_fp32() if device == "cuda" else contextlib.nullcontext()
    rows = []
    with strict, torch.inference_mode():
        for x in parity_inputs(ctx, shapes, device):
            db, max_abs = agreement(reference(x), compiled(x))
            rows.append({"shape": list(x.shape), "agreement_db": round(db, 2),
                         "max_abs": max_abs})
    return rows


def agreement(reference: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """SI-SDR (dB) of ``got`` against ``reference`` over the whole batch, and max abs error."""
    ref = reference.detach().float().cpu().numpy().reshape(-1)
    out = got.detach().float().cpu().numpy().reshape(-1)
    return si_sdr(out, ref), float(np.max(np.abs(out - ref)))


def parity_inputs(ctx: PassContext, shapes: ShapeRange, device: str) -> list[torch.Tensor]:
    """The parity clip as exported (a whole number of hops), and a batch of two shorter clips
    of another length, to show both dynamic axes work."""
    clip = torch.from_numpy(np.asarray(ctx.parity_audio, np.float32)).to(device)
    whole = clip[:, : clip.shape[1] - clip.shape[1] % shapes.hop]
    short = whole[:, : max(shapes.samples(shapes.min_frames), (whole.shape[1] * 3 // 5)
                           // shapes.hop * shapes.hop)]
    return [whole, torch.cat([short, short.flip(-1)])]
