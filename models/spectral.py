"""STFT front-ends and the waveform wrapper shared by spectral-masking enhancement models.

Most SE models (GTCRN, the shipped default model) work on a one-sided complex spectrum laid out
as ``[B, F, T, 2]`` (real, imaginary). :class:`SpectralEnhancer` wraps such a *core* into a
waveform-in, waveform-out module (``[B, L] -> [B, L]``), which is the form the compiler times,
validates and exports.

Two interchangeable STFT implementations exist, chosen by ``SpectralEnhancer.stft_impl``:

``"torch"``
    ``torch.stft``/``torch.istft``: what a model author runs in eager PyTorch; the reference.
``"conv"``
    the DFT written as a strided ``conv1d`` with a windowed cosine/sine basis and the inverse
    as a ``conv_transpose1d`` overlap-add divided by the window envelope. Every op in it is
    plain ONNX (Pad, Conv, ConvTranspose, Div, Slice), so the STFT lives *inside* the exported
    graph and ONNX Runtime runs it as one more convolution. Measured on these machines this is
    faster than ONNX ``STFT`` and than a NumPy STFT outside the graph, and the TorchScript
    exporter cannot export complex ``torch.stft`` at all. Parity with ``"torch"`` is ~1e-6.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WINDOWS = ("hann", "sqrt_hann")
STFT_IMPLS = ("torch", "conv")


@dataclass(frozen=True)
class StftSpec:
    """Short-time Fourier transform settings of a spectral model (centre padding, reflect)."""

    n_fft: int
    hop: int
    window: str = "sqrt_hann"

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if not 0 < self.hop <= self.n_fft:
            raise ValueError(f"hop must be in (0, n_fft], got hop={self.hop} n_fft={self.n_fft}")

    @property
    def n_bins(self) -> int:
        """Number of one-sided frequency bins."""
        return self.n_fft // 2 + 1

    def window_tensor(self) -> Tensor:
        """The analysis (= synthesis) window, periodic."""
        hann = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        return (hann.sqrt() if self.window == "sqrt_hann" else hann).float()

    def as_dict(self) -> dict:
        """Plain-data form for manifests."""
        return {"n_fft": self.n_fft, "hop": self.hop, "window": self.window, "center": True}


def _dft_basis(spec: StftSpec) -> tuple[Tensor, Tensor]:
    """Analysis and synthesis kernels, each ``[2F, 1, n_fft]`` (real rows then imaginary rows)."""
    n = torch.arange(spec.n_fft, dtype=torch.float64)
    k = torch.arange(spec.n_bins, dtype=torch.float64)
    phase = 2 * math.pi * torch.outer(k, n) / spec.n_fft
    window = spec.window_tensor().double()
    analysis = torch.cat([torch.cos(phase), -torch.sin(phase)]) * window
    # One-sided inverse real DFT: bins other than DC and Nyquist count twice.
    weight = torch.full((spec.n_bins, 1), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if spec.n_fft % 2 == 0:
        weight[-1] = 1.0
    synthesis = torch.cat([torch.cos(phase) * weight, -torch.sin(phase) * weight])
    synthesis = synthesis * window / spec.n_fft
    return analysis.float().unsqueeze(1), synthesis.float().unsqueeze(1)


class ConvStft(nn.Module):
    """STFT and inverse STFT as fixed convolutions; exportable to plain ONNX."""

    def __init__(self, spec: StftSpec) -> None:
        super().__init__()
        self.spec = spec
        analysis, synthesis = _dft_basis(spec)
        self.register_buffer("analysis", analysis, persistent=False)
        self.register_buffer("synthesis", synthesis, persistent=False)
        self.register_buffer(
            "window_sq", spec.window_tensor().pow(2).view(1, 1, -1), persistent=False
        )

    def forward_stft(self, wav: Tensor, pad_mode: str = "reflect") -> Tensor:
        """``[B, L]`` waveform to ``[B, F, T, 2]`` spectrum, equal to ``torch.stft(center=True)``
        with the same ``pad_mode``."""
        pad = self.spec.n_fft // 2
        x = F.pad(wav.unsqueeze(1), (pad, pad), mode=pad_mode)
        frames = F.conv1d(x, self.analysis, stride=self.spec.hop)  # [B, 2F, T]
        b, _, t = frames.shape
        return frames.view(b, 2, self.spec.n_bins, t).permute(0, 2, 3, 1)

    def forward_istft(self, spec: Tensor, length: int) -> Tensor:
        """``[B, F, T, 2]`` spectrum to a ``[B, length]`` waveform, as ``torch.istft``."""
        b, f, t, _ = spec.shape
        frames = spec.permute(0, 3, 1, 2).reshape(b, 2 * f, t)
        wav = F.conv_transpose1d(frames, self.synthesis, stride=self.spec.hop)
        ones = torch.ones_like(frames[:1, :1, :])
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.spec.hop)
        start = self.spec.n_fft // 2
        wav = wav[:, 0, start : start + length] / envelope[:, 0, start : start + length]
        return wav


class SpectralEnhancer(nn.Module):
    """Waveform wrapper: STFT, a spectrum-to-spectrum ``core``, inverse STFT.

    ``forward(wav [B, L]) -> [B, L]``; the output has the input's length. ``center_pad`` is
    how the centred STFT pads the signal's ends: ``"reflect"`` (``torch.stft``'s default, what
    models are trained with) or ``"constant"`` (zeros: silence before and after the signal,
    which is what a live stream sees, so it is the offline reference of a streaming artifact).
    """

    center_pad = "reflect"

    def __init__(
        self, core: nn.Module, stft: StftSpec, sample_rate: int, stft_impl: str = "torch"
    ) -> None:
        super().__init__()
        if stft_impl not in STFT_IMPLS:
            raise ValueError(f"stft_impl must be one of {STFT_IMPLS}, got {stft_impl!r}")
        self.core = core
        self.stft = stft
        self.sample_rate = sample_rate
        self.stft_impl = stft_impl
        self.conv_stft = ConvStft(stft)
        self.register_buffer("window", stft.window_tensor(), persistent=False)

    def with_stft_impl(self, stft_impl: str) -> SpectralEnhancer:
        """A deep copy of this wrapper that uses ``stft_impl``."""
        if stft_impl not in STFT_IMPLS:
            raise ValueError(f"stft_impl must be one of {STFT_IMPLS}, got {stft_impl!r}")
        clone = copy.deepcopy(self)
        clone.stft_impl = stft_impl
        return clone

    def analyse(self, wav: Tensor) -> Tensor:
        """Waveform ``[B, L]`` to spectrum ``[B, F, T, 2]``."""
        if self.stft_impl == "conv":
            return self.conv_stft.forward_stft(wav, self.center_pad)
        spec = torch.stft(
            wav, self.stft.n_fft, self.stft.hop, self.stft.n_fft, self.window,
            center=True, pad_mode=self.center_pad, return_complex=True,
        )
        return torch.view_as_real(spec)

    def synthesise(self, spec: Tensor, length: int) -> Tensor:
        """Spectrum ``[B, F, T, 2]`` to waveform ``[B, length]``."""
        if self.stft_impl == "conv":
            return self.conv_stft.forward_istft(spec, length)
        return torch.istft(
            torch.view_as_complex(spec.contiguous()), self.stft.n_fft, self.stft.hop,
            self.stft.n_fft, self.window, center=True, length=length,
        )

    def forward(self, wav: Tensor) -> Tensor:
        """Enhance a batch of waveforms ``[B, L]``."""
        return self.synthesise(self.core(self.analyse(wav)), wav.shape[-1])
