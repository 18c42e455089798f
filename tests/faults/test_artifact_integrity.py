"""Fault probes: an artifact whose bytes no longer match the sha256 its build recorded.

``secompile enhance`` and ``secompile.load`` check ``model.onnx`` (and ``model_stream.onnx``)
against the ``manifest.json`` the build wrote beside it and refuse a changed file with one
line naming it and both hashes (exit 2); ``--no-verify`` / ``verify=False`` run it anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import secompile
from secompile.compiler.core.artifact import file_sha256, verify_artifact
from secompile.compiler.core.errors import ModelError
from tests.faults._artifact import copy_of_build
from tests.faults.harness import Observation, Probe, files_under, named_error
from tests.faults.harness import secompile as cli

RATE = 16000


def _tampered(tmp: Path) -> tuple[Path, str, str]:
    """A build copy whose model.onnx had one metadata byte changed: the path, the hash the
    manifest records and the file's hash now. The change keeps the file loadable ONNX, so
    only the hash check can notice it."""
    model = copy_of_build(tmp) / "cpu" / "model.onnx"
    recorded = json.loads((model.parent / "manifest.json").read_text())["sha256"]
    data = bytearray(model.read_bytes())
    at = data.rfind(b"secompile.model")
    data[at + len("secompile.mode")] ^= 0x20  # 'l' -> 'L' in a metadata key
    model.write_bytes(bytes(data))
    return model, recorded, file_sha256(model)


def _noisy(tmp: Path) -> Path:
    path = tmp / "noisy.wav"
    wav = 0.1 * np.random.default_rng(0).standard_normal(RATE).astype(np.float32)
    sf.write(path, wav, RATE, subtype="FLOAT")
    return path


def probe_enhance_refuses(tmp: Path) -> Observation:
    model, recorded, actual = _tampered(tmp)
    out = tmp / "enhanced"
    result = cli(["enhance", model, _noisy(tmp), "-o", out])
    seen = named_error(result, str(model), recorded, actual, "--no-verify")
    if out.exists() and files_under(out):
        return Observation(False, f"{seen.observed}; but wrote {sorted(files_under(out))}")
    return seen


def probe_no_verify_overrides(tmp: Path) -> Observation:
    model, _, _ = _tampered(tmp)
    out = tmp / "enhanced"
    result = cli(["enhance", model.parent.parent, _noisy(tmp), "-o", out, "--no-verify"])
    ok = result.exit_code == 0 and (out / "noisy.wav").is_file()
    return Observation(ok, f"exit {result.exit_code}: wrote {sorted(files_under(out))}"
                       if ok else result.summary())


def probe_api_verifies(tmp: Path) -> Observation:
    model, recorded, actual = _tampered(tmp)
    try:
        secompile.load(model)
    except ModelError as exc:
        message = str(exc)
        ok = str(model) in message and recorded in message and actual in message
        unchecked = secompile.load(model, verify=False).enhance(np.zeros(RATE, np.float32))
        ok = ok and unchecked.shape == (RATE,)
        return Observation(ok, f"ModelError: {message[:120]}...; verify=False loads")
    return Observation(False, "secompile.load accepted the changed artifact")


PROBES: list[Probe] = [
    Probe("artifact", "enhance on a changed model.onnx",
          "exit 2, names the file and both hashes, nothing written", probe_enhance_refuses),
    Probe("artifact", "enhance --no-verify on a changed model.onnx", "works",
          probe_no_verify_overrides),
    Probe("artifact", "secompile.load on a changed model.onnx",
          "ModelError naming both hashes; verify=False loads", probe_api_verifies),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


def _manifest(folder: Path, **entries) -> None:
    (folder / "manifest.json").write_text(json.dumps(entries))


def test_verify_checks_the_artifact_the_stream_and_side_files(tmp_path: Path) -> None:
    for name in ("model.onnx", "model_stream.onnx", "model.ort", "other.onnx"):
        (tmp_path / name).write_bytes(name.encode())
    good = {n: file_sha256(tmp_path / n) for n in ("model.onnx", "model_stream.onnx",
                                                   "model.ort")}
    _manifest(tmp_path, artifact="model.onnx", sha256=good["model.onnx"],
              streaming={"artifact": "model_stream.onnx", "sha256": good["model_stream.onnx"]},
              side_files=[{"file": "model.ort", "sha256": good["model.ort"]}])
    for name in ("model.onnx", "model_stream.onnx", "model.ort", "other.onnx"):
        verify_artifact(tmp_path / name)  # unchanged, or not listed: passes
    for name in ("model.onnx", "model_stream.onnx", "model.ort"):
        (tmp_path / name).write_bytes(b"changed")
        with pytest.raises(ModelError, match=good[name]):
            verify_artifact(tmp_path / name)


def test_no_manifest_passes_and_a_corrupt_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    verify_artifact(tmp_path / "model.onnx")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="manifest.json is not a readable manifest"):
        verify_artifact(tmp_path / "model.onnx")
