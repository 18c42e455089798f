"""Channel groups and their removal: tensors really shrink, every reader stays consistent
(grouped and depthwise convs, transposed convs, GRU/LSTM units, residual adds, concatenations,
norms), removing dead channels changes nothing, and the pruned model still exports to ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from secompile.compiler.analysis.channels import (
    channel_groups,
    conform_to_state,
    drop_rnn_layers,
    remove_channels,
)
from secompile.compiler.analysis.graph import trace_graph
from secompile.compiler.analysis.pruning import (
    SelectionRules,
    count_macs,
    importance,
    select,
    select_for_macs,
)
from tests.conftest import tiny_module


class Wired(nn.Module):
    """Every wiring the analysis must follow, on ``[B, 4, T]`` input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(4, 16, 3, padding=1)
        self.grouped = nn.Conv1d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.skip = nn.Conv1d(4, 16, 1)  # residual: joins the stem's group
        self.branch = nn.Conv1d(16, 8, 1)
        self.norm = nn.BatchNorm1d(24)  # reads the concatenation [depthwise 16 | branch 8]
        self.up = nn.ConvTranspose1d(24, 12, 4, stride=2, padding=1)
        self.down = nn.Conv1d(12, 16, 4, stride=2, padding=1, groups=2)
        self.ln = nn.LayerNorm(16)
        self.rnn = nn.GRU(16, 12, num_layers=2, batch_first=True)
        self.lstm = nn.LSTM(12, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x)) + self.skip(x)
        h = torch.relu(self.grouped(h))
        cat = torch.cat([self.depthwise(h), self.branch(h)], dim=1)
        h = self.down(torch.relu(self.up(torch.relu(self.norm(cat)))))
        seq = self.ln(h.transpose(1, 2))
        seq, _ = self.rnn(seq)
        seq, _ = self.lstm(seq)
        return x * torch.sigmoid(self.head(seq)).transpose(1, 2)


def _groups(model: nn.Module, x: torch.Tensor):
    return channel_groups(model, trace_graph(model.eval(), x))


def _half(groups) -> dict[int, list[int]]:
    """Half of each prunable group, evenly over its slices."""
    removal = {}
    for g in groups:
        if g.prunable:
            per = g.size // g.slices
            removal[g.id] = [s * per + i for s in range(g.slices) for i in range(per // 2)]
    return removal


@pytest.fixture
def wired() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Wired().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.1, 0.1)
        model.norm.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(2, 4, 32)


def test_groups_follow_the_wiring(wired) -> None:
    model, x = wired
    groups = _groups(model, x)
    by_producer = {s.path: g for g in groups for s in g.producers if s.role != "rnn_layer"}
    stem = by_producer["stem"]
    assert by_producer["skip"] is stem  # the residual add joins both producers
    assert {(s.path, s.role) for s in stem.consumers} == {("grouped", "in")}
    assert stem.slices == 4  # the grouped conv reads it: removals even over its 4 groups
    grouped = by_producer["grouped"]
    # the depthwise conv passes the group through; the norm reads it inside the concatenation
    roles = {(s.path, s.role, s.offset) for s in grouped.consumers}
    assert {("depthwise", "channel", 0), ("norm", "channel", 0), ("branch", "in", 0),
            ("up", "in", 0)} <= roles
    assert ("norm", "channel", 16) in {(s.path, s.role, s.offset)
                                       for s in by_producer["branch"].consumers}
    assert by_producer["up"].slices == 2  # read by the grouped conv 'down'
    assert {s.path for s in by_producer["down"].consumers} == {"ln", "rnn"}
    inner = [g for g in groups if any(s.role == "rnn_layer" for s in g.producers)]
    assert len(inner) == 1 and inner[0].tie == "rnn" == by_producer["rnn"].tie
    # the bidirectional LSTM's output is [forward | backward]: the head reads the units twice
    assert sorted(s.offset for s in by_producer["lstm"].consumers) == [0, 6]
    head = by_producer["head"]
    assert head.blocked and "no such channels" in head.blocked  # multiplies the input x


def test_removal_shrinks_every_tensor_and_keeps_the_output_shape(wired) -> None:
    model, x = wired
    groups = _groups(model, x)
    pruned = remove_channels(model, groups, _half(groups))
    assert (pruned.stem.out_channels, pruned.skip.out_channels) == (8, 8)
    assert pruned.grouped.weight.shape == (8, 2, 3) and pruned.grouped.groups == 4
    assert pruned.depthwise.weight.shape == (8, 1, 3) and pruned.depthwise.groups == 8
    assert pruned.norm.running_mean.shape == (12,) and pruned.norm.num_features == 12
    assert pruned.up.weight.shape == (12, 6, 4) and pruned.up.out_channels == 6
    assert pruned.down.weight.shape == (8, 3, 4) and pruned.down.groups == 2
    assert pruned.ln.weight.shape == (8,)
    assert pruned.rnn.hidden_size == 6 and pruned.rnn.weight_ih_l1.shape == (18, 6)
    assert pruned.lstm.weight_ih_l0.shape == (12, 6) and pruned.lstm.hidden_size == 3
    assert pruned.head.in_features == 6
    assert model.stem.out_channels == 16  # the input module is untouched
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    assert count_macs(pruned, x) < count_macs(model, x) / 2


def test_pruned_model_exports_to_a_valid_onnx_graph(wired, tmp_path) -> None:
    model, x = wired
    groups = _groups(model, x)
    pruned = remove_channels(model, groups, _half(groups))
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(pruned, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = pruned(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5)


class Dead(nn.Module):
    """Conv -> grouped ConvTranspose -> GRU -> Linear with a residual add, no norms, so a
    channel whose producers are zero contributes exactly nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(3, 8, 3, padding=1)
        self.b = nn.Conv1d(3, 8, 1)
        self.up = nn.ConvTranspose1d(8, 8, 3, padding=1, groups=2)
        self.gru = nn.GRU(8, 10, batch_first=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x)) + torch.relu(self.b(x))
        h = torch.relu(self.up(h))
        seq, _ = self.gru(h.transpose(1, 2))
        return x * self.fc(seq).transpose(1, 2)


def test_removing_dead_channels_changes_nothing() -> None:
    torch.manual_seed(1)
    model = Dead().eval()
    dead = {"a": [1, 6], "up": [0, 5], "gru": [2, 3, 9]}
    with torch.no_grad():
        for conv in (model.a, model.b):
            conv.weight[dead["a"]] = 0
            conv.bias[dead["a"]] = 0
        model.up.weight[:, [0, 1]] = 0  # output 0 (group 0) and 5 (group 1, column 1)
        model.up.bias[dead["up"]] = 0
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            rows = torch.tensor(dead["gru"])
            getattr(model.gru, name)[torch.cat([rows, rows + 10, rows + 20])] = 0
    x = torch.randn(2, 3, 20)
    groups = _groups(model, x)
    by_producer = {s.path: g for g in groups for s in g.producers}
    removal = {by_producer[p].id: idx for p, idx in dead.items()}
    pruned = remove_channels(model, groups, removal)
    assert pruned.up.weight.shape == (6, 3, 3) and pruned.gru.hidden_size == 7
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-6)


def test_uneven_or_blocked_removals_are_refused(wired) -> None:
    model, x = wired
    groups = _groups(model, x)
    stem = next(g for g in groups if any(s.path == "stem" for s in g.producers))
    with pytest.raises(ValueError, match="even"):
        remove_channels(model, groups, {stem.id: [0]})  # 1 channel from 4 slices
    head = next(g for g in groups if not g.prunable)
    with pytest.raises(ValueError, match="blocked"):
        remove_channels(model, groups, {head.id: [0]})


@pytest.mark.parametrize("criterion", ["l1", "l2", "activation"])
@pytest.mark.parametrize("scope", ["per-layer", "global"])
def test_selection_respects_slices_ties_and_mac_targets(wired, criterion, scope) -> None:
    model, x = wired
    groups = _groups(model, x)
    scores = importance(model, groups, criterion, [x])
    rules = SelectionRules(scope=scope, round_to=1)
    removal = select(groups, scores, 0.5, rules)
    by_id = {g.id: g for g in groups}
    for gid, indices in removal.items():
        group = by_id[gid]
        per = group.size // group.slices
        counts = {s: sum(1 for i in indices if i // per == s) for s in range(group.slices)}
        assert len(set(counts.values())) == 1 and len(indices) < group.size
    rnn = [len(removal.get(g.id, ())) for g in groups if g.tie == "rnn"]
    assert len(set(rnn)) == 1  # both GRU layers lose as many units
    selection = select_for_macs(model, groups, scores, 0.4, rules, x)
    assert selection.macs_reduction >= 0.4
    pruned = remove_channels(model, groups, selection.removal)
    assert 1 - count_macs(pruned, x) / count_macs(model, x) == pytest.approx(
        selection.macs_reduction)
    assert select(groups, scores, 0.0, rules) == {}


def test_tiny_spectral_model_prunes_through_stft_and_mask() -> None:
    model = tiny_module()
    wav = torch.randn(2, 16000) * 0.1
    groups = _groups(model, wav)
    prunable = [g for g in groups if g.prunable]
    # conv and GRU outputs are joined by the residual add; the grouped deconv's output is
    # prunable; the output conv's channels multiply the spectrum and stay
    assert len(prunable) == 2
    joined = next(g for g in prunable if len(g.producers) == 2)
    assert {s.path for s in joined.producers} == {"core.conv", "core.gru"}
    pruned = remove_channels(model, groups, _half(groups))
    assert pruned.core.gru.hidden_size == 4 and pruned.core.deconv.out_channels == 2
    with torch.no_grad():
        assert pruned(wav).shape == wav.shape


def test_conform_to_state_rebuilds_a_pruned_and_shallower_model(wired) -> None:
    model, x = wired
    groups = _groups(model, x)
    pruned = remove_channels(model, groups, _half(groups))
    drop_rnn_layers(pruned.rnn, 1)
    rebuilt = conform_to_state(model, pruned.state_dict())
    assert rebuilt.rnn.num_layers == 1 and rebuilt.grouped.groups == 4
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned(x), rtol=0, atol=0)


class _Gaps(nn.Module):
    """Wirings the analysis must block, not prune: each used to crash the rewritten model."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.fc = nn.Linear(4, 8)
        self.gru = nn.GRU(8, 8, num_layers=2, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True, proj_size=4)
        self.ln = nn.LayerNorm(8, elementwise_affine=False)
        self.conv = nn.Conv1d(4, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, 4]
        h = torch.relu(self.fc(x))
        if self.case == "index":
            h = h[:, :, torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])]
        elif self.case == "projection":
            h = self.lstm(h)[0].repeat(1, 1, 2)  # [B, T, proj 4] -> 8
        elif self.case == "state":
            h, _ = self.gru(h, torch.zeros(2, x.shape[0], 8))
        elif self.case == "final-state":
            _, state = self.gru(h)
            h = h + state[-1].unsqueeze(1)
        elif self.case == "plain-ln":
            h = self.ln(h)
        elif self.case == "squeeze":  # squeeze-excitation over time
            gate = torch.sigmoid(self.conv(x.transpose(1, 2)).mean(-1, keepdim=True)).squeeze(-1)
            h = h * gate.unsqueeze(1)
        elif self.case == "tied-output":  # the GRU's last layer feeds the output: blocked
            return x * self.gru(h)[0][..., :4]
        return x * torch.sigmoid(self.head(h))


@pytest.mark.parametrize("case", ["index", "projection", "state", "final-state", "plain-ln",
                                  "squeeze", "tied-output"])
def test_unknown_wirings_block_instead_of_breaking_the_model(case: str) -> None:
    torch.manual_seed(0)
    model = _Gaps(case).eval()
    x = torch.randn(2, 6, 4)
    groups = _groups(model, x)
    pruned = remove_channels(model, groups, _half(groups))
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    by_path = {s.path: g for g in groups for s in g.producers if s.role != "rnn_layer"}
    if case in ("state", "final-state", "tied-output"):  # every layer of the GRU stays whole
        assert all(not g.prunable for g in groups if g.tie == "gru")
        assert pruned.gru.hidden_size == 8
    if case in ("index", "plain-ln"):
        assert not by_path["fc"].prunable
    if case == "projection":
        assert "lstm" not in by_path and not by_path["fc"].prunable
