"""distill: the scaled student really shrinks (width, depth), a user's student, determinism,
the case where there is nothing to scale, config errors. Tiny models; training is 10 steps of
2 x 0.25 s crops on a few generated wavs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from secompile.calibration.datasets import PairedFolder
from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.runtime.parity import parity_error
from secompile.models.spectral import SpectralEnhancer, StftSpec
from secompile.passes.distill import Distill, DistillPassConfig
from secompile.targets import get_target
from tests.conftest import TinyCore, noise_audio, randomize_batchnorm, speechlike, tiny_artifact

RATE = 16000
TRAIN = {"steps": 10, "batch_size": 2, "segment_seconds": 0.25, "eval_every": 5,
         "train_threads": 1}

STUDENT_CODE = '''
import torch
from torch import nn

from secompile.models.spectral import SpectralEnhancer, StftSpec


class MaskOnly(nn.Module):
    """A one-layer spectral mask: far smaller than the tiny teacher."""

    def __init__(self):
        super().__init__()
        self.mask = nn.Conv2d(2, 2, 1)

    def forward(self, spec):
        x = spec.permute(0, 3, 2, 1)
        return (x * torch.tanh(self.mask(x))).permute(0, 3, 2, 1)


def small():
    torch.manual_seed(0)
    return SpectralEnhancer(MaskOnly(), StftSpec(128, 64), 16000).eval()


class Halves(nn.Module):
    sample_rate = 16000

    def forward(self, wav):
        return wav[:, ::2]


def halves():
    return Halves()
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, PairedFolder]:
    """Unlabeled noisy training wavs, and 2 evaluation pairs (0 dB and 20 dB input SNR)."""
    root = tmp_path_factory.mktemp("distill")
    (root / "train").mkdir()
    for i in range(3):
        noisy = speechlike(1.0, i) + 0.5 * noise_audio(1.0, 10 + i)[0]
        sf.write(root / "train" / f"{i}.wav", noisy, RATE)
    for sub in ("clean", "noisy"):
        (root / "eval" / sub).mkdir(parents=True)
    for i, snr in enumerate((0.0, 20.0)):
        clean = speechlike(1.0, 100 + i)
        noise = noise_audio(1.0, 200 + i)[0]
        noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr / 10))
        sf.write(root / "eval" / "clean" / f"{i}.wav", clean, RATE)
        sf.write(root / "eval" / "noisy" / f"{i}.wav", clean + noise, RATE)
    return root / "train", PairedFolder.scan(root / "eval", RATE)


def _ctx(art: Artifact, workdir: Path, **kwargs) -> PassContext:
    return PassContext(target=get_target("cpu"), workdir=workdir, baseline=art,
                       parity_audio=noise_audio(), threads=1, **kwargs).with_pass_dir(0, "t")


@pytest.fixture(scope="module")
def half_width(data, tmp_path_factory):
    """The tiny model distilled into a half-width student (seed 0), with evaluation pairs."""
    train, evaluation = data
    art = tiny_artifact()
    cfg = DistillPassConfig(width=0.5, data=str(train), **TRAIN)
    ctx = _ctx(art, tmp_path_factory.mktemp("work"), evaluation=evaluation)
    return art, cfg, Distill(cfg).run(art, ctx)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def deep_artifact() -> Artifact:
    """The tiny spectral model with a 2-layer GRU."""
    torch.manual_seed(0)
    core = TinyCore()
    core.gru = nn.GRU(8, 8, num_layers=2, batch_first=True)
    module = SpectralEnhancer(randomize_batchnorm(core), StftSpec(128, 64), RATE).eval()
    return Artifact("torch", ModelInfo("deep", RATE, {"model": "deep", "weights": None}),
                    module=module, lineage=("load:deep",))


# --- structure -------------------------------------------------------------------------------


def test_half_width_student_has_half_the_channels(half_width) -> None:
    teacher, _, result = half_width
    assert result.modified and result.artifact.lineage[-1] == "distill"
    core = result.artifact.module.core
    assert core.conv.out_channels == 4 and core.gru.hidden_size == 4
    assert core.deconv.in_channels == 4 and core.deconv.out_channels == 2
    assert core.out.out_channels == 2, "the channels that reach the output stay"
    assert teacher.module.core.gru.hidden_size == 8, "the teacher must not be mutated"
    m = result.metrics
    assert m["student"] == "scaled"
    assert [(s["before"], s["after"]) for s in m["scaled"]] == [(8, 4), (4, 2)]
    # half the channels of every layer cut the counted MACs by more than 2x (2.65x here)
    assert m["macs_ratio"] >= 2
    assert m["params"]["after"] < m["params"]["before"] / 2
    assert m["fine_tune"]["steps"] == 10
    quality = m["quality"]
    assert quality["files"] == 2 and len(quality["buckets"]) == 2
    for bucket in quality["buckets"].values():
        assert set(bucket["delta"]) == {"si_sdr", "pesq", "stoi"}
    wav = torch.as_tensor(noise_audio(0.6, 4))
    with torch.inference_mode():
        assert result.artifact.module(wav).shape == wav.shape


def test_depth_one_keeps_the_lower_gru_layer(make_ctx) -> None:
    art = deep_artifact()
    result = Distill(DistillPassConfig(width=1.0, depth=1, steps=0)).run(art, make_ctx(art))
    gru = result.artifact.module.core.gru
    assert gru.num_layers == 1 and gru.hidden_size == 8
    assert not hasattr(gru, "weight_ih_l1")
    assert art.module.core.gru.num_layers == 2, "the teacher must not be mutated"
    assert result.metrics["scaled"] == [
        {"rnn": "core.gru", "layers_before": 2, "layers_after": 1}]
    assert result.metrics["params"]["after"] < result.metrics["params"]["before"]
    # init=teacher: the student's kept layer is the teacher's first layer
    teacher_gru = art.module.core.gru
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert torch.equal(getattr(gru, name), getattr(teacher_gru, name))
    wav = torch.as_tensor(noise_audio(0.5, 5))
    with torch.inference_mode():
        assert result.artifact.module(wav).shape == wav.shape


def test_dead_channels_make_a_student_identical_to_its_teacher(make_ctx) -> None:
    # numerical parity: when channels {0, 1, 4, 5} of the conv/GRU group and {0, 2} of the
    # deconv group contribute nothing (every weight writing or reading them zero), the
    # half-width student keeps exactly the others: without training, the teacher's output
    art = tiny_artifact()
    core = art.module.core
    with torch.no_grad():
        core.conv.weight[[0, 1, 4, 5]] = 0
        core.conv.bias[[0, 1, 4, 5]] = 0
        core.bn.running_mean[[0, 1, 4, 5]] = 0
        core.bn.bias[[0, 1, 4, 5]] = 0
        rows = [g * 8 + c for g in range(3) for c in (0, 1, 4, 5)]
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(core.gru, name)[rows] = 0
        core.gru.weight_ih_l0[:, [0, 1, 4, 5]] = 0
        core.gru.weight_hh_l0[:, [0, 1, 4, 5]] = 0
        core.deconv.weight[[0, 1, 4, 5]] = 0
        core.deconv.weight[:, [0]] = 0
        core.deconv.bias[[0, 2]] = 0
        core.bn2.running_mean[[0, 2]] = 0
        core.bn2.bias[[0, 2]] = 0
        core.out.weight[:, [0, 2]] = 0
    result = Distill(DistillPassConfig(width=0.5, steps=0)).run(art, make_ctx(art))
    assert result.artifact.module.core.gru.hidden_size == 4
    assert parity_error(art, result.artifact, noise_audio(), 1) <= 1e-5


def test_nothing_to_scale_is_an_error(tiny, make_ctx) -> None:
    # the tiny model has a 1-layer GRU: depth=1 alone scales nothing, and distill says so
    with pytest.raises(ConfigError, match="nothing to scale"):
        Distill(DistillPassConfig(width=1.0, depth=1, steps=0)).run(tiny, make_ctx(tiny))


class _Fir(nn.Module):
    """A waveform FIR filter: its only conv writes the output, so no channel group is
    prunable."""

    sample_rate = RATE

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 9, padding=4)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.conv(wav.unsqueeze(1)).squeeze(1)


def test_no_prunable_channel_group_is_an_error(make_ctx) -> None:
    torch.manual_seed(0)
    art = Artifact("torch", ModelInfo("fir", RATE, {"model": "fir", "weights": None}),
                   module=_Fir().eval())
    with pytest.raises(ConfigError, match="nothing to scale"):
        Distill(DistillPassConfig(width=0.5, steps=0)).run(art, make_ctx(art))


# --- user student ----------------------------------------------------------------------------


def test_user_student_is_trained(tiny, make_ctx, data, tmp_path) -> None:
    train, _ = data
    path = tmp_path / "student.py"
    path.write_text(STUDENT_CODE)
    cfg = DistillPassConfig(student=f"{path}:small", data=str(train), **TRAIN)
    result = Distill(cfg).run(tiny, make_ctx(tiny))
    student = result.artifact.module
    assert type(student.core).__name__ == "MaskOnly"
    assert result.metrics["student"] == f"{path}:small" and result.metrics["scaled"] == []
    assert result.metrics["macs_ratio"] > 1
    assert result.metrics["fine_tune"]["best_step"] > 0
    fresh = Distill(DistillPassConfig(student=f"{path}:small", steps=0)).run(
        tiny, make_ctx(tiny)).artifact.module
    assert not _same(student.state_dict(), fresh.state_dict()), "the student was not trained"


def test_user_student_must_keep_the_waveform_shape(tiny, make_ctx, tmp_path) -> None:
    path = tmp_path / "student.py"
    path.write_text(STUDENT_CODE)
    with pytest.raises(ConfigError, match=r"maps \[2, \d+\] to \[2, \d+\]"):
        Distill(DistillPassConfig(student=f"{path}:halves", steps=0)).run(tiny, make_ctx(tiny))
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        Distill(DistillPassConfig(student=f"{path}:missing", steps=0)).run(tiny, make_ctx(tiny))
    with pytest.raises(ConfigError, match="not found"):
        Distill(DistillPassConfig(student=f"{tmp_path}/none.py:small", steps=0)).run(
            tiny, make_ctx(tiny))


# --- determinism and data ----------------------------------------------------------------------


def test_training_is_deterministic_for_a_seed(half_width, tmp_path) -> None:
    teacher, cfg, first = half_width
    assert first.metrics["fine_tune"]["best_step"] > 0, "training kept the initial weights"
    # evaluation pairs only score the result, so this run goes without them
    again = Distill(cfg).run(teacher, _ctx(teacher, tmp_path))
    assert _same(first.artifact.module.state_dict(), again.artifact.module.state_dict())


def test_training_needs_audio(tiny, make_ctx) -> None:
    with pytest.raises(ConfigError, match="--calib"):
        Distill(DistillPassConfig(width=0.5, steps=5, data="calibration")).run(
            tiny, make_ctx(tiny))


# --- config errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"width": 0.0}, "width must be in"),
    ({"width": 1.5}, "width must be in"),
    ({"width": 1.0}, "width=1 and depth=0"),
    ({"depth": -1}, "depth must be >= 0"),
    ({"init": "zeros"}, "init must be one of"),
    ({"student": "student.pt"}, "student must be FILE.py:factory"),
    ({"student": "student.py"}, "student must be FILE.py:factory"),
    ({"lr": 2.0}, "lr must be in"),
    ({"teacher": "x"}, "unknown option 'teacher'"),
])
def test_config_errors_name_the_field(options, message) -> None:
    with pytest.raises(ConfigError, match=rf"pass 'distill': {message}"):
        DistillPassConfig.from_options(options, "distill")


def test_width_one_is_fine_with_a_depth_or_a_student() -> None:
    assert DistillPassConfig(width=1.0, depth=1).depth == 1
    assert DistillPassConfig(width=1.0, student="s.py:make").student == "s.py:make"
    with pytest.raises(ConfigError, match="width=1 and depth=0"):
        DistillPassConfig(width=1.0)
