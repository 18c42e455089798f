"""The project's shipped default model: ``TinyCRN``, a small causal convolutional recurrent network.

It works on the one-sided complex STFT of 16 kHz audio (512-point FFT, hop 256, square-root
Hann window), laid out ``[B, 257, T, 2]`` as :class:`models.spectral.SpectralEnhancer` expects,
and returns the spectrum multiplied by a real-valued mask in ``[0, 1]`` (noisy phase is kept).

Data flow of the core:

* feature: power-law compressed magnitude ``|X| ** 0.3``, one channel ``[B, 1, T, 257]``;
* encoder: four ``Conv2d + BatchNorm2d + PReLU`` blocks, each halving frequency
  (257 -> 129 -> 65 -> 33 -> 17); the time kernel is 2 with one frame of *past* zero padding,
  so the encoder sees the current and the previous frame and never a future one;
* bottleneck: channels x frequency flattened per frame, a unidirectional GRU over time and a
  linear projection back, with a residual connection;
* decoder: four ``ConvTranspose2d`` blocks with time kernel 1 that double frequency again, each
  fed the previous decoder output plus (additive skip) the mirrored encoder output; all but the
  last are followed by ``BatchNorm2d + PReLU``, the last gives the mask logit (sigmoid).

Every op is causal in time, there is no Python loop over time, and each convolution followed by
batch norm is its own module, so a compiler pass can fold the batch norms. The module exports
with ``torch.onnx.export(..., dynamo=False, opset_version=17)`` with a dynamic time axis.

The shipped checkpoint, :data:`DEFAULT_WEIGHTS`, was trained by :mod:`models.train` on synthetic
data only (espeak-ng speech and generated noise, :mod:`calibration.synthetic`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from secompile.models.spectral import SpectralEnhancer, StftSpec

SAMPLE_RATE = 16000
STFT = StftSpec(n_fft=512, hop=256, window="sqrt_hann")
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "secompile_default.pt"


class EncoderBlock(nn.Module):
    """Causal ``Conv2d`` (time kernel 2, past padding; frequency stride 2), BN, PReLU."""

    def __init__(self, c_in: int, c_out: int, k_freq: int) -> None:
        super().__init__()
        # ZeroPad2d takes (freq_left, freq_right, time_past, time_future).
        self.pad = nn.ZeroPad2d((k_freq // 2, k_freq // 2, 1, 0))
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=(2, k_freq), stride=(1, 2))
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, T, F]`` to ``[B, C_out, T, (F + 1) // 2]``."""
        return self.act(self.bn(self.conv(self.pad(x))))


class DecoderBlock(nn.Module):
    """``ConvTranspose2d`` (time kernel 1; frequency stride 2), then BN and PReLU unless last."""

    def __init__(self, c_in: int, c_out: int, k_freq: int, last: bool = False) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(
            c_in, c_out, kernel_size=(1, k_freq), stride=(1, 2), padding=(0, k_freq // 2)
        )
        self.bn = nn.Identity() if last else nn.BatchNorm2d(c_out)
        self.act = nn.Identity() if last else nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, T, F]`` to ``[B, C_out, T, 2F - 1]``."""
        return self.act(self.bn(self.deconv(x)))


class TinyCRN(nn.Module):
    """Causal CRN mask estimator, spectrum ``[B, F, T, 2]`` to masked spectrum ``[B, F, T, 2]``.

    ``channels`` are the encoder output channels (the decoder mirrors them), ``hidden`` the GRU
    width, ``n_bins`` the number of STFT bins (``2**k + 1``), ``compress`` the magnitude
    exponent of the input feature.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 32, 16),
        hidden: int = 128,
        n_bins: int = STFT.n_bins,
        compress: float = 0.3,
    ) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.compress = compress
        widths = (1, *channels)
        kernels = [5] + [3] * (len(channels) - 1)
        self.encoder = nn.ModuleList(
            EncoderBlock(widths[i], widths[i + 1], kernels[i]) for i in range(len(channels))
        )
        f = n_bins
        for _ in channels:
            f = (f + 1) // 2
        flat = channels[-1] * f
        self.gru = nn.GRU(flat, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, flat)
        self.decoder = nn.ModuleList(
            DecoderBlock(widths[i + 1], widths[i], kernels[i], last=i == 0)
            for i in reversed(range(len(channels)))
        )

    def mask(self, spec: Tensor) -> Tensor:
        """The mask ``[B, F, T, 1]`` in ``[0, 1]`` for spectrum ``[B, F, T, 2]``."""
        mag = (spec.pow(2).sum(-1) + 1e-12).pow(0.5 * self.compress)  # |X| ** compress
        x = mag.transpose(1, 2).unsqueeze(1)  # [B, 1, T, F]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        b, c, t, f = x.shape
        flat = x.permute(0, 2, 1, 3).reshape(b, t, c * f)
        y, _ = self.gru(flat)
        y = self.proj(y) + flat
        x = y.reshape(b, t, c, f).permute(0, 2, 1, 3)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x + skip)
        return torch.sigmoid(x).squeeze(1).transpose(1, 2).unsqueeze(-1)

    def forward(self, spec: Tensor) -> Tensor:
        """Masked spectrum ``[B, F, T, 2]``."""
        return spec * self.mask(spec)


def default_core() -> TinyCRN:
    """A randomly initialised ``TinyCRN`` with the default configuration."""
    return TinyCRN()


def build_default(weights: Path | None = DEFAULT_WEIGHTS) -> SpectralEnhancer:
    """The default waveform model ``[B, L] -> [B, L]`` in eval mode.

    ``weights`` is a ``state_dict`` file of the core, loaded strictly; ``None`` keeps the random
    initialisation.
    """
    core = default_core()
    if weights is not None:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        core.load_state_dict(state, strict=True)
    return SpectralEnhancer(core, STFT, SAMPLE_RATE).eval()
