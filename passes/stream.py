"""``stream``: lower an offline causal spectral model to a hop-by-hop step with explicit state."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ModelError, PassError
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.lowering.onnx_export import (
    check_export_options,
    export_torchscript,
    finish_export,
)
from secompile.compiler.runtime.streaming import (
    CHUNK_INPUT,
    CHUNK_OUTPUT,
    PROP_PREFIX,
    STREAM_FILE,
    StreamSession,
    equivalence,
    within_tolerance,
)
from secompile.models.spectral import SpectralEnhancer

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
RNN_LAYERS = (nn.GRU, nn.LSTM)
# Layers that would mix frames if they ran along time; streaming them is not supported.
FRAME_MIXERS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Upsample,
                nn.MultiheadAttention, nn.TransformerEncoderLayer)
PROBE_FRAMES = (5, 9)


@dataclass(frozen=True)
class StreamConfig(PassConfig):
    """Options of ``stream``: the equivalence tolerance (max abs, waveform units) the stream is
    held to against its offline model, the opset (0: the target's) and the simplifier."""

    tolerance: float = 1e-4
    opset: int = 0
    simplify: str = "auto"

    def check(self) -> None:
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {self.tolerance}")
        check_export_options(self.opset, self.simplify)


@dataclass(frozen=True)
class TimeLayer:
    """A layer that carries information from one frame to the next.

    ``kind`` is ``"conv"`` (a causal convolution along ``axis`` of its input, whose ``context``
    past frames become a cache) or ``"rnn"`` (a GRU/LSTM running along time, whose hidden
    state is carried).
    """

    path: str
    kind: str
    axis: int
    context: int = 0


def _refuse(path: str, module: nn.Module, why: str) -> ModelError:
    return ModelError(f"cannot stream: layer '{path}' ({type(module).__name__}) {why}")


def _varying_dims(a: Tensor, b: Tensor) -> set[int]:
    return {i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y}


def _conv_layer(path: str, conv: nn.Module, probes: list[tuple[int, Tensor, Tensor]]
                ) -> TimeLayer | None:
    """The streaming plan of a convolution from its probe inputs/outputs; refuses layers that
    look ahead, stride or resize the time axis."""
    (t1, x1, y1), (t2, x2, y2) = probes
    varying = _varying_dims(x1, x2)
    if len(varying) > 1:
        raise _refuse(path, conv, f"has several input axes that grow with time: {varying}")
    if not varying or min(varying) < x1.dim() - len(conv.kernel_size):
        return None  # constant in time, or frames folded into the batch/channel axis
    axis = varying.pop()
    s = axis - (x1.dim() - len(conv.kernel_size))
    kernel, stride, dilation = conv.kernel_size[s], conv.stride[s], conv.dilation[s]
    if isinstance(conv.padding, str):
        padding = 0 if conv.padding == "valid" or kernel == 1 else None
        if padding is None:
            raise _refuse(path, conv, "pads its time axis with padding='same': it looks ahead")
    else:
        padding = conv.padding[s]
    if kernel == 1 and stride == 1 and padding == 0:
        return None
    if stride != 1:
        raise _refuse(path, conv, f"strides its time axis by {stride}; streaming needs one "
                                  "output frame per input frame")
    transposed = isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d))
    if transposed and conv.output_padding[s]:
        raise _refuse(path, conv, "has output padding on its time axis")
    context = {x1.shape[axis] - t1, x2.shape[axis] - t2}
    if len(context) != 1 or (y1.shape[axis], y2.shape[axis]) != (t1, t2):
        raise _refuse(path, conv, f"changes the number of frames ({t1} frames in, "
                                  f"{y1.shape[axis]} out); streaming needs one per frame")
    (context,) = context
    lookahead = (kernel - 1) * dilation - padding if transposed else padding
    if lookahead > 0:
        raise _refuse(path, conv, f"looks {lookahead} frame(s) ahead on the time axis: the "
                                  "model is not causal")
    if context <= 0 or any(x.narrow(axis, 0, context).abs().max() > 0 for x in (x1, x2)):
        raise _refuse(path, conv, "gets time context that is not zero padding before the "
                                  "first frame: it looks ahead or pads after the signal")
    return TimeLayer(path, "conv", axis, context)


def _rnn_layer(path: str, rnn: nn.Module, probes: list[tuple[int, Tensor, Tensor]],
               given_state: bool) -> TimeLayer | None:
    """The streaming plan of a GRU/LSTM: stateful when its sequence axis grows with time."""
    (_, x1, _), (_, x2, _) = probes
    varying = _varying_dims(x1, x2)
    time_axis = 0 if x1.dim() == 2 or not rnn.batch_first else 1
    if not varying or varying == {1 - time_axis}:
        return None  # one sequence per frame (e.g. along frequency)
    if varying != {time_axis}:
        raise _refuse(path, rnn, f"has input axes {varying} that grow with time")
    if rnn.bidirectional:
        raise _refuse(path, rnn, "is bidirectional along time: it looks ahead to the end of "
                                 "the signal, so the model is not causal")
    if given_state:
        raise _refuse(path, rnn, "is given an initial state by the model's code; streaming "
                                 "carries that state itself")
    return TimeLayer(path, "rnn", time_axis)


def find_time_layers(core: nn.Module, n_bins: int) -> list[TimeLayer]:
    """The layers of a spectral ``core`` (``[1, F, T, 2] -> [1, F, T, 2]``) that carry state
    from frame to frame, found by running it on two lengths and seeing which axes grow.

    Raises :class:`ModelError` naming the layer when the model cannot stream: a layer that
    looks ahead in time (symmetric time padding, a bidirectional RNN along time), strides or
    resizes time, pools or attends over frames, or runs more than once per forward.
    """
    seen: dict[str, list] = {}

    def recorder(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            first = output[0] if isinstance(output, tuple) else output
            given = len(args) > 1 and args[1] is not None or kwargs.get("hx") is not None
            seen.setdefault(path, []).append((args[0].detach().clone(), first.detach(), given))
        return hook

    watched = CONV_LAYERS + RNN_LAYERS + FRAME_MIXERS
    hooks = [m.register_forward_hook(recorder(p), with_kwargs=True)
             for p, m in core.named_modules() if isinstance(m, watched)]
    try:
        with torch.no_grad():
            for frames in PROBE_FRAMES:
                gen = torch.Generator().manual_seed(frames)
                core(torch.randn(1, n_bins, frames, 2, generator=gen))
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(core.named_modules())
    layers = []
    for path, calls in seen.items():
        module = modules[path]
        if len(calls) != len(PROBE_FRAMES):
            raise _refuse(path, module, f"runs {len(calls) // len(PROBE_FRAMES)} times per "
                                        "forward; streaming needs one state per layer")
        probes = [(t, x, y) for t, (x, y, _) in zip(PROBE_FRAMES, calls, strict=True)]
        if isinstance(module, CONV_LAYERS):
            layer = _conv_layer(path, module, probes)
        elif isinstance(module, RNN_LAYERS):
            layer = _rnn_layer(path, module, probes, any(given for *_, given in calls))
        else:
            _refuse_frame_mixing(path, module, probes)
            layer = None
        if layer is not None:
            layers.append(layer)
    return layers


def _refuse_frame_mixing(path: str, module: nn.Module,
                         probes: list[tuple[int, Tensor, Tensor]]) -> None:
    """Refuse a pooling, resampling or attention layer whose window runs along time (the axis
    that grows with the number of frames); the same layer across frequency is frame-local."""
    varying = _varying_dims(probes[0][1], probes[1][1])
    x = probes[0][1]
    if isinstance(module, (nn.MultiheadAttention, nn.TransformerEncoderLayer)):
        first = getattr(module, "batch_first", False) or getattr(
            getattr(module, "self_attn", None), "batch_first", False)
        mixes = (1 if first else 0) in varying
    else:
        spatial = [d - (x.dim() - _spatial_rank(module)) for d in varying]
        mixes = any(s >= 0 and _window(module, s) != 1 for s in spatial)
    if mixes:
        raise _refuse(path, module, "pools, resamples or attends across frames; streaming "
                                    "supports convolutions and GRU/LSTM along time")


def _spatial_rank(module: nn.Module) -> int:
    return 1 if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)) else 2


def _window(module: nn.Module, axis: int) -> float:
    """How many input frames one output frame of ``module`` spans along spatial ``axis``."""
    if isinstance(module, nn.Upsample):
        scale = module.scale_factor if module.scale_factor is not None else 0
        return scale[axis] if isinstance(scale, tuple) else scale
    kernel = module.kernel_size
    return kernel[axis] if isinstance(kernel, tuple) else kernel


class _StatefulConv(nn.Module):
    """A causal convolution whose zero time padding is replaced by the cached past frames."""

    def __init__(self, conv: nn.Module, axis: int, context: int) -> None:
        super().__init__()
        self.conv, self.axis, self.context = conv, axis, context
        self.state: Tensor | None = None
        self.next_state: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[self.axis] - self.context
        fresh = x.narrow(self.axis, self.context, frames)
        past = self.state if self.state is not None else torch.zeros_like(
            x.narrow(self.axis, 0, self.context))
        full = torch.cat([past, fresh], dim=self.axis)
        self.next_state = full.narrow(self.axis, frames, self.context)
        return self.conv(full)


class _StatefulRnn(nn.Module):
    """A GRU/LSTM that starts from the carried state and records its final state."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.state: Any = None
        self.next_state: Any = None

    def forward(self, x: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        out, state = self.rnn(x, self.state)
        self.next_state = state
        return out, state


class StreamStep(nn.Module):
    """One hop of a streamed ``SpectralEnhancer``: ``forward(chunk [1, hop], *states)`` returns
    ``(enhanced [1, hop], *next_states)``.

    States, in order: the analysis buffer (the last ``n_fft - hop`` input samples), the
    overlap-add buffer (``n_fft - hop`` samples of pending output), then each stateful layer's
    state (a convolution's past frames; an RNN's hidden state, plus the cell state of an
    LSTM). Each call analyses one frame, runs the core on it and overlap-adds its synthesis;
    the output is ``n_fft / 2`` samples behind the input.
    """

    def __init__(self, enhancer: nn.Module, layers: list[TimeLayer]) -> None:
        super().__init__()
        spec = enhancer.stft
        if spec.n_fft != 2 * spec.hop:
            raise ModelError(f"cannot stream: the STFT has n_fft={spec.n_fft}, hop={spec.hop}; "
                             "streaming supports 50% overlap (n_fft = 2 * hop)")
        self.n_fft, self.hop, self.n_bins = spec.n_fft, spec.hop, spec.n_bins
        self.core = copy.deepcopy(enhancer.core).eval()
        modules = dict(self.core.named_modules())
        self.stateful: list[tuple[TimeLayer, nn.Module]] = []
        for layer in layers:
            parent_path, _, name = layer.path.rpartition(".")
            parent = modules[parent_path] if parent_path else self.core
            inner = modules[layer.path]
            wrapper = (_StatefulConv(inner, layer.axis, layer.context) if layer.kind == "conv"
                       else _StatefulRnn(inner))
            setattr(parent, name, wrapper)
            self.stateful.append((layer, wrapper))
        self.register_buffer("analysis", enhancer.conv_stft.analysis.clone(), persistent=False)
        self.register_buffer("synthesis", enhancer.conv_stft.synthesis.clone(),
                             persistent=False)
        window_sq = spec.window_tensor().double().pow(2)
        envelope = window_sq[: self.hop] + window_sq[self.hop :]
        if envelope.min() <= 1e-8:
            raise ModelError(f"cannot stream: the {spec.window} window does not overlap-add "
                             "to a non-zero envelope at 50% overlap")
        self.register_buffer("inv_envelope", (1 / envelope).float().view(1, -1),
                             persistent=False)

    def state_names(self) -> list[str]:
        """Input names of the states, in contract order."""
        names = ["state.analysis", "state.overlap_add"]
        for layer, wrapper in self.stateful:
            if isinstance(wrapper.rnn if layer.kind == "rnn" else None, nn.LSTM):
                names += [f"state.{layer.path}.h", f"state.{layer.path}.c"]
            else:
                names.append(f"state.{layer.path}")
        return names

    def _set_states(self, states: tuple[Tensor, ...]) -> None:
        it = iter(states)
        for layer, wrapper in self.stateful:
            if layer.kind == "rnn" and isinstance(wrapper.rnn, nn.LSTM):
                wrapper.state = (next(it), next(it))
            else:
                wrapper.state = next(it)

    def _next_states(self) -> list[Tensor]:
        out = []
        for _, wrapper in self.stateful:
            state = wrapper.next_state
            out += list(state) if isinstance(state, tuple) else [state]
        return out

    def zero_states(self) -> list[Tensor]:
        """The zero initial state of every input after the chunk (shapes found by one step)."""
        buffer = torch.zeros(1, self.n_fft - self.hop)
        for _, wrapper in self.stateful:
            wrapper.state = None
        with torch.no_grad():
            self._step(torch.zeros(1, self.hop), buffer, buffer)
        return [buffer, buffer.clone()] + [torch.zeros_like(s) for s in self._next_states()]

    def _step(self, chunk: Tensor, analysis: Tensor, overlap: Tensor) -> tuple[Tensor, ...]:
        frame = torch.cat([analysis, chunk], dim=1)  # [1, n_fft]
        spectrum = F.conv1d(frame.unsqueeze(1), self.analysis)  # [1, 2F, 1]
        spectrum = spectrum.view(1, 2, self.n_bins, 1).permute(0, 2, 3, 1)  # [1, F, 1, 2]
        enhanced = self.core(spectrum)
        frames = enhanced.permute(0, 3, 1, 2).reshape(1, 2 * self.n_bins, 1)
        synthesis = F.conv_transpose1d(frames, self.synthesis).view(1, self.n_fft)
        pending = torch.cat([overlap, torch.zeros_like(chunk)], dim=1) + synthesis
        out = pending[:, : self.hop] * self.inv_envelope
        return out, frame[:, self.hop :], pending[:, self.hop :]

    def forward(self, chunk: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        analysis, overlap, *layer_states = states
        self._set_states(tuple(layer_states))
        out, next_analysis, next_overlap = self._step(chunk, analysis, overlap)
        return (out, next_analysis, next_overlap, *self._next_states())


def _export(step: StreamStep, path: Any, opset: int) -> list[str]:
    """Export ``step`` with fixed shapes to ``path``; return the state names."""
    names = step.state_names()
    export_torchscript(step, (torch.zeros(1, step.hop), *step.zero_states()), path, opset,
                       [CHUNK_INPUT, *names], [CHUNK_OUTPUT, *(f"next.{n}" for n in names)])
    return names


class Stream(Pass):
    """Write ``model_stream.onnx``: the model as a hop-by-hop step function with explicit state.

    Rewrite rules (on a copy; the pipeline's model passes through unchanged):

    * the STFT becomes an analysis buffer of the last ``n_fft - hop`` samples and one windowed
      DFT per hop; the inverse STFT an overlap-add buffer divided by the window's steady-state
      envelope (50% overlap);
    * every convolution whose input grows with the number of frames and has a time kernel
      wider than one frame is causal by construction or refused: its zero padding before the
      first frame (``context`` frames, found by probing two lengths) is replaced by a cache of
      the previous frames, the next cache being the last ``context`` frames it saw;
    * every GRU/LSTM whose sequence axis is time starts from the carried hidden (and cell)
      state and emits the next one; an RNN run per frame (e.g. along frequency) is untouched;
    * a layer that looks ahead in time, strides or resizes time, or pools or attends over
      frames is refused with its name.

    The step is exported with fixed shapes (TorchScript exporter), simplified, optimized by
    ONNX Runtime (``basic``), its DFT bases compacted and constant-slope PRelus rewritten, as
    ``export-onnx`` does. The pass then proves the stream on the parity clip: streamed output
    against the offline model (zero boundary, ``compiler.runtime.streaming``) within ``tolerance``.
    """

    name = "stream"
    Config = StreamConfig
    input_formats = ("torch",)
    summary = "write model_stream.onnx: hop-by-hop step with explicit state, proven equivalent"
    checks_parity = False

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        cfg: StreamConfig = self.config
        module = artifact.module
        if not isinstance(module, SpectralEnhancer):
            raise ModelError("cannot stream: the model is not a spectral model "
                             "(models.spectral.SpectralEnhancer); waveform models do not "
                             "stream yet")
        layers = find_time_layers(module.core, module.stft.n_bins)
        step = StreamStep(module, layers).eval()
        raw = ctx.pass_dir / "stream_exported.onnx"
        names = _export(step, raw, cfg.opset or ctx.target.opset)
        final = ctx.pass_dir / STREAM_FILE
        rate = artifact.info.sample_rate
        delay = step.n_fft // 2
        _, steps = finish_export(raw, final, cfg.simplify, props={
            "secompile.model": artifact.info.name,
            "secompile.sample_rate": str(rate),
            PROP_PREFIX + "hop": str(step.hop),
            PROP_PREFIX + "delay_samples": str(delay),
            PROP_PREFIX + "sample_rate": str(rate),
            PROP_PREFIX + "tolerance": str(cfg.tolerance),
        })
        session = StreamSession(final, ctx.threads)
        proof = equivalence(session, module, [np.asarray(ctx.parity_audio)[0]])
        if not within_tolerance(proof, cfg.tolerance):
            raise PassError(self.name, (
                f"the stream differs from the offline model by {proof['max_abs']:.3g} max abs "
                f"({proof['max_abs_vs_float64']:.3g} from a float64 run; tolerance "
                f"{cfg.tolerance:g}): an operation outside convolutions and RNNs mixes frames"))
        states = [{"name": n, "shape": list(s)}
                  for n, s in zip(names, session.state_shapes, strict=True)]
        metrics = {
            "file": STREAM_FILE,
            "hop": step.hop,
            "delay_samples": delay,
            "delay_ms": round(1000 * delay / rate, 3),
            "algorithmic_latency_ms": round(1000 * (delay + step.hop) / rate, 3),
            "states": states,
            "state_floats": int(sum(np.prod(s["shape"]) for s in states)),
            "stateful_layers": [{"path": t.path, "kind": t.kind, "context_frames": t.context}
                                for t in layers],
            "tolerance": cfg.tolerance,
            "parity_clip": proof,
            "nodes": steps["nodes_final"],
            "simplifier": steps["simplifier"],
            "size_bytes": final.stat().st_size,
        }
        return PassResult(artifact, False, metrics, (final,))
