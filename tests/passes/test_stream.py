"""``stream``: layer discovery, causality refusals, the state contract, state continuity and
equivalence with the offline model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.errors import ConfigError, ModelError
from secompile.compiler.core.pass_base import PassConfig
from secompile.compiler.runtime.streaming import (
    CHUNK_INPUT,
    CHUNK_OUTPUT,
    STREAM_FILE,
    StreamSession,
    zero_boundary_offline,
)
from secompile.models.spectral import SpectralEnhancer, StftSpec
from secompile.passes.stream import Stream, StreamConfig, find_time_layers
from tests.conftest import GTCRN_DIR, SHARED_DATA, VBDEMAND, noise_audio, requires_shared

N_FFT, HOP = 128, 64
N_BINS = N_FFT // 2 + 1


class CausalCore(nn.Module):
    """Every streamable layer kind: a dilated causal Conv2d (padding in front via ``F.pad``),
    a causal ConvTranspose2d, a GRU along time, a bidirectional GRU along frequency (per
    frame), an LSTM along time, and a Conv1d over time fed by a ``ZeroPad1d`` module."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(2, 4, (1, 3), padding=(0, 1))
        self.dilated = nn.Conv2d(4, 4, (3, 3), padding=(0, 1), dilation=(2, 1))
        self.deconv = nn.ConvTranspose2d(4, 4, (2, 3), padding=(1, 1))
        self.freq_rnn = nn.GRU(4, 2, batch_first=True, bidirectional=True)
        self.time_gru = nn.GRU(4, 4, batch_first=True)
        self.time_lstm = nn.LSTM(4, 4)
        self.pad = nn.ConstantPad1d((1, 0), 0.0)
        self.conv1d = nn.Conv1d(4, 4, 2)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = spec.permute(0, 3, 2, 1)  # [B, 2, T, F]
        b, _, t, f = x.shape
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.dilated(F.pad(h, (0, 0, 4, 0))))
        h = torch.tanh(self.deconv(F.pad(h, (0, 0, 1, 0))))
        per_frame = h.permute(0, 2, 3, 1).reshape(b * t, f, 4)
        h = h + self.freq_rnn(per_frame)[0].reshape(b, t, f, 4).permute(0, 3, 1, 2)
        pooled = h.mean(-1)  # [B, C, T]
        g = self.time_gru(pooled.transpose(1, 2))[0]  # [B, T, C]
        lstm = self.time_lstm(g.transpose(0, 1))[0].transpose(0, 1)
        c = self.conv1d(self.pad(lstm.transpose(1, 2)))  # [B, C, T]
        mask = torch.tanh(self.out(h + c.unsqueeze(-1)))
        return (x * mask).permute(0, 3, 2, 1)


def _enhancer(core: nn.Module, n_fft: int = N_FFT, hop: int = HOP) -> SpectralEnhancer:
    torch.manual_seed(0)
    for p in core.parameters():
        nn.init.normal_(p, std=0.4)
    return SpectralEnhancer(core, StftSpec(n_fft, hop), 16000).eval()


def _artifact(module: nn.Module) -> Artifact:
    info = ModelInfo(name="causal", sample_rate=16000, source={"model": "test", "weights": None})
    return Artifact("torch", info, module=module)


@pytest.fixture
def causal() -> Artifact:
    return _artifact(_enhancer(CausalCore()))


@pytest.fixture
def streamed(causal: Artifact, make_ctx):
    ctx = make_ctx(causal)
    result = Stream().run(causal, ctx)
    return causal, result


def test_finds_every_stateful_layer_and_only_those() -> None:
    layers = {t.path: t for t in find_time_layers(CausalCore(), N_BINS)}
    assert set(layers) == {"dilated", "deconv", "time_gru", "time_lstm", "conv1d"}
    assert (layers["dilated"].kind, layers["dilated"].context) == ("conv", 4)
    assert (layers["deconv"].kind, layers["deconv"].context) == ("conv", 1)
    assert layers["conv1d"].context == 1 and layers["conv1d"].axis == 2
    assert layers["time_gru"].kind == "rnn" and layers["time_lstm"].axis == 0


def test_pass_writes_the_stream_and_passes_the_model_through(streamed) -> None:
    causal, result = streamed
    assert result.artifact is causal and not result.modified
    (path,) = result.files
    assert path.name == STREAM_FILE
    m = result.metrics
    assert (m["hop"], m["delay_samples"]) == (HOP, N_FFT // 2)
    assert m["parity_clip"]["max_abs"] <= 1e-5
    assert {s["path"] for s in m["stateful_layers"]} >= {"dilated", "time_lstm"}


def test_state_contract_names_order_shapes_and_zero_start(streamed) -> None:
    _, result = streamed
    model = onnx.load(str(result.files[0]))
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs[0] == CHUNK_INPUT and outputs[0] == CHUNK_OUTPUT
    assert outputs[1:] == [f"next.{name}" for name in inputs[1:]]
    assert inputs[1:3] == ["state.analysis", "state.overlap_add"]
    assert "state.time_lstm.h" in inputs and "state.time_lstm.c" in inputs

    def dims(value_info) -> list[int]:
        return [d.dim_value for d in value_info.type.tensor_type.shape.dim]

    assert dims(model.graph.input[0]) == [1, HOP] == dims(model.graph.output[0])
    for state_in, state_out in zip(model.graph.input[1:], model.graph.output[1:], strict=True):
        assert dims(state_in) == dims(state_out)
    assert [s["name"] for s in result.metrics["states"]] == inputs[1:]
    session = StreamSession(result.files[0])
    assert all(not s.any() for s in session.states)


def test_stream_equals_the_offline_model(streamed) -> None:
    causal, result = streamed
    wav = noise_audio(1.3, seed=3)[0]
    out = StreamSession(result.files[0]).enhance(wav)
    expected = zero_boundary_offline(causal.module, wav)
    assert out.shape == wav.shape
    assert np.max(np.abs(out - expected)) < 1e-5


def test_state_continuity_any_split_gives_the_same_output(streamed) -> None:
    _, result = streamed
    session = StreamSession(result.files[0])
    wav = noise_audio(1.0, seed=4)[0]
    whole = session.enhance(wav)
    rng = np.random.default_rng(0)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(wav)), size=7, replace=False))
        session.reset()
        padded = np.concatenate([wav, np.zeros(session.delay_samples + HOP, np.float32)])
        pieces = np.split(padded, cuts)
        out = np.concatenate([session.feed(p) for p in pieces])
        aligned = out[session.delay_samples: session.delay_samples + len(wav)]
        assert np.array_equal(aligned, whole)


class _Lookahead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.smooth = nn.Conv2d(2, 2, (3, 1), padding=(1, 0))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.smooth(spec.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)


class _BiTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blstm = nn.GRU(2 * N_BINS, N_BINS, batch_first=True, bidirectional=True)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        b, f, t, _ = spec.shape
        y = self.blstm(spec.permute(0, 2, 1, 3).reshape(b, t, 2 * f))[0]
        return y.reshape(b, t, f, 2).permute(0, 2, 1, 3)


class _PadAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, (2, 1))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = F.pad(spec.permute(0, 3, 2, 1), (0, 0, 0, 1))  # pads after the last frame
        return self.conv(x).permute(0, 3, 2, 1)


class _Strided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(2, 2, (2, 1), stride=(2, 1))
        self.up = nn.ConvTranspose2d(2, 2, (2, 1), stride=(2, 1))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = spec.permute(0, 3, 2, 1)
        return self.up(self.down(x))[:, :, : x.shape[2]].permute(0, 3, 2, 1)


class _Pool(nn.Module):
    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel, stride=1)
        self.pad = (0, kernel[1] - 1, kernel[0] - 1, 0)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(spec.permute(0, 3, 2, 1), self.pad)).permute(0, 3, 2, 1)


class _AttendFrames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(2 * N_BINS, 1)  # [T, B, E]: over frames

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        b, f, t, _ = spec.shape
        x = spec.permute(2, 0, 1, 3).reshape(t, b, 2 * f)
        return self.attn(x, x, x)[0].reshape(t, b, f, 2).permute(1, 2, 0, 3)


def test_pooling_across_frequency_streams_and_across_time_is_refused() -> None:
    assert find_time_layers(_Pool((1, 3)), N_BINS) == []
    with pytest.raises(ModelError, match="layer 'pool' .*across frames"):
        find_time_layers(_Pool((3, 1)), N_BINS)


@pytest.mark.parametrize(("core", "layer", "why"), [
    (_Lookahead, "smooth", r"looks 1 frame\(s\) ahead"),
    (_BiTime, "blstm", "bidirectional along time"),
    (_PadAfter, "conv", "not zero padding before the first frame"),
    (_Strided, "down", "strides its time axis"),
    (_AttendFrames, "attn", "attends across frames"),
])
def test_non_causal_models_are_refused_with_the_layer_named(core, layer, why) -> None:
    with pytest.raises(ModelError, match=rf"layer '{layer}' .*{why}"):
        find_time_layers(core(), N_BINS)


def test_waveform_models_and_other_overlaps_are_refused(make_ctx) -> None:
    waveform = _artifact(nn.Conv1d(1, 1, 3))
    with pytest.raises(ModelError, match="not a spectral model"):
        Stream().run(waveform, make_ctx(waveform))
    quarter = _artifact(_enhancer(CausalCore(), n_fft=128, hop=32))
    with pytest.raises(ModelError, match="50% overlap"):
        Stream().run(quarter, make_ctx(quarter))


def test_time_mixing_outside_layers_fails_the_equivalence_proof(make_ctx) -> None:
    class MeanOverTime(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, spec: torch.Tensor) -> torch.Tensor:
            return spec * self.scale - spec.mean(dim=2, keepdim=True)

    artifact = _artifact(_enhancer(MeanOverTime()))
    from secompile.compiler.core.errors import PassError

    with pytest.raises(PassError, match="mixes frames"):
        Stream().run(artifact, make_ctx(artifact))


@pytest.mark.parametrize("options", [{"tolerance": 0}, {"opset": 9}, {"simplify": "magic"}])
def test_config_errors(options) -> None:
    with pytest.raises(ConfigError):
        StreamConfig.from_options(options, "stream")


def test_config_is_a_pass_config() -> None:
    assert issubclass(StreamConfig, PassConfig)
    assert StreamConfig().tolerance == 1e-4


@requires_shared
@pytest.mark.parametrize("checkpoint", ["gtcrn_dns3.pt", "gtcrn_dns3_stream.pt", "gtcrn_vctk.pt",
                                        "nsnet2"])
def test_real_models_stream_equal_offline_on_the_shared_pairs(checkpoint, make_ctx) -> None:
    from secompile.calibration.datasets import PairedFolder
    from secompile.compiler.runtime.streaming import equivalence, within_tolerance
    from secompile.models.registry import load_model

    if checkpoint == "nsnet2":
        artifact = load_model("nsnet2", SHARED_DATA / "models" / "nsnet2" / "nsnet2-16k.onnx")
    else:
        artifact = load_model("gtcrn", GTCRN_DIR / checkpoint)
    pairs = PairedFolder.scan(VBDEMAND, 16000).load()
    result = Stream().run(artifact, make_ctx(artifact, np.stack([pairs[0].noisy[:32000]])))
    proof = equivalence(StreamSession(result.files[0]), artifact.module,
                        [p.noisy for p in pairs], [p.clean for p in pairs])
    assert proof["files"] == len(pairs) >= 10
    assert proof["max_abs"] <= 1e-4, proof  # against the offline model as model.onnx runs it
    assert proof["max_abs_vs_float64"] <= 1e-4
    assert within_tolerance(proof, 1e-4)
    assert proof["max_abs_delta_si_sdr"] <= 0.01
