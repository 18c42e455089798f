"""torch.export with a dynamic time axis: opaque RNN operators, autocast precision, shapes, and
the Torch-TensorRT op-coverage table (built from a partitioned graph, no TensorRT needed)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from secompile.compiler.lowering.torch_export import (
    HopPadded,
    OpaqueRNN,
    ShapeRange,
    agreement,
    export_dynamic,
    exportable,
    opaque_rnns,
)
from secompile.passes.tensorrt import count_ops, op_coverage
from tests.conftest import noise_audio

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")]


@pytest.mark.parametrize("rnn", [
    nn.GRU(6, 5, batch_first=True),
    nn.GRU(6, 5, num_layers=2, bidirectional=True),
    nn.GRU(6, 5, batch_first=True, bias=False),
    nn.LSTM(6, 5, batch_first=True, bidirectional=True),
])
def test_opaque_rnn_matches_torch_rnn(rnn) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 7, 6)
    with torch.no_grad():
        expected, expected_state = rnn(x)
        got, got_state = OpaqueRNN(rnn)(x)
        torch.testing.assert_close(got, expected)
        if isinstance(rnn, nn.LSTM):
            torch.testing.assert_close(got_state[0], expected_state[0])
            torch.testing.assert_close(got_state[1], expected_state[1])
            return
        torch.testing.assert_close(got_state, expected_state)
        h0 = torch.randn_like(expected_state)
        torch.testing.assert_close(OpaqueRNN(rnn)(x, h0)[0], rnn(x, h0)[0])


def test_opaque_rnns_replaces_every_rnn_in_a_copy(tiny) -> None:
    clone, count = opaque_rnns(tiny.module)
    assert count == 1
    assert isinstance(clone.core.gru, OpaqueRNN) and isinstance(tiny.module.core.gru, nn.GRU)


def test_plain_export_specializes_the_time_axis_opaque_export_does_not(tiny) -> None:
    """The reason the RNNs are made opaque: PyTorch unrolls its GRU over the example's frames."""
    shapes = ShapeRange(64, 4, 50, 400, 8)
    x = torch.from_numpy(noise_audio(1.0)).repeat(3, 1)[:, : 64 * 123]
    plain = export_dynamic(tiny.module.with_stft_impl("conv"), shapes, "cpu")
    with pytest.raises(AssertionError, match="Guard failed"), torch.no_grad():
        plain.module()(x)  # 123 frames: the unrolled GRU only takes the example's 50
    model, _ = exportable(tiny.module, "cpu", "fp32")
    program = export_dynamic(model, shapes, "cpu")
    assert "secompile.gru" in count_ops(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), tiny.module(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision,floor_db", [("fp16", 35.0), ("bf16", 25.0)])
def test_autocast_export_keeps_io_fp32_and_quality(tiny, precision, floor_db) -> None:
    model, _ = exportable(tiny.module, "cpu", precision)
    program = export_dynamic(model, ShapeRange(64, 4, 50, 400, 8), "cpu").run_decompositions()
    casts = [n for n in program.graph.nodes if "_to_copy" in str(n.target)]
    assert casts, "autocast left no casts in the graph"
    x = torch.from_numpy(noise_audio(1.0))[:, : 64 * 200]
    with torch.no_grad():
        y = program.module()(x)
        assert y.dtype == torch.float32 and y.shape == x.shape
        db, _ = agreement(tiny.module(x), y)
    assert db >= floor_db


def test_shape_range_and_hop_padding() -> None:
    with pytest.raises(ValueError, match="min_frames"):
        ShapeRange(64, 10, 5, 100, 8)
    with pytest.raises(ValueError, match="max_batch"):
        ShapeRange(64, 1, 5, 100, 1)
    shapes = ShapeRange(160, 8, 100, 6000, 32)
    assert shapes.as_dict()["max_samples"] == 960000
    seen = []
    padded = HopPadded(lambda x: seen.append(x.shape) or x * 2, 160)
    out = padded(torch.ones(2, 1000))
    assert seen == [torch.Size([2, 1120])] and out.shape == (2, 1000)


def test_op_coverage_counts_what_fell_back_to_pytorch() -> None:
    """A graph partitioned as Torch-TensorRT partitions it: an engine submodule and a PyTorch
    submodule calling the RNN operator and one multiply."""

    class Engine(nn.Module):
        def forward(self, x):
            return x

    def fallback(x):
        return torch.ops.aten.mul.Tensor(x, x)

    graph_module = torch.fx.symbolic_trace(nn.Identity())
    gm = torch.fx.symbolic_trace(fallback)
    graph_module.add_submodule("_run_on_acc_0", Engine())
    graph_module.add_submodule("_run_on_gpu_1", gm)
    table = op_coverage(Counter({"aten.convolution": 4, "aten.mul": 3}), graph_module)
    rows = {r["op"]: r for r in table["ops"]}
    assert table["engines"] == 1
    assert rows["aten.mul"] == {"op": "aten.mul", "total": 3, "pytorch": 1, "tensorrt": 2}
    assert rows["aten.convolution"]["tensorrt"] == 4
    assert table["ops_total"] == 7 and table["ops_in_tensorrt"] == 6
