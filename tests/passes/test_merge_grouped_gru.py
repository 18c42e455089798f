"""merge-grouped-gru: structure, the modified flag, exact parity, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.runtime.parity import parity_error
from secompile.passes.merge_grouped_gru import (
    MergedGroupedGru,
    MergeGroupedGru,
    MergeGroupedGruConfig,
)
from tests.conftest import GTCRN_DIR, noise_audio, requires_shared


class Grouped(nn.Module):
    def __init__(self, groups: int, bidirectional: bool, use_state: bool = False) -> None:
        super().__init__()
        self.rnns = nn.ModuleList(
            nn.GRU(4, 3, batch_first=True, bidirectional=bidirectional) for _ in range(groups))
        self.use_state = use_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, len(self.rnns), dim=-1)
        outs = [rnn(p) for rnn, p in zip(self.rnns, parts, strict=True)]
        y = torch.cat([o[0] for o in outs], dim=-1)
        return y + outs[0][1].mean() if self.use_state else y


class Wave(nn.Module):
    """Waveform model around a grouped GRU: 200-sample frames projected to its input."""

    frame = 200

    def __init__(self, inner: Grouped, groups: int) -> None:
        super().__init__()
        self.inner, self.sample_rate = inner, 16000
        hidden = inner.rnns[0].hidden_size * groups * (2 if inner.rnns[0].bidirectional else 1)
        self.inp = nn.Linear(self.frame, 4 * groups)
        self.out = nn.Linear(hidden, self.frame)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        b, n = wav.shape
        frames = wav[:, : n - n % self.frame].reshape(b, -1, self.frame)
        y = self.out(self.inner(self.inp(frames))).reshape(b, -1)
        return torch.nn.functional.pad(y, (0, n - y.shape[1]))


def _artifact(module: nn.Module) -> Artifact:
    info = ModelInfo("grouped", 16000, {"model": "x", "weights": None})
    return Artifact("torch", info, module=module.eval())


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_merges_into_one_gru_with_identical_output(groups, bidirectional, make_ctx) -> None:
    torch.manual_seed(groups)
    art = _artifact(Wave(Grouped(groups, bidirectional), groups))
    result = MergeGroupedGru().run(art, make_ctx(art))
    assert result.modified and result.metrics["merged"] == 1
    grus = [m for m in result.artifact.module.modules() if isinstance(m, nn.GRU)]
    assert len(grus) == 1 and grus[0].hidden_size == 3 * groups
    assert isinstance(result.artifact.module.inner, MergedGroupedGru)
    assert sum(isinstance(m, nn.GRU) for m in art.module.modules()) == groups, "input untouched"
    assert parity_error(art, result.artifact, noise_audio(0.5), 1) <= 1e-6


def test_final_state_in_use_is_not_merged(make_ctx) -> None:
    art = _artifact(Wave(Grouped(2, False, use_state=True), 2))
    result = MergeGroupedGru().run(art, make_ctx(art))
    assert not result.modified and result.artifact is art


def test_model_without_grouped_gru_is_not_modified(tiny, make_ctx) -> None:
    result = MergeGroupedGru().run(tiny, make_ctx(tiny))
    assert not result.modified and result.metrics == {"merged": 0}


@requires_shared
def test_gtcrn_grouped_dual_path_rnns(make_ctx) -> None:
    from secompile.models.registry import load_model

    art = load_model("gtcrn", GTCRN_DIR / "gtcrn_dns3.pt")
    result = MergeGroupedGru().run(art, make_ctx(art))
    assert result.metrics["merged"] == 4  # intra and inter RNN of both DPGRNN blocks
    assert parity_error(art, result.artifact, noise_audio(2.0), 1) <= 1e-5


@pytest.mark.parametrize("options", [{"parity_tolerance": 0}, {"groups": 2}])
def test_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match="merge-grouped-gru"):
        MergeGroupedGruConfig.from_options(options, "merge-grouped-gru")
