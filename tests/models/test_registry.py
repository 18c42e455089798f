"""Tests for the model registry and loader (``models.registry``)."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.errors import ModelError
from secompile.models.registry import REGISTRY, describe_models, load_model, load_state_dict
from tests.conftest import SHARED_DATA as DATA

GTCRN_DIR = DATA / "models" / "gtcrn"
VCTK = GTCRN_DIR / "gtcrn_vctk.pt"
ULUNAS = DATA / "models" / "ulunas" / "ulunas_dns3.pt"
needs_gtcrn = pytest.mark.skipif(
    not VCTK.is_file(), reason=f"shared GTCRN checkpoints not found in {GTCRN_DIR}"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_error(ref, weights=None) -> ModelError:
    with pytest.raises(ModelError) as info:
        load_model(ref, weights=weights)
    assert info.value.exit_code == 2
    return info.value


@pytest.fixture(scope="module")
def vctk_state() -> dict[str, torch.Tensor]:
    if not VCTK.is_file():
        pytest.skip(f"shared GTCRN checkpoints not found in {GTCRN_DIR}")
    return torch.load(VCTK, map_location="cpu", weights_only=True)


# --- registry names -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vctk_artifact() -> Artifact:
    if not VCTK.is_file():
        pytest.skip(f"shared GTCRN checkpoints not found in {GTCRN_DIR}")
    return load_model("gtcrn", weights=str(VCTK))  # a str path works too


def test_gtcrn_with_vctk_weights(vctk_artifact: Artifact) -> None:
    artifact = vctk_artifact
    assert isinstance(artifact, Artifact)
    assert artifact.format == "torch"
    assert isinstance(artifact.module, nn.Module)
    assert not artifact.module.training
    info = artifact.info
    assert info.name == "gtcrn"
    assert info.sample_rate == 16000
    assert info.weights_sha256 == _sha256(VCTK)
    assert info.source == {"model": "gtcrn", "weights": str(VCTK.resolve())}
    assert info.stft is not None and info.stft["n_fft"] == 512 and info.stft["hop"] == 256
    assert info.params == 48245
    assert artifact.lineage == ("load:gtcrn",)


def test_gtcrn_weights_really_loaded(vctk_artifact: Artifact, vctk_state) -> None:
    loaded = vctk_artifact.module.core.state_dict()
    assert set(loaded) == set(vctk_state)
    for name in ("encoder.en_convs.0.conv.weight", "erb.erb_fc.weight"):
        assert torch.equal(loaded[name], vctk_state[name])


@needs_gtcrn
@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_wrapped_checkpoint_loads(tmp_path: Path, vctk_state, key: str) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({key: vctk_state, "epoch": 3}, path)
    artifact = load_model("gtcrn", weights=path)
    assert artifact.info.weights_sha256 == _sha256(path)
    loaded = artifact.module.core.state_dict()["erb.erb_fc.weight"]
    assert torch.equal(loaded, vctk_state["erb.erb_fc.weight"])


def test_gtcrn_without_weights() -> None:
    error = _model_error("gtcrn")
    assert "gtcrn" in str(error) and "--weights" in str(error)


def test_unknown_model_lists_known_models() -> None:
    error = _model_error("no-such-model")
    message = str(error)
    assert "no-such-model" in message
    for name in REGISTRY:
        assert name in message


def test_describe_models_covers_registry() -> None:
    assert [name for name, _ in describe_models()] == list(REGISTRY)
    assert "gtcrn" in REGISTRY


# --- bad checkpoints --------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    error = _model_error("gtcrn", weights=missing)
    assert str(missing) in str(error) and "not found" in str(error)


def test_checkpoint_path_is_a_directory(tmp_path: Path) -> None:
    error = _model_error("gtcrn", weights=tmp_path)
    assert str(tmp_path) in str(error)


def _random_bytes(path: Path, source: Path | None) -> None:
    # Seeded: some byte strings trip the pickle reader in other ways (tested below).
    gen = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=gen).tolist()))


def _text(path: Path, source: Path | None) -> None:
    path.write_text("definitely not a checkpoint\n")


def _empty(path: Path, source: Path | None) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, source: Path | None) -> None:
    if source is None or not source.is_file():
        pytest.skip(f"shared GTCRN checkpoints not found in {GTCRN_DIR}")
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make", [_random_bytes, _text, _empty, _truncated], ids=["random", "text", "empty", "half"]
)
def test_corrupt_checkpoint(tmp_path: Path, make) -> None:
    path = tmp_path / "broken.pt"
    make(path, VCTK)
    error = _model_error("gtcrn", weights=path)
    assert str(path) in str(error)


@pytest.mark.parametrize(
    "payload", [b".", b"h\x05", b"J\x00"], ids=["stop-on-empty-stack", "bad-memo", "short-int"]
)
def test_tiny_corrupt_checkpoints(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "tiny.pt"
    path.write_bytes(payload)
    with pytest.raises(ModelError) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


def test_checkpoint_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"lr": 0.1, "epoch": 3}, path)
    error = _model_error("gtcrn", weights=path)
    assert str(path) in str(error) and "state_dict" in str(error)


def test_checkpoint_that_is_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    assert str(path) in str(_model_error("gtcrn", weights=path))


def test_wrong_architecture_linear(tmp_path: Path) -> None:
    path = tmp_path / "linear.pt"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    message = str(_model_error("gtcrn", weights=path))
    assert str(path) in message
    assert "does not match" in message and "gtcrn" in message


@pytest.mark.skipif(not ULUNAS.is_file(), reason=f"shared UL-UNAS checkpoint not found: {ULUNAS}")
def test_wrong_architecture_ulunas_as_gtcrn() -> None:
    message = str(_model_error("gtcrn", weights=ULUNAS))
    assert str(ULUNAS) in message and "does not match" in message


def test_wrong_shapes(tmp_path: Path, vctk_state) -> None:
    state = dict(vctk_state)
    state["erb.erb_fc.weight"] = torch.zeros(3, 3)
    path = tmp_path / "reshaped.pt"
    torch.save(state, path)
    message = str(_model_error("gtcrn", weights=path))
    assert str(path) in message and "does not match" in message
    assert "erb.erb_fc.weight" in message


def test_missing_key(tmp_path: Path, vctk_state) -> None:
    state = dict(vctk_state)
    del state["erb.erb_fc.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    message = str(_model_error("gtcrn", weights=path))
    assert "does not match" in message and "1 missing" in message


# --- unsafe pickles ----------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this runs a shell command (the classic malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _PlainObject:
    """An arbitrary class instance: not code by itself, but not allowed in a weights file."""

    def __init__(self) -> None:
        self.weight = torch.zeros(2)


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, path)
    message = str(_model_error("gtcrn", weights=path))
    assert str(path) in message and "refusing" in message
    assert not marker.exists(), "the checkpoint's code was executed"


def test_code_payload_is_live(tmp_path: Path) -> None:
    """Control for the test above: unsafe loading does run the payload."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_RunsCode(marker), path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_custom_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save(_PlainObject(), path)
    message = str(_model_error("gtcrn", weights=path))
    assert str(path) in message and "refusing" in message


def test_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    assert "refusing" in str(_model_error("gtcrn", weights=path))


# --- paths given as the model -------------------------------------------------------------------


def test_existing_non_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)  # a zip, but a state_dict, not TorchScript
    message = str(_model_error(str(path)))
    assert str(path) in message and "TorchScript" in message
    assert "gtcrn" in message  # lists the known models


def test_existing_random_file_as_model(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00\x01\x02" * 100)
    assert "not a TorchScript" in str(_model_error(str(path)))


class _Doubler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sample_rate = 8000
        self.gain = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def test_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "doubler.pt"
    torch.jit.save(torch.jit.script(_Doubler()), str(path))
    artifact = load_model(str(path))
    assert artifact.format == "torch"
    assert artifact.info.name == "doubler"
    assert artifact.info.sample_rate == 8000
    assert artifact.info.weights_sha256 == _sha256(path)
    assert artifact.info.params == 1
    assert not artifact.module.training
    x = torch.ones(1, 4)
    torch.testing.assert_close(artifact.module(x), 2 * x)


# --- FILE.py:factory ---------------------------------------------------------------------------

FACTORY_SOURCE = """
import torch
from torch import nn


class Tiny(nn.Module):
    sample_rate = 8000

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.gain


def build():
    return Tiny()


def not_a_module():
    return 42


def explode():
    raise ValueError("factory exploded")


NOT_CALLABLE = 5
"""


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(FACTORY_SOURCE)
    return path


def test_factory_loading(factory_file: Path) -> None:
    ref = f"{factory_file}:build"
    artifact = load_model(ref)
    assert artifact.format == "torch"
    assert type(artifact.module).__name__ == "Tiny"
    assert not artifact.module.training
    assert artifact.info.name == "my_model"
    assert artifact.info.sample_rate == 8000
    assert artifact.info.weights_sha256 is None
    assert artifact.info.source == {"model": ref, "weights": None}
    assert artifact.info.params == 1


def test_factory_with_weights(factory_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save({"gain": torch.full((1,), 3.0)}, weights)
    artifact = load_model(f"{factory_file}:build", weights=weights)
    assert artifact.module.gain.item() == 3.0
    assert artifact.info.weights_sha256 == _sha256(weights)


def test_factory_with_mismatching_weights(factory_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "other.pt"
    torch.save({"scale": torch.ones(1)}, weights)
    message = str(_model_error(f"{factory_file}:build", weights=weights))
    assert "does not match" in message and str(weights) in message


def test_factory_name_missing(factory_file: Path) -> None:
    message = str(_model_error(f"{factory_file}:no_such_factory"))
    assert "no_such_factory" in message and str(factory_file) in message


def test_factory_not_callable(factory_file: Path) -> None:
    assert "NOT_CALLABLE" in str(_model_error(f"{factory_file}:NOT_CALLABLE"))


def test_factory_returning_non_module(factory_file: Path) -> None:
    message = str(_model_error(f"{factory_file}:not_a_module"))
    assert "int" in message and "nn.Module" in message


def test_factory_that_raises(factory_file: Path) -> None:
    message = str(_model_error(f"{factory_file}:explode"))
    assert "factory exploded" in message


def test_factory_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "absent.py"
    message = str(_model_error(f"{missing}:build"))
    assert str(missing) in message and "not found" in message


def test_factory_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import a_module_that_does_not_exist_xyz\n")
    message = str(_model_error(f"{path}:build"))
    assert str(path) in message and "ModuleNotFoundError" in message


def test_factory_file_with_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "syntax.py"
    path.write_text("def build(:\n")
    assert "SyntaxError" in str(_model_error(f"{path}:build"))


def test_torchscript_with_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "doubler.pt"
    torch.jit.save(torch.jit.script(_Doubler()), str(path))
    message = str(_model_error(str(path), weights=path))
    assert "TorchScript archive with its own weights" in message
