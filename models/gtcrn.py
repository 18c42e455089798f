"""GTCRN speech-enhancement network, re-implemented from its description.

Reference: X. Rong, T. Sun, X. Zhang, Y. Hu, C. Zhu, J. Lu, "GTCRN: A speech enhancement model
requiring ultralow computational resources", ICASSP 2024.

The network works on the complex STFT of 16 kHz audio (512-point FFT, hop 256, square-root Hann
window, centred frames), given as a real tensor ``[B, 257, T, 2]`` (real, imaginary). It
estimates a complex ratio mask and returns the masked spectrum in the same layout.

Outline of the data flow:

* Three input features per time-frequency bin: magnitude, real part and imaginary part.
* Band compression: the 65 lowest bins are kept as they are and the remaining 192 are mixed
  into 64 ERB-spaced bands by a fixed matrix, giving 129 frequency positions. A second fixed
  matrix expands the 64 bands back to 192 bins at the end.
* Subband feature extraction (SFE): every channel is widened with its two frequency neighbours
  (3 taps, zero padded), tripling the channel count.
* Encoder: two strided (1, 5) convolutions (129 -> 65 -> 33 frequency positions) followed by
  three grouped temporal convolution blocks (GT-Conv) with time dilations 1, 2 and 5.
* Two grouped dual-path RNN blocks: a bidirectional GRU along frequency inside each frame, then a
  causal GRU along time for each frequency position, each with a linear layer, layer norm and a
  residual connection. Both split the 16 features into two groups of 8 with separate GRUs.
* Decoder: the mirror image of the encoder with transposed convolutions and additive skip
  connections from the encoder, ending in a 2-channel tanh output: the mask.

A GT-Conv block splits its channels into two halves. One half passes through SFE, a pointwise
convolution, a causal dilated depthwise convolution, another pointwise convolution and temporal
recurrent attention (TRA: a GRU over the per-frame energy of each channel produces a sigmoid gain
per channel and frame). The halves are then interleaved channel by channel (channel shuffle).

Everything here is written to trace cleanly into ONNX (opset 17) with a dynamic time axis: no
unfold, no Python loops over time and every convolution that is followed by batch norm is a
separate ``Conv2d``/``ConvTranspose2d`` + ``BatchNorm2d`` pair, so that the batch norm can be
folded later.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
WINDOW = "sqrt_hann"

N_BINS = N_FFT // 2 + 1  # 257
LOW_BINS = 65  # bins kept uncompressed by the ERB stage
N_BANDS = 64  # ERB bands replacing the upper 192 bins


class ERB(nn.Module):
    """Fixed ERB band compression (257 -> 129 positions) and its expansion (129 -> 257)."""

    def __init__(self) -> None:
        super().__init__()
        high = N_BINS - LOW_BINS
        self.erb_fc = nn.Linear(high, N_BANDS, bias=False)
        self.ierb_fc = nn.Linear(N_BANDS, high, bias=False)

    def bm(self, x: Tensor) -> Tensor:
        """Compress the last (frequency) axis from 257 bins to 65 + 64 positions."""
        return torch.cat([x[..., :LOW_BINS], self.erb_fc(x[..., LOW_BINS:])], dim=-1)

    def bs(self, x: Tensor) -> Tensor:
        """Expand the last (frequency) axis from 65 + 64 positions back to 257 bins."""
        return torch.cat([x[..., :LOW_BINS], self.ierb_fc(x[..., LOW_BINS:])], dim=-1)


def sfe(x: Tensor) -> Tensor:
    """Subband feature extraction: ``[B, C, T, F] -> [B, 3C, T, F]``.

    Output channel ``3c + k`` holds channel ``c`` shifted by ``k - 1`` bins (zero padded), the
    same ordering as an unfold with kernel (1, 3) and padding (0, 1).
    """
    b, c, t, f = x.shape
    xp = F.pad(x, (1, 1))
    taps = torch.stack([xp[..., :-2], xp[..., 1:-1], xp[..., 2:]], dim=2)  # [B, C, 3, T, F]
    return taps.reshape(b, c * 3, t, f)


class ConvBlock(nn.Module):
    """(Transposed) convolution + batch norm + activation (PReLU or tanh)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        groups: int = 1,
        transpose: bool = False,
        use_tanh: bool = False,
    ) -> None:
        super().__init__()
        conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.conv = conv_cls(in_ch, out_ch, (1, 5), stride=(1, 2), padding=(0, 2), groups=groups)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act: nn.Module = nn.Tanh() if use_tanh else nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class TRA(nn.Module):
    """Temporal recurrent attention: a per-channel, per-frame sigmoid gain from frame energy."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.att_gru = nn.GRU(channels, channels * 2, batch_first=True)
        self.att_fc = nn.Linear(channels * 2, channels)

    def forward(self, x: Tensor) -> Tensor:
        energy = x.pow(2).mean(dim=-1).transpose(1, 2)  # [B, T, C]
        h, _ = self.att_gru(energy)
        gain = torch.sigmoid(self.att_fc(h)).transpose(1, 2)  # [B, C, T]
        return x * gain.unsqueeze(-1)


class GTConvBlock(nn.Module):
    """Grouped temporal convolution block (GT-Conv) with a causal dilated depthwise conv."""

    def __init__(self, channels: int, hidden: int, dilation: int, transpose: bool = False) -> None:
        super().__init__()
        half = channels // 2
        conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.time_pad = 2 * dilation  # (kernel 3 - 1) * dilation frames of causal context
        # A transposed conv shrinks its input by 2 * padding - 2 * dilation; padding 2 * d makes
        # the output length equal to the unpadded input length, like the forward conv with 0.
        depth_pad = (2 * dilation, 1) if transpose else (0, 1)
        self.point_conv1 = conv_cls(half * 3, hidden, 1)
        self.point_bn1 = nn.BatchNorm2d(hidden)
        self.point_act = nn.PReLU()
        self.depth_conv = conv_cls(
            hidden, hidden, 3, padding=depth_pad, dilation=(dilation, 1), groups=hidden
        )
        self.depth_bn = nn.BatchNorm2d(hidden)
        self.depth_act = nn.PReLU()
        self.point_conv2 = conv_cls(hidden, half, 1)
        self.point_bn2 = nn.BatchNorm2d(half)
        self.tra = TRA(half)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = torch.chunk(x, 2, dim=1)
        h = self.point_act(self.point_bn1(self.point_conv1(sfe(x1))))
        h = F.pad(h, (0, 0, self.time_pad, 0))
        h = self.depth_act(self.depth_bn(self.depth_conv(h)))
        h = self.tra(self.point_bn2(self.point_conv2(h)))
        # channel shuffle: interleave processed and bypassed halves (h0, x2_0, h1, x2_1, ...)
        b, c, t, f = h.shape
        return torch.stack([h, x2], dim=2).reshape(b, 2 * c, t, f)


class GroupedRNN(nn.Module):
    """Two GRUs, each on one half of the feature axis, outputs concatenated."""

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool) -> None:
        super().__init__()
        half = input_size // 2
        self.rnn1 = nn.GRU(half, hidden_size, batch_first=True, bidirectional=bidirectional)
        self.rnn2 = nn.GRU(half, hidden_size, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = torch.chunk(x, 2, dim=-1)
        return torch.cat([self.rnn1(x1)[0], self.rnn2(x2)[0]], dim=-1)


class DPGRNN(nn.Module):
    """Grouped dual-path RNN: bidirectional along frequency, causal along time."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.intra_rnn = GroupedRNN(channels, channels // 4, bidirectional=True)
        self.intra_fc = nn.Linear(channels, channels)
        self.intra_ln = nn.LayerNorm((width, channels), eps=1e-8)
        self.inter_rnn = GroupedRNN(channels, channels // 2, bidirectional=False)
        self.inter_fc = nn.Linear(channels, channels)
        self.inter_ln = nn.LayerNorm((width, channels), eps=1e-8)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, f = x.shape
        x = x.permute(0, 2, 3, 1)  # [B, T, F, C]
        intra = self.intra_fc(self.intra_rnn(x.reshape(b * t, f, c)))
        x = x + self.intra_ln(intra.reshape(b, t, f, c))
        seq = x.transpose(1, 2).reshape(b * f, t, c)  # one sequence over time per bin
        inter = self.inter_fc(self.inter_rnn(seq)).reshape(b, f, t, c).transpose(1, 2)
        x = x + self.inter_ln(inter)
        return x.permute(0, 3, 1, 2)  # [B, C, T, F]


class Encoder(nn.Module):
    """Two strided conv blocks (9 -> 16 channels, 129 -> 33 bins) and three GT-Conv blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.en_convs = nn.ModuleList(
            [
                ConvBlock(9, 16),
                ConvBlock(16, 16, groups=2),
                GTConvBlock(16, 16, dilation=1),
                GTConvBlock(16, 16, dilation=2),
                GTConvBlock(16, 16, dilation=5),
            ]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for layer in self.en_convs:
            x = layer(x)
            skips.append(x)
        return x, skips


class Decoder(nn.Module):
    """Mirror of the encoder with transposed convolutions and additive skips; tanh output."""

    def __init__(self) -> None:
        super().__init__()
        self.de_convs = nn.ModuleList(
            [
                GTConvBlock(16, 16, dilation=5, transpose=True),
                GTConvBlock(16, 16, dilation=2, transpose=True),
                GTConvBlock(16, 16, dilation=1, transpose=True),
                ConvBlock(16, 16, groups=2, transpose=True),
                ConvBlock(16, 2, transpose=True, use_tanh=True),
            ]
        )

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        for layer, skip in zip(self.de_convs, reversed(skips), strict=True):
            x = layer(x + skip)
        return x


class GTCRN(nn.Module):
    """GTCRN: complex spectrum ``[B, 257, T, 2]`` in, enhanced spectrum of the same shape out."""

    def __init__(self) -> None:
        super().__init__()
        self.erb = ERB()
        self.encoder = Encoder()
        self.dpgrnn1 = DPGRNN(16, 33)
        self.dpgrnn2 = DPGRNN(16, 33)
        self.decoder = Decoder()

    def forward(self, spec: Tensor) -> Tensor:
        re = spec[..., 0].transpose(1, 2)  # [B, T, 257]
        im = spec[..., 1].transpose(1, 2)
        mag = torch.sqrt(re.pow(2) + im.pow(2) + 1e-12)
        feat = sfe(self.erb.bm(torch.stack([mag, re, im], dim=1)))  # [B, 9, T, 129]

        x, skips = self.encoder(feat)
        x = self.dpgrnn2(self.dpgrnn1(x))
        mask = self.erb.bs(self.decoder(x, skips))  # [B, 2, T, 257]

        m_re, m_im = mask[:, 0], mask[:, 1]
        out_re = re * m_re - im * m_im
        out_im = im * m_re + re * m_im
        return torch.stack([out_re, out_im], dim=-1).transpose(1, 2)  # [B, 257, T, 2]
