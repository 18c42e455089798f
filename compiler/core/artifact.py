"""What flows through the pipeline: a model in one of its forms, plus what is known about it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

FORMATS = ("torch", "onnx")


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the model being compiled that every form of it shares.

    ``source`` is how to load the original again (``{"model": ..., "weights": ...}``), so a fresh
    process (the memory probe) can rebuild the baseline.
    """

    name: str
    sample_rate: int
    source: dict[str, Any]
    weights_sha256: str | None = None
    code_sha256: str | None = None  # a user model's own code (factory file, TorchScript)
    stft: dict[str, Any] | None = None
    params: int | None = None

    @property
    def reloadable(self) -> bool:
        """Whether another process can load the model again from ``source`` (not one handed
        to the Python API in memory)."""
        return bool(self.source.get("model"))

    @property
    def min_samples(self) -> int:
        """Shortest input the model accepts: a spectral model's centre padding needs more than
        half an FFT frame of audio."""
        return self.stft["n_fft"] // 2 + 1 if self.stft else 1

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for manifests and reports."""
        return {
            "name": self.name,
            "sample_rate": self.sample_rate,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "code_sha256": self.code_sha256,
            "stft": self.stft,
            "params": self.params,
            "min_samples": self.min_samples,
        }


@dataclass(frozen=True)
class Artifact:
    """A model in one form: an in-memory torch module or a file on disk (ONNX).

    The waveform contract holds for every form: input ``noisy`` float32 ``[B, L]`` at
    ``info.sample_rate``, output ``enhanced`` float32 ``[B, L]``.
    """

    format: str
    info: ModelInfo
    module: Any = None
    path: Path | None = None
    lineage: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown artifact format {self.format!r}; known: {FORMATS}")
        if self.format == "torch" and self.module is None:
            raise ValueError("a torch artifact needs a module")
        if self.format != "torch" and self.path is None:
            raise ValueError(f"a {self.format} artifact needs a path")

    def derive(self, pass_name: str, **changes: Any) -> Artifact:
        """A new artifact produced by ``pass_name`` from this one."""
        metadata = {**self.metadata, **changes.pop("metadata", {})}
        return replace(self, lineage=(*self.lineage, pass_name), metadata=metadata, **changes)

    def content_hash(self) -> str:
        """sha256 of what the model computes: its structure, weights and (for a user model)
        the code of its ``forward``; or its file bytes."""
        digest = hashlib.sha256()
        if self.format == "torch":
            digest.update(module_fingerprint(self.module).encode())
            digest.update(str(self.info.code_sha256).encode())
        else:
            digest.update(file_sha256(self.path).encode())
        return digest.hexdigest()

    def size_bytes(self) -> int:
        """Size on disk of a file artifact."""
        if self.path is None:
            raise ValueError("an in-memory artifact has no size on disk")
        return self.path.stat().st_size


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def module_fingerprint(module: Any) -> str:
    """sha256 over a torch module's structure and every parameter and buffer."""
    import torch

    digest = hashlib.sha256(repr(module).encode())
    for attr in ("stft_impl",):
        digest.update(repr(getattr(module, attr, None)).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            t = tensor.detach().cpu().contiguous()
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def find_artifact(ref: str | Path, file_name: str = "model.onnx") -> Path | None:
    """The ONNX file ``ref`` names: an ``.onnx`` file, or a build folder holding
    ``*/<file_name>`` or ``<file_name>``; ``None`` when ``ref`` names no ONNX file (a model
    reference). Raises ``ModelError`` for a missing file or a folder without one."""
    from secompile.compiler.core.errors import ModelError

    path = Path(ref)
    if path.is_dir():
        candidates = sorted(path.glob(f"*/{file_name}")) + sorted(path.glob(file_name))
        if not candidates:
            raise ModelError(f"{path} holds no {file_name} (give an artifact or a build folder)")
        return candidates[0]
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelError(f"artifact not found: {path}")
        return path
    return None


MANIFEST_FILE = "manifest.json"


def verify_artifact(path: Path) -> None:
    """Check an artifact file against the sha256 its build recorded in the ``manifest.json``
    beside it (the artifact, the streaming artifact or a side file, by name).

    ``ModelError`` naming the file and both hashes when its bytes changed after the build, or
    naming the manifest when it is unreadable; nothing to check (no manifest, or one that does
    not list the file) passes. A user who means to run a modified file turns this off.
    """
    import json

    from secompile.compiler.core.errors import ModelError

    path = Path(path)
    manifest = path.parent / MANIFEST_FILE
    if not manifest.is_file():
        return
    try:
        data = json.loads(manifest.read_text())
        recorded = manifest_files(data).get(path.name)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{manifest} is not a readable manifest ({' '.join(str(exc).split())}); "
                         f"cannot verify {path} (--no-verify, verify=False skip the check)"
                         ) from None
    if recorded is None:
        return
    actual = file_sha256(path)
    if actual != recorded:
        raise ModelError(f"{path} does not match its manifest {manifest}: sha256 {actual}, "
                         f"manifest records {recorded} (the file changed after the build; "
                         "rebuild it, or pass --no-verify / verify=False to use it anyway)")


def manifest_files(manifest: dict[str, Any]) -> dict[str, str | None]:
    """File name -> recorded sha256 (``None`` where none is) of every file a build's
    ``manifest.json`` names: the artifact, the streaming artifact and the side files."""
    streaming = manifest.get("streaming") or {}
    entries = [(manifest.get("artifact"), manifest.get("sha256")),
               (streaming.get("artifact"), streaming.get("sha256")),
               *((side.get("file"), side.get("sha256")) for side in
                 manifest.get("side_files") or [])]
    return {name: None if digest is None else str(digest) for name, digest in entries
            if isinstance(name, str)}


def onnx_props(path: Path) -> dict[str, str]:
    """An ONNX file's metadata props (secompile writes its contract there); ``ModelError``
    for a file that is not ONNX."""
    import onnx

    from secompile.compiler.core.errors import ModelError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf raises several types)
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from None
    return {p.key: p.value for p in model.metadata_props}
