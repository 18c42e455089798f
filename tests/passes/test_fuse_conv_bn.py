"""fuse-conv-bn: structure, the modified flag, parity, config errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.runtime.parity import parity_error
from secompile.passes.fuse_conv_bn import FuseConvBn, FuseConvBnConfig, fold_batchnorm
from tests.conftest import GTCRN_DIR, noise_audio, randomize_batchnorm, requires_shared


def _bn_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_folds_every_pair_and_keeps_parity(tiny, make_ctx) -> None:
    ctx = make_ctx(tiny)
    result = FuseConvBn().run(tiny, ctx)
    assert result.modified
    assert result.metrics["fused"] == 2
    assert _bn_count(result.artifact.module) == 0
    assert _bn_count(tiny.module) == 2, "the input module must not be mutated"
    assert result.artifact.lineage[-1] == "fuse-conv-bn"
    assert parity_error(tiny, result.artifact, noise_audio(), 1) <= 1e-5


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("transposed", [False, True])
def test_fold_math_grouped_and_transposed(groups: int, transposed: bool) -> None:
    torch.manual_seed(groups)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = cls(8, 12, (3, 3), padding=1, groups=groups)
    bn = randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(12)), groups)[0]
    x = torch.randn(2, 8, 5, 7)
    expected = bn(conv(x))
    fused = copy.deepcopy(conv)
    fold_batchnorm(fused, bn)
    assert torch.allclose(fused(x), expected, atol=1e-5)


def test_no_batchnorm_means_not_modified(make_ctx) -> None:
    from tests.conftest import tiny_artifact

    art = tiny_artifact()
    for name in ("bn", "bn2"):
        art.module.core.set_submodule(name, nn.Identity())
    result = FuseConvBn().run(art, make_ctx(art))
    assert not result.modified
    assert result.metrics["fused"] == 0
    assert result.artifact is art


def test_conv_output_used_twice_is_not_folded(make_ctx) -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 1, 3, padding=1)
            self.bn = nn.BatchNorm1d(1)
            self.sample_rate = 16000

        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            y = self.conv(wav.unsqueeze(1))
            return (self.bn(y) + y).squeeze(1)  # the conv output has a second consumer

    module = Shared().eval()
    art = Artifact("torch", _info(), module=module)
    result = FuseConvBn().run(art, make_ctx(art))
    assert not result.modified


def _info():
    from secompile.compiler.core.artifact import ModelInfo

    return ModelInfo("shared", 16000, {"model": "x", "weights": None})


@requires_shared
def test_gtcrn_grouped_transposed_convs_fold_within_tolerance(make_ctx) -> None:
    from secompile.models.registry import load_model

    art = load_model("gtcrn", GTCRN_DIR / "gtcrn_dns3.pt")
    result = FuseConvBn().run(art, make_ctx(art))
    assert result.metrics["fused"] == 22  # 11 conv + 11 transposed conv, incl. grouped ones
    assert _bn_count(result.artifact.module) == 0
    assert parity_error(art, result.artifact, noise_audio(2.0), 1) <= 1e-5


@pytest.mark.parametrize("options", [{"parity_tolerance": 0}, {"parity_tolerance": "x"},
                                     {"tolerance": 1e-5}])
def test_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match="fuse-conv-bn"):
        FuseConvBnConfig.from_options(options, "fuse-conv-bn")
