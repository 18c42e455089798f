"""Fault suite, checkpoints: every bad file a user can hand a command that loads a model
(``build --weights``, ``profile``, ``enhance``, a TorchScript model) is a one-line ``error:``
naming the file and the problem, exit 2, no traceback; a pickle that carries code never runs.

Most probes corrupt the project's own shipped checkpoint (no shared data needed); the
"another model's weights" probes use the real GTCRN, UL-UNAS and NSNet2 files and are skipped
where ``../shared/data`` is absent.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shlex
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from secompile.compiler.core.errors import ModelError
from secompile.models.default import DEFAULT_WEIGHTS
from secompile.models.registry import load_model, load_state_dict
from tests.faults.harness import (
    SHARED_MODELS,
    CliResult,
    Observation,
    Probe,
    files_under,
    in_process,
    named_error,
)

AREA = "checkpoint"
GTCRN = SHARED_MODELS / "gtcrn" / "gtcrn_dns3.pt"
ULUNAS = SHARED_MODELS / "ulunas" / "ulunas_dns3.pt"
NSNET2 = SHARED_MODELS / "nsnet2" / "nsnet2-16k.onnx"


# --- making bad files (all under the probe's own folder) ------------------------------------


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker`` (a malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def truncated(tmp: Path) -> Path:
    """The shipped checkpoint cut to half its bytes (an interrupted download)."""
    data = DEFAULT_WEIGHTS.read_bytes()
    path = tmp / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def random_bytes(tmp: Path, seed: int = 0) -> Path:
    """4 KiB of (seeded) random bytes named like a checkpoint."""
    path = tmp / "random.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    return path


def empty(tmp: Path) -> Path:
    """A zero-byte checkpoint."""
    path = tmp / "empty.pt"
    path.touch()
    return path


def code_pickle(tmp: Path) -> tuple[Path, Path]:
    """A ``torch.save`` checkpoint whose pickle would run ``touch MARKER``; (file, marker)."""
    marker = tmp / "PWNED"
    path = tmp / "evil.pt"
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    torch.save({**state, "payload": RunsCode(marker)}, path)
    return path, marker


def edited_state(tmp: Path, name: str, edit: Callable[[dict], None]) -> Path:
    """The shipped state_dict with ``edit`` applied, saved as ``name``."""
    state = dict(torch.load(DEFAULT_WEIGHTS, weights_only=True))
    edit(state)
    path = tmp / name
    torch.save(state, path)
    return path


def first_key(state: dict) -> str:
    """The state_dict's first parameter name (the one the edits change)."""
    return next(iter(state))


class Halver(nn.Module):
    """A TorchScript-able waveform model."""

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Half the input."""
        return wav * 0.5


def torchscript(tmp: Path, name: str = "model.jit") -> Path:
    """A valid TorchScript archive (``torch.jit.save``)."""
    path = tmp / name
    torch.jit.save(torch.jit.script(Halver()), path)
    return path


def torchscript_truncated(tmp: Path) -> Path:
    """A TorchScript archive cut to half its bytes, named ``.pt``."""
    data = torchscript(tmp).read_bytes()
    path = tmp / "scripted.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def torchscript_garbled(tmp: Path) -> Path:
    """A TorchScript archive whose zip directory is intact but whose entries (its pickles
    and code) are garbage, named ``.pth``."""
    source = zipfile.ZipFile(torchscript(tmp))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith((".pkl", ".py")):
                data = b"garbage\x00\x01" + data[::-1]
            out.writestr(info, data)
    path = tmp / "garbled.pth"
    path.write_bytes(buffer.getvalue())
    return path


# --- probes ---------------------------------------------------------------------------------


def _env(tmp: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp / "xdg")}  # never the user's own cache


def build(tmp: Path, *args: str | os.PathLike) -> CliResult:
    """``secompile build`` with the cheapest pipeline, no cache, output under ``tmp``."""
    return in_process(["build", *args, "--out", tmp / "out", "--pipeline", "export-onnx",
                       "--no-cache", "--no-ray", "--quiet"], cwd=tmp, env=_env(tmp))


def profile(tmp: Path, *args: str | os.PathLike) -> CliResult:
    """``secompile profile`` (loads the model first; the cheapest command that does)."""
    return in_process(["profile", *args, "--seconds", "0.1", "--threads", "1"], cwd=tmp,
                      env=_env(tmp))


def no_output(tmp: Path, seen: Observation) -> Observation:
    """``seen``, failed if the build left any file in its output folder."""
    left = files_under(tmp / "out") if (tmp / "out").exists() else set()
    if left:
        return Observation(False, f"{seen.observed}; left {sorted(left)[:3]}")
    return seen


def probe_truncated(tmp: Path) -> Observation:
    path = truncated(tmp)
    return no_output(tmp, named_error(build(tmp, "default", "--weights", path),
                                      str(path), "truncated"))


def probe_random(tmp: Path) -> Observation:
    path = random_bytes(tmp)
    return named_error(profile(tmp, "default", "--weights", path), str(path),
                       "not a PyTorch checkpoint")


def silence_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A valid mono PCM16 wav of silence (so only the checkpoint can be at fault)."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(b"\x00\x00" * int(seconds * rate))
    return path


def probe_empty(tmp: Path) -> Observation:
    path = empty(tmp)
    result = in_process(["enhance", "default", silence_wav(tmp / "in.wav"), "-o",
                        tmp / "enhanced", "--weights", path], cwd=tmp, env=_env(tmp))
    seen = named_error(result, str(path), "empty")
    if (tmp / "enhanced").exists() and files_under(tmp / "enhanced"):
        return Observation(False, f"{seen.observed}; wrote {files_under(tmp / 'enhanced')}")
    return seen


def probe_code_pickle(tmp: Path) -> Observation:
    path, marker = code_pickle(tmp)
    seen = no_output(tmp, named_error(build(tmp, "default", "--weights", path), str(path),
                                      "refusing", "code"))
    if marker.exists():
        return Observation(False, f"THE CHECKPOINT'S CODE RAN; {seen.observed}")
    return Observation(seen.ok, f"{seen.observed} [payload did not run]")


def probe_missing_key(tmp: Path) -> Observation:
    path = edited_state(tmp, "partial.pt", lambda s: s.pop(first_key(s)))
    return named_error(profile(tmp, "default", "--weights", path), str(path),
                       "does not match", "1 missing")


def probe_wrong_shape(tmp: Path) -> Observation:
    def reshape(state: dict) -> None:
        state[first_key(state)] = torch.zeros(3, 3)

    path = edited_state(tmp, "reshaped.pt", reshape)
    return named_error(profile(tmp, "default", "--weights", path), str(path),
                       "does not match", "wrong shape")


def needs(path: Path) -> None:
    """Skip the probe (pytest and the fault table both report it) without the shared file."""
    if not path.is_file():
        pytest.skip(f"shared model not found: {path}")


def probe_ulunas_as_gtcrn(tmp: Path) -> Observation:
    needs(ULUNAS)
    return named_error(profile(tmp, "gtcrn", "--weights", ULUNAS), str(ULUNAS),
                       "does not match architecture 'gtcrn'")


def probe_onnx_as_gtcrn(tmp: Path) -> Observation:
    needs(NSNET2)
    return named_error(profile(tmp, "gtcrn", "--weights", NSNET2), str(NSNET2),
                       "is an ONNX model", "gtcrn")


def probe_torchscript_truncated(tmp: Path) -> Observation:
    path = torchscript_truncated(tmp)
    return named_error(profile(tmp, path), str(path), "truncated")


PROBES: list[Probe] = [
    Probe(AREA, "truncated checkpoint", "exit 2, names the file: truncated",
          probe_truncated),
    Probe(AREA, "random bytes as checkpoint", "exit 2, names the file: not a checkpoint",
          probe_random),
    Probe(AREA, "empty checkpoint", "exit 2, names the file: empty", probe_empty),
    Probe(AREA, "pickle that runs code", "exit 2, refused by name; the payload never runs",
          probe_code_pickle),
    Probe(AREA, "state_dict missing a key", "exit 2, names the file and the missing key",
          probe_missing_key),
    Probe(AREA, "tensor of the wrong shape", "exit 2, names the file, tensor and shapes",
          probe_wrong_shape),
    Probe(AREA, "UL-UNAS weights given to gtcrn", "exit 2, names the file: another model's",
          probe_ulunas_as_gtcrn),
    Probe(AREA, "NSNet2 onnx given to gtcrn", "exit 2, names the file: an ONNX model",
          probe_onnx_as_gtcrn),
    Probe(AREA, "truncated TorchScript model", "exit 2, names the file: truncated",
          probe_torchscript_truncated),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


# --- the loader, in process -----------------------------------------------------------------


def _refused(path: Path, arch: str = "default") -> str:
    with pytest.raises(ModelError) as info:
        load_model(arch, weights=path)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_with_code_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(RunsCode(marker), protocol=protocol))
    message = _refused(path)
    assert "refusing" in message and "system" in message
    assert not marker.exists(), "the checkpoint's code was executed"
    pickle.loads(path.read_bytes())  # control: the payload is live when unpickled unsafely
    assert marker.exists()


def test_torch_save_with_code_never_runs(tmp_path: Path) -> None:
    path, marker = code_pickle(tmp_path)
    assert "refusing" in _refused(path)
    assert not marker.exists()


def test_each_broken_file_is_named(tmp_path: Path) -> None:
    assert "truncated" in _refused(truncated(tmp_path))
    assert "empty (0 bytes)" in _refused(empty(tmp_path))
    assert "not a PyTorch checkpoint" in _refused(random_bytes(tmp_path))
    for seed in range(1, 12):  # whatever the bytes make torch.load raise, the message is one
        with pytest.raises(ModelError, match="or not a PyTorch checkpoint: torch.load cannot"):
            load_state_dict(random_bytes(tmp_path, seed))
    assert "TorchScript archive, not a checkpoint" in _refused(torchscript(tmp_path))
    shaped = edited_state(tmp_path, "s.pt", lambda s: s.update({first_key(s): torch.zeros(2)}))
    assert "[2] in the checkpoint" in _refused(shaped)


def test_torchscript_model_faults_are_model_errors(tmp_path: Path) -> None:
    for path, needle in ((torchscript_truncated(tmp_path), "truncated"),
                         (torchscript_garbled(tmp_path), "TorchScript archive")):
        with pytest.raises(ModelError, match=needle):
            load_model(str(path))
    assert load_model(str(torchscript(tmp_path, "ok.jit"))).format == "torch"  # control


def test_valid_checkpoint_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "copy.pt"
    path.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    assert load_state_dict(path) and load_model("default", weights=path).format == "torch"


@pytest.mark.skipif(not NSNET2.is_file(), reason=f"shared model not found: {NSNET2}")
def test_onnx_weights_are_named_not_unpickled() -> None:
    message = _refused(NSNET2, "gtcrn")
    assert "is an ONNX model" in message and "nsnet2" in message
