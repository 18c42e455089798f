"""The model registry and the loader for every way a user can name a model.

* a registry name: ``gtcrn`` (needs ``--weights``), ``nsnet2`` (needs ``--weights``: the
  official ``.onnx`` file or a state_dict saved from the port), ``default`` (the shipped
  checkpoint);
* ``path/to/file.py:factory``: a Python file and a zero-argument function returning a module;
* a TorchScript archive (``torch.jit.save``);
* from the Python API, an ``nn.Module`` in memory (a copy is compiled; the caller's module is
  never changed).

Checkpoints are loaded with ``torch.load(weights_only=True)``: a pickle that carries code is
refused. Loading is strict: a checkpoint of another architecture is an error that lists the
mismatching names.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from secompile.compiler.core.artifact import Artifact, ModelInfo, file_sha256
from secompile.compiler.core.errors import ModelError
from secompile.models.spectral import SpectralEnhancer, StftSpec


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: how to build it and where its default weights are."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    default_weights: Path | None = None
    # Reads weights published as an ONNX file (``*.onnx``) into a state_dict of the core.
    from_onnx: Callable[[Path], dict[str, torch.Tensor]] | None = None


def _gtcrn() -> nn.Module:
    from secompile.models import gtcrn

    stft = StftSpec(gtcrn.N_FFT, gtcrn.HOP, gtcrn.WINDOW)
    return SpectralEnhancer(gtcrn.GTCRN(), stft, gtcrn.SAMPLE_RATE)


def _nsnet2() -> nn.Module:
    from secompile.models import nsnet2

    return nsnet2.build_nsnet2()


def _nsnet2_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    from secompile.models import nsnet2

    return nsnet2.state_dict_from_onnx(path)


def _default() -> nn.Module:
    from secompile.models import default

    return default.build_default(weights=None)


def _default_weights() -> Path:
    from secompile.models import default

    return default.DEFAULT_WEIGHTS


REGISTRY: dict[str, ModelEntry] = {
    "gtcrn": ModelEntry("gtcrn", "GTCRN (Rong et al., ICASSP 2024), 48k params", _gtcrn),
    "nsnet2": ModelEntry(
        "nsnet2", "NSNet2 16 kHz, the ICASSP 2021 DNS Challenge baseline, 2.7M params", _nsnet2,
        from_onnx=_nsnet2_from_onnx,
    ),
    "default": ModelEntry(
        "default", "secompile's own small CRN, trained on its synthetic mixtures", _default,
        _default_weights(),
    ),
}
DEFAULT_MODEL = "default"
# The project's own demo audio (paired: noisy/demo.wav, clean/demo.wav), made by models.make_demo.
DEMO_DIR = Path(__file__).parent / "demo_audio"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``path`` (also under a ``state_dict``/``model`` key)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if not blocked:
            raise ModelError(f"checkpoint {path} is corrupt or truncated: not a torch file") from None
        raise ModelError(
            f"refusing checkpoint {path}: it pickles code or objects, which weights-only "
            f"loading forbids ({blocked[0].rstrip('.')})"
        ) from None
    except Exception as exc:  # noqa: BLE001  (torch's unpickler raises many types on bad bytes)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"checkpoint {path} is corrupt or truncated: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"checkpoint {path} does not hold a state_dict of tensors")
    return data


def apply_weights(module: nn.Module, state: dict[str, torch.Tensor], source: Path, arch: str) -> None:
    """Strictly load ``state`` into ``module`` (into the core of a waveform wrapper)."""
    target = module.core if isinstance(module, SpectralEnhancer) else module
    result = target.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:4])
        raise ModelError(
            f"checkpoint {source} does not match architecture '{arch}': "
            f"{len(missing)} missing and {len(unexpected)} unexpected parameters (e.g. {shown})"
        )


def _strict_load(module: nn.Module, weights: Path, arch: str) -> None:
    entry = REGISTRY.get(arch)
    if entry is not None and entry.from_onnx is not None and weights.suffix.lower() == ".onnx":
        state = entry.from_onnx(weights)
    else:
        state = load_state_dict(weights)
    try:
        apply_weights(module, state, weights, arch)
    except RuntimeError as exc:  # size mismatches
        detail = str(exc).strip().splitlines()
        shown = next((line.strip() for line in detail if "size mismatch" in line), detail[0])
        raise ModelError(
            f"checkpoint {weights} does not match architecture '{arch}': {shown}"
        ) from None


def _load_factory(ref: str) -> tuple[nn.Module, str]:
    file_part, factory_name = ref.rsplit(":", 1)
    path = Path(file_part)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"secompile_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  (any error in user code is the user's to fix)
        raise ModelError(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelError(f"{path} has no callable '{factory_name}'")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001  (any error in user code is the user's to fix)
        raise ModelError(f"{ref} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model, path.stem


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _code_sha256(module: nn.Module) -> str:
    """sha256 over the code of every class in ``module``'s tree (its source where Python can
    find it, else its ``forward`` bytecode), so an edited ``forward`` is a new model to the cache
    even when the weights are the same."""
    digest = hashlib.sha256()
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: c.__qualname__):
        digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):  # defined where no source file exists (a REPL)
            code = getattr(cls.forward, "__code__", None)
            digest.update(code.co_code + repr(code.co_consts).encode() if code else b"")
    return digest.hexdigest()


def from_module(module: nn.Module, weights: Path | None = None) -> Artifact:
    """An in-memory model (the Python API's ``secompile.build(module)``) as a torch
    :class:`Artifact`: a deep copy in eval mode, so passes never change the caller's module.

    Its ``source`` has ``model: None``: no other process can load it again, so the memory
    probe traces it (``validate``) and Ray scoring is refused (``secompile.build``)."""
    if not isinstance(module, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    module = copy.deepcopy(module)
    if weights is not None:
        _strict_load(module, Path(weights), type(module).__name__)
    return _artifact(module, type(module).__name__,
                     {"model": None, "in_memory": type(module).__qualname__,
                      "weights": str(Path(weights).resolve()) if weights else None},
                     file_sha256(Path(weights)) if weights else None, _code_sha256(module))


def load_model(ref: str | nn.Module | None, weights: Path | None = None) -> Artifact:
    """Load the model a user named (or gave, as an ``nn.Module``) as a torch
    :class:`Artifact` in eval mode."""
    if isinstance(ref, nn.Module):
        return from_module(ref, weights)
    ref = ref or DEFAULT_MODEL
    weights = Path(weights) if weights is not None else None
    code = archive_sha = None
    if ref in REGISTRY:
        entry = REGISTRY[ref]
        module = entry.build()
        weights = weights or entry.default_weights
        if weights is None:
            raise ModelError(f"model '{ref}' needs a checkpoint: pass --weights PATH")
        _strict_load(module, weights, ref)
        name = ref
    elif ":" in ref and ref.rsplit(":", 1)[0].endswith(".py"):
        module, name = _load_factory(ref)
        file_part, factory = ref.rsplit(":", 1)
        ref = f"{Path(file_part).resolve()}:{factory}"  # reloadable from any folder
        code = file_sha256(Path(file_part))
        if weights is not None:
            _strict_load(module, weights, ref)
    elif Path(ref).is_file() and _is_torchscript(Path(ref)):
        if weights is not None:
            raise ModelError(f"{ref} is a TorchScript archive with its own weights; drop --weights")
        module, name = torch.jit.load(ref, map_location="cpu"), Path(ref).stem
        ref = str(Path(ref).resolve())
        code = archive_sha = file_sha256(Path(ref))  # the archive holds weights and code
    elif Path(ref).exists():
        raise ModelError(
            f"{ref} is not a TorchScript archive; give a registry name with --weights, "
            f"or FILE.py:factory (known models: {', '.join(sorted(REGISTRY))})"
        )
    else:
        raise ModelError(
            f"unknown model '{ref}' (known models: {', '.join(sorted(REGISTRY))}; "
            "or FILE.py:factory, or a TorchScript file)"
        )
    return _artifact(module, name,
                     {"model": ref, "weights": str(weights.resolve()) if weights else None},
                     file_sha256(weights) if weights else archive_sha, code)


def _artifact(module: nn.Module, name: str, source: dict, weights_sha256: str | None,
              code_sha256: str | None) -> Artifact:
    """``module`` in eval mode as the torch artifact a build starts from; its sample rate is
    its ``sample_rate`` attribute (16 kHz without one)."""
    module.eval()
    stft = getattr(module, "stft", None)
    info = ModelInfo(
        name=name,
        sample_rate=int(getattr(module, "sample_rate", 16000)),
        source=source,
        weights_sha256=weights_sha256,
        code_sha256=code_sha256,
        stft=stft.as_dict() if isinstance(stft, StftSpec) else None,
        params=sum(p.numel() for p in module.parameters()),
    )
    return Artifact("torch", info, module=module, lineage=(f"load:{name}",))


def describe_models() -> list[tuple[str, str]]:
    """(name, description) of each registered model."""
    return [(e.name, e.description) for e in REGISTRY.values()]

