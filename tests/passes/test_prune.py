"""prune: tensors really shrink, the modified flag (no-op, nothing removed, quality refusal),
parity where only dead channels go and of the ONNX export, fine-tuning determinism, config
errors. Tiny model; fine-tuning is 10 steps of 2 x 0.25 s crops on a few generated wavs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from torch import nn

from secompile.calibration.datasets import AudioFolder, PairedFolder
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pipeline import PipelineSpec
from secompile.compiler.runtime.parity import parity_error
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.prune import Prune, PruneConfig
from secompile.targets import get_target
from tests.conftest import noise_audio, speechlike, tiny_artifact

RATE = 16000
# 10 steps, evaluated at 0, 5 and 10: enough for the weights to move, cheap on 2 shared cores
TRAIN = {"steps": 10, "batch_size": 2, "segment_seconds": 0.25, "eval_every": 5,
         "train_threads": 1}
# shape tests: no fine-tuning and no evaluation pairs, so no agreement floor either
SHRINK = {"ratio": 0.5, "round_to": 1, "steps": 0, "min_agreement_db": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_noisy_folder(folder: Path, files: int = 3, seconds: float = 1.0) -> Path:
    """Unlabeled noisy training audio."""
    folder.mkdir(parents=True)
    for i in range(files):
        noisy = speechlike(seconds, i) + noise_audio(seconds, 10 + i)[0] * 0.5
        sf.write(folder / f"{i}.wav", noisy, RATE)
    return folder


def write_pairs(root: Path, snrs: tuple[float, ...] = (0.0, 20.0)) -> PairedFolder:
    """clean/ and noisy/ pairs of 1 s, one per input SNR (so one per SNR bucket)."""
    for sub in ("clean", "noisy"):
        (root / sub).mkdir(parents=True)
    for i, snr in enumerate(snrs):
        clean = speechlike(1.0, 100 + i)
        noise = noise_audio(1.0, 200 + i)[0]
        noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr / 10))
        sf.write(root / "clean" / f"{i}.wav", clean, RATE)
        sf.write(root / "noisy" / f"{i}.wav", clean + noise, RATE)
    return PairedFolder.scan(root, RATE)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    return write_noisy_folder(tmp_path_factory.mktemp("prune") / "train")


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


# --- the modified flag -----------------------------------------------------------------------


def test_ratio_zero_is_a_no_op(tiny, make_ctx) -> None:
    before = _state(tiny.module)
    result = Prune(PruneConfig(ratio=0.0)).run(tiny, make_ctx(tiny))
    assert not result.modified
    assert result.artifact is tiny
    assert result.metrics["pruned_channels"] == 0 and "skipped" in result.metrics
    assert _same(before, tiny.module.state_dict())
    spec = PipelineSpec.parse("prune{ratio=0.0},export-onnx")
    assert [p.name for p in spec.passes] == ["prune", "export-onnx"]
    assert dict(spec.passes[0].options) == {"ratio": 0.0}
    (prune, _) = spec.resolve(get_target("cpu"))
    assert isinstance(prune, Prune) and prune.config.removes_nothing


def test_a_ratio_too_small_for_any_channel_does_not_modify(tiny, make_ctx) -> None:
    # 1% of an 8-channel group rounds to 0 channels: nothing to remove, no training data needed
    result = Prune(PruneConfig(ratio=0.01, round_to=1, steps=0)).run(tiny, make_ctx(tiny))
    assert not result.modified and result.artifact is tiny
    assert result.metrics["skipped"] == "the ratio removes no channel"


# --- structure ---------------------------------------------------------------------------------


def test_pruning_shrinks_tensors_and_still_exports(tiny, make_ctx) -> None:
    before = _state(tiny.module)
    ctx = make_ctx(tiny)
    result = Prune(PruneConfig(**SHRINK)).run(tiny, ctx)
    assert result.modified
    assert result.artifact.lineage[-1] == "prune"
    core = result.artifact.module.core
    assert core.gru.hidden_size == 4 and core.gru.input_size == 4  # 8 -> 4 (ratio 0.5)
    assert core.conv.out_channels == 4 and core.bn.num_features == 4
    assert core.deconv.in_channels == 4 and core.deconv.out_channels == 2  # 4 -> 2, 1 per group
    assert core.deconv.groups == 2 and core.bn2.num_features == 2 and core.out.in_channels == 2
    assert core.out.out_channels == 2, "the channels that reach the output stay"
    assert core.gru.weight_ih_l0.shape == (12, 4)
    assert _same(before, tiny.module.state_dict()), "the input module must not be mutated"
    m = result.metrics
    assert m["pruned_channels"] == 6
    assert m["params"]["after"] < m["params"]["before"] and m["params"]["reduction"] > 0.5
    assert m["macs_per_second"]["after"] < m["macs_per_second"]["before"]
    assert m["macs_per_second"]["reduction"] > 0.5
    assert m["quality"] is None and "fine_tune" not in m  # no pairs, steps=0
    wav = torch.as_tensor(noise_audio(0.7, 3))
    with torch.inference_mode():
        assert result.artifact.module(wav).shape == wav.shape
    exported = ExportOnnx().run(result.artifact, ctx.with_pass_dir(1, "export-onnx")).artifact
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model)
    (gru,) = [n for n in model.graph.node if n.op_type == "GRU"]
    assert {a.name: a.i for a in gru.attribute}["hidden_size"] == 4
    # parity of the export with the pruned torch model (not with the unpruned one)
    assert parity_error(result.artifact, exported, noise_audio(), 1) <= 1e-4


def _kill_low_half(module: nn.Module) -> nn.Module:
    """Make channels {0, 1, 4, 5} of the conv/GRU group and {0, 2} of the deconv group
    contribute exactly nothing (all their weights zero), so removing them keeps the output."""
    core = module.core
    dead, dead_out = [0, 1, 4, 5], [0, 2]  # evenly over the deconv's 2 groups
    with torch.no_grad():
        core.conv.weight[dead] = 0
        core.conv.bias[dead] = 0
        core.bn.running_mean[dead] = 0
        core.bn.bias[dead] = 0  # bn(0) = 0 and PReLU(0) = 0
        hidden = core.gru.hidden_size
        rows = [g * hidden + c for g in range(3) for c in dead]  # r, z, n gates of unit c
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(core.gru, name)[rows] = 0  # n_c = 0, so h_c stays 0
        core.gru.weight_ih_l0[:, dead] = 0
        core.gru.weight_hh_l0[:, dead] = 0
        core.deconv.weight[dead] = 0  # [in, out / groups, ...]: rows are input channels
        core.deconv.weight[:, [0]] = 0  # output 0 of each group: channels 0 and 2
        core.deconv.bias[dead_out] = 0
        core.bn2.running_mean[dead_out] = 0
        core.bn2.bias[dead_out] = 0
        core.out.weight[:, dead_out] = 0
    return module


def test_removing_dead_channels_keeps_the_output(make_ctx) -> None:
    art = tiny_artifact()
    _kill_low_half(art.module)
    result = Prune(PruneConfig(**SHRINK)).run(art, make_ctx(art))
    assert result.modified and result.metrics["pruned_channels"] == 6
    assert result.artifact.module.core.gru.hidden_size == 4
    assert parity_error(art, result.artifact, noise_audio(), 1) <= 1e-5


def test_macs_target_is_met(tiny, make_ctx) -> None:
    result = Prune(PruneConfig(macs_reduction=0.3, round_to=1, steps=0,
                               min_agreement_db=0.0)).run(
        tiny, make_ctx(tiny))
    assert result.modified
    assert result.metrics["macs_per_second"]["reduction"] >= 0.3
    assert 0 < result.metrics["ratio"] < 0.99  # searched, not the largest allowed removal


def test_global_scope_and_l1_also_shrink(tiny, make_ctx) -> None:
    cfg = PruneConfig(ratio=0.5, scope="global", criterion="l1", round_to=1, steps=0,
                      min_agreement_db=0.0)
    result = Prune(cfg).run(tiny, make_ctx(tiny))
    assert result.modified and result.metrics["scope"] == "global"
    assert result.metrics["params"]["after"] < result.metrics["params"]["before"]


# --- fine-tuning and data ----------------------------------------------------------------------


def test_fine_tuning_is_deterministic_for_a_seed(tiny, make_ctx, train_dir) -> None:
    cfg = PruneConfig(**SHRINK | TRAIN, data=str(train_dir))
    untrained = Prune(PruneConfig(**SHRINK)).run(tiny, make_ctx(tiny)).artifact.module
    first = Prune(cfg).run(tiny, make_ctx(tiny, seed=0))
    again = Prune(cfg).run(tiny, make_ctx(tiny, seed=0))
    other = Prune(cfg).run(tiny, make_ctx(tiny, seed=1))
    tune = first.metrics["fine_tune"]
    assert tune["steps"] == 10 and tune["stop_reason"] == "steps"
    assert tune["best_step"] > 0, "fine-tuning kept the untrained weights: nothing to compare"
    a = first.artifact.module.state_dict()
    assert _same(a, again.artifact.module.state_dict())
    assert not _same(a, other.artifact.module.state_dict())
    assert not _same(a, untrained.state_dict())


def test_activation_criterion_uses_calibration_audio(tiny, make_ctx, train_dir) -> None:
    calibration = AudioFolder.scan(train_dir, RATE)
    cfg = PruneConfig(ratio=0.5, criterion="activation", round_to=1, steps=0, batch_size=2,
                      min_agreement_db=0.0,
                      segment_seconds=0.25, data="calibration")
    result = Prune(cfg).run(tiny, make_ctx(tiny, calibration=calibration))
    assert result.modified and result.metrics["criterion"] == "activation"
    assert result.artifact.module.core.gru.hidden_size == 4


@pytest.mark.parametrize("options", [
    {"criterion": "activation", "steps": 0},  # activation importance needs audio
    {"steps": 5},  # so does fine-tuning
])
def test_calibration_data_without_calib_audio(tiny, make_ctx, options) -> None:
    cfg = PruneConfig(ratio=0.5, round_to=1, data="calibration", **options)
    with pytest.raises(ConfigError, match="--calib"):
        Prune(cfg).run(tiny, make_ctx(tiny))


def test_missing_training_folder(tiny, make_ctx, tmp_path) -> None:
    cfg = PruneConfig(**SHRINK | TRAIN, data=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="nowhere"):
        Prune(cfg).run(tiny, make_ctx(tiny))


# --- the quality guard -------------------------------------------------------------------------


def test_quality_guard_refuses_a_lossy_pruning(tiny, make_ctx, tmp_path) -> None:
    evaluation = write_pairs(tmp_path / "eval")
    ctx = make_ctx(tiny, evaluation=evaluation)
    strict = PruneConfig(ratio=0.75, round_to=1, steps=0, max_si_sdr_loss=0.0, max_pesq_loss=0.0)
    refused = Prune(strict).run(tiny, ctx)
    assert not refused.modified and refused.artifact is tiny
    assert re.match(r"(si_sdr|pesq) loss \d+\.\d+ in .* exceeds the limit 0\.0",
                    refused.metrics["refused"])
    quality = refused.metrics["quality"]
    assert quality["files"] == 2
    loose = PruneConfig(ratio=0.75, round_to=1, steps=0, max_si_sdr_loss=1000.0,
                        max_pesq_loss=5.0)
    accepted = Prune(loose).run(tiny, ctx)
    assert accepted.modified and "refused" not in accepted.metrics
    buckets = accepted.metrics["quality"]["buckets"]
    assert len(buckets) == 2  # 0 dB and 20 dB inputs
    for bucket in buckets.values():
        assert bucket["files"] == 1
        assert set(bucket["delta"]) == {"si_sdr", "pesq", "stoi"}
        assert bucket["delta"]["si_sdr"] == pytest.approx(
            bucket["after"]["si_sdr"] - bucket["before"]["si_sdr"], abs=1e-3)
    assert accepted.metrics["quality"]["delta"] == quality["delta"]  # same model, same pairs


# --- config errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"ratio": 1.0}, "ratio"),
    ({"ratio": -0.1}, "ratio"),
    ({"ratio": "half"}, "ratio"),
    ({"macs_reduction": 1.5}, "macs_reduction"),
    ({"scope": "local"}, "scope"),
    ({"criterion": "random"}, "criterion"),
    ({"max_layer_ratio": 1.0}, "max_layer_ratio"),
    ({"round_to": 0}, "round_to"),
    ({"max_pesq_loss": -1.0}, "max_pesq_loss"),
    ({"steps": -1}, "steps"),
    ({"segment_seconds": 0.01}, "segment_seconds"),
    ({"data": ""}, "data"),
    ({"sparsity": 0.5}, "sparsity"),
])
def test_config_errors_name_the_field(options, field) -> None:
    with pytest.raises(ConfigError, match=rf"pass 'prune'.*{field}"):
        PruneConfig.from_options(options, "prune")


def test_config_errors_direct_construction() -> None:
    with pytest.raises(ConfigError, match="ratio must be in"):
        PruneConfig(ratio=1.0)
    with pytest.raises(ConfigError, match="scope must be one of"):
        PruneConfig(scope="local")
    with pytest.raises(ConfigError, match="unknown option 'sparsity'"):
        PruneConfig.from_options({"sparsity": 0.5})


def test_without_pairs_a_pruned_model_far_from_the_original_is_refused(tiny, make_ctx) -> None:
    result = Prune(PruneConfig(ratio=0.5, round_to=1, steps=0)).run(tiny, make_ctx(tiny))
    assert not result.modified and result.artifact is tiny
    assert "min_agreement_db" in result.metrics["refused"]
    assert result.metrics["agreement_db"] < 20


def test_an_unreachable_mac_target_prunes_nothing_and_says_so(tiny, make_ctx) -> None:
    result = Prune(PruneConfig(macs_reduction=0.95, round_to=1, steps=0)).run(
        tiny, make_ctx(tiny))
    assert not result.modified and result.artifact is tiny
    assert "at most" in result.metrics["skipped"]
    assert result.metrics["macs_target"]["reachable"] < 0.95


def test_without_espeak_ng_the_default_data_leaves_the_model_unpruned(
        tiny, make_ctx, monkeypatch) -> None:
    from secompile.calibration import synthetic

    monkeypatch.setattr(synthetic.shutil, "which", lambda _: None)
    result = Prune(PruneConfig(ratio=0.5, round_to=1, steps=5)).run(tiny, make_ctx(tiny))
    assert not result.modified and result.artifact is tiny
    assert "espeak-ng" in result.metrics["skipped"]
