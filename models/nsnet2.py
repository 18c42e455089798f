"""NSNet2, the noise-suppression baseline of the ICASSP 2021 DNS Challenge, ported to PyTorch.

Reference: S. Braun, H. Gamper, C. K. A. Reddy, I. Tashev, "Towards efficient models for
real-time deep noise suppression", ICASSP 2021, and S. Braun, I. Tashev, "Data augmentation and
loss normalization for deep noise suppression", SPECOM 2020; the 16 kHz model was published as
an ONNX file as the baseline of the ICASSP 2021 Deep Noise Suppression Challenge
(C. K. A. Reddy et al.).

NSNet2 is a real-valued spectral gain estimator. For each STFT frame of 16 kHz audio (320-point
FFT, hop 160, square-root periodic Hann window) it takes the log power spectrum
``log10(max(|X|^2, 1e-12))`` of the 161 one-sided bins and predicts one gain per bin:

* ``Linear(161, 400)`` + ReLU,
* two stacked unidirectional GRUs of width 400 running along time (the model is causal),
* ``Linear(400, 600)`` + ReLU, ``Linear(600, 600)`` + ReLU, ``Linear(600, 161)`` + sigmoid.

The gain is clipped to ``[1e-4, 1]`` and multiplies the noisy complex spectrum; the phase is left
untouched.

The official weights come as an ONNX graph exported from PyTorch 1.6 (opset 11): the linear
layers are ``MatMul`` (weight stored ``[in, out]``) + ``Add`` and the recurrent part is two ONNX
``GRU`` nodes with ``linear_before_reset=1``, which is exactly PyTorch's GRU formulation (the
reset gate multiplies ``W_hn h + b_hn``), so ``nn.GRU`` reproduces it once the gate blocks are
reordered from ONNX's (z, r, h) to PyTorch's (r, z, n). :func:`state_dict_from_onnx` does that
conversion; it finds the weights by walking the graph rather than by the exporter's numeric
initializer names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from secompile.compiler.core.errors import ModelError
from secompile.models.spectral import SpectralEnhancer, StftSpec

SAMPLE_RATE = 16000
N_FFT = 320
HOP = 160
WINDOW = "sqrt_hann"

N_BINS = N_FFT // 2 + 1  # 161
HIDDEN = 400
FC_OUT = 600
GAIN_MIN = 1e-4
POWER_FLOOR = 1e-12

# Linear layers in graph order: (state_dict prefix, in_features, out_features).
_LINEARS = (("fc_in.0", N_BINS, HIDDEN), ("fc_out.0", HIDDEN, FC_OUT),
            ("fc_out.2", FC_OUT, FC_OUT), ("fc_out.4", FC_OUT, N_BINS))
_GRU_LAYERS = 2


class NSNet2Core(nn.Module):
    """NSNet2 on the project's spectrum layout: ``forward(spec [B, 161, T, 2]) -> [B, 161, T, 2]``.

    :meth:`gain` is the network the official ONNX file contains (log-power features in, sigmoid
    gain out, both ``[B, T, 161]``); :meth:`forward` adds the feature computation, the gain
    clipping and the masking around it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Sequential(nn.Linear(N_BINS, HIDDEN), nn.ReLU())
        self.gru = nn.GRU(HIDDEN, HIDDEN, num_layers=_GRU_LAYERS, batch_first=True)
        self.fc_out = nn.Sequential(
            nn.Linear(HIDDEN, FC_OUT), nn.ReLU(),
            nn.Linear(FC_OUT, FC_OUT), nn.ReLU(),
            nn.Linear(FC_OUT, N_BINS), nn.Sigmoid(),
        )

    @staticmethod
    def features(spec: Tensor) -> Tensor:
        """Log10 power spectrum ``[B, T, 161]`` of a spectrum ``[B, 161, T, 2]``."""
        power = spec[..., 0].pow(2) + spec[..., 1].pow(2)
        return torch.log10(power.clamp(min=POWER_FLOOR)).transpose(1, 2)

    def gain(self, features: Tensor) -> Tensor:
        """The network of the ONNX original: features ``[B, T, 161]`` to a gain in (0, 1)."""
        h, _ = self.gru(self.fc_in(features))
        return self.fc_out(h)

    def forward(self, spec: Tensor) -> Tensor:
        """Mask the noisy spectrum ``[B, 161, T, 2]`` with the clipped predicted gain."""
        gain = self.gain(self.features(spec)).clamp(GAIN_MIN, 1.0)  # [B, T, F]
        return spec * gain.transpose(1, 2).unsqueeze(-1)


def build_nsnet2() -> SpectralEnhancer:
    """An (untrained) NSNet2 waveform model: STFT, :class:`NSNet2Core`, inverse STFT, 16 kHz."""
    return SpectralEnhancer(NSNet2Core(), StftSpec(N_FFT, HOP, WINDOW), SAMPLE_RATE)


# --- ONNX weights ---------------------------------------------------------------------------


def _reorder_gates(weight: Tensor) -> Tensor:
    """ONNX gate blocks (z, r, h) along dim 0 -> PyTorch's (r, z, n)."""
    z, r, h = weight.chunk(3, dim=0)
    return torch.cat([r, z, h], dim=0).contiguous()


def _load_graph(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"NSNet2 ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not an ONNX model ({reason})") from None
    if not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model (it holds no graph nodes)")
    return model.graph


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Convert the official ``nsnet2-16k.onnx`` into a :class:`NSNet2Core` state_dict.

    The four ``MatMul`` + ``Add`` pairs become the linear layers (weights transposed from
    ``[in, out]`` to ``[out, in]``); each ``GRU`` node's ``W`` ``[1, 3H, in]``, ``R``
    ``[1, 3H, H]`` and ``B`` ``[1, 6H]`` (``W_b`` then ``R_b``) become one layer of ``nn.GRU``
    with the gate blocks reordered. Raises :class:`ModelError` naming ``path`` if the file is not
    an ONNX model or not NSNet2 (wrong layers, shapes, or a GRU variant ``nn.GRU`` cannot run).
    """
    from onnx import numpy_helper

    path = Path(path)
    graph = _load_graph(path)
    inits = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    def not_nsnet2(why: str) -> ModelError:
        return ModelError(f"{path} is not the NSNet2 ONNX model: {why}")

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, Tensor] = {}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    if len(matmuls) != len(_LINEARS):
        raise not_nsnet2(f"expected {len(_LINEARS)} MatMul layers with weight initializers, "
                         f"found {len(matmuls)}")
    for node, (prefix, n_in, n_out) in zip(matmuls, _LINEARS):
        weight = tensor(node.input[1])
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias_names = [i for n in adds for i in n.input if i in inits]
        if tuple(weight.shape) != (n_in, n_out) or len(bias_names) != 1:
            raise not_nsnet2(f"layer {prefix}: weight {node.input[1]!r} has shape "
                             f"{list(weight.shape)} (expected {[n_in, n_out]}) and "
                             f"{len(bias_names)} bias initializers (expected 1)")
        bias = tensor(bias_names[0])
        if tuple(bias.shape) != (n_out,):
            raise not_nsnet2(f"layer {prefix}: bias {bias_names[0]!r} has shape "
                             f"{list(bias.shape)}, expected {[n_out]}")
        state[f"{prefix}.weight"] = weight.t().contiguous()
        state[f"{prefix}.bias"] = bias

    grus = [n for n in graph.node if n.op_type == "GRU"]
    if len(grus) != _GRU_LAYERS:
        raise not_nsnet2(f"expected {_GRU_LAYERS} GRU nodes, found {len(grus)}")
    for layer, node in enumerate(grus):
        attrs = {a.name: a for a in node.attribute}
        lbr = attrs["linear_before_reset"].i if "linear_before_reset" in attrs else 0
        direction = attrs["direction"].s.decode() if "direction" in attrs else "forward"
        # linear_before_reset=0 applies the reset gate before the recurrent matmul; nn.GRU
        # cannot express that, and custom activations would not match it either.
        if lbr != 1 or direction != "forward" or "activations" in attrs or "clip" in attrs:
            raise not_nsnet2(f"GRU node {layer} has linear_before_reset={lbr}, "
                             f"direction={direction!r}; the port needs 1 and 'forward' with the "
                             "default activations")
        names = list(node.input) + [""] * (4 - len(node.input))
        w_name, r_name, b_name = names[1], names[2], names[3]
        if not all(n in inits for n in (w_name, r_name, b_name)):
            raise not_nsnet2(f"GRU node {layer} lacks W, R or B initializers")
        w, r, b = tensor(w_name), tensor(r_name), tensor(b_name)
        expected = {w_name: (1, 3 * HIDDEN, HIDDEN), r_name: (1, 3 * HIDDEN, HIDDEN),
                    b_name: (1, 6 * HIDDEN)}
        for name, t in ((w_name, w), (r_name, r), (b_name, b)):
            if tuple(t.shape) != expected[name]:
                raise not_nsnet2(f"GRU {layer} initializer {name!r} has shape "
                                 f"{list(t.shape)}, expected {list(expected[name])}")
        w_b, r_b = b[0].chunk(2)
        state[f"gru.weight_ih_l{layer}"] = _reorder_gates(w[0])
        state[f"gru.weight_hh_l{layer}"] = _reorder_gates(r[0])
        state[f"gru.bias_ih_l{layer}"] = _reorder_gates(w_b)
        state[f"gru.bias_hh_l{layer}"] = _reorder_gates(r_b)
    return state
