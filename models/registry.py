"""The model registry and the loader for every way a user can name a model.

* a registry name: ``gtcrn`` (needs ``--weights``), ``nsnet2`` (needs ``--weights``: the
  official ``.onnx`` file or a state_dict saved from the port), ``default`` (the shipped
  checkpoint);
* ``path/to/file.py:factory``: a Python file and a zero-argument function returning a module;
* a TorchScript archive (``torch.jit.save``);
* from the Python API, an ``nn.Module`` in memory (a copy is compiled; the caller's module is
  never changed).

Checkpoints are loaded with ``torch.load(weights_only=True)``: a pickle that carries code is
refused, never run. Loading is strict: a checkpoint of another architecture is an error that
lists the mismatching names. Every bad file (missing, empty, truncated, random bytes, a
TorchScript archive or an ONNX model given as ``--weights``, a garbled TorchScript model) is a
:class:`ModelError` (exit 2) naming the file and the problem.

A build loads through :func:`load_checked`: the load and one ``forward`` on a second of noise
(:func:`check_waveform_contract`: no exception, a float tensor of the input's shape, finite),
each under the build's ``--pass-timeout``, so a user model that raises, hangs, returns NaN or
another length is named before any pass runs.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import pickle
import re
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


_ZIP_MAGIC = b"PK\x03\x04"
# torch's load_state_dict wording for a tensor of the wrong shape.
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape "
                            r"torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in "
                            r"current model is torch\.Size\(\[([^\]]*)\]\)")
# Bytes of a raw pickle scanned for imports when torch.load refused it (a scan never executes).
_PICKLE_SCAN_BYTES = 1 << 20


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception's first line (torch's run to paragraphs; for the
    weights-only unpickler the line that names the fault), or its type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error" in line), None)
    if marker is not None and marker + 1 < len(lines):
        lines = lines[marker + 1:]
    text = lines[0] if lines else ""
    text = text.split(". ")[0].rstrip(".")
    return (text[:157] + "...") if len(text) > 160 else (text or type(exc).__name__)


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (an error line on stderr stays one line)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pickle_imports(path: Path) -> list[str]:
    """``module.name`` of every global a raw pickle file would import when unpickled, found by
    reading its opcodes (``pickletools.genops`` parses; nothing is imported or run). The
    tensor rebuilders a legacy torch checkpoint names are left out: they are data, not code."""
    import pickletools

    with open(path, "rb") as handle:
        head = handle.read(_PICKLE_SCAN_BYTES)
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(head):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001, S110  (genops raises several types on non-pickles)
        pass  # not a pickle, or cut short: what was read is the answer
    return [name for name in found
            if not name.startswith("torch.") and name != "collections.OrderedDict"]


def _is_onnx(path: Path) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (only asked of a file torch.load
    rejected, so a checkpoint never pays for it)."""
    try:
        import onnx

        return bool(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001  (protobuf raises several types on bytes that are not ONNX)
        return False


def _onnx_readers() -> str:
    return ", ".join(sorted(n for n, e in REGISTRY.items() if e.from_onnx)) or "none"


def _unreadable(path: Path, why: str) -> ModelError:
    """The error for bytes ``torch.load`` cannot parse (random, cut short, another format)."""
    return ModelError(f"checkpoint {path} is corrupt or truncated, or not a PyTorch checkpoint: "
                      f"torch.load cannot read it ({why})")


def load_state_dict(path: Path, arch: str | None = None) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``path`` (also under a ``state_dict``/``model`` key), read
    with ``torch.load(weights_only=True)``: no pickled code or object is ever constructed.

    Every way a file can fail is a :class:`ModelError` naming ``path`` and the problem: missing,
    empty, truncated or corrupt, a TorchScript archive or an ONNX model where a state_dict
    belongs, a pickle that carries code or objects (refused, never run), or not a dict of
    tensors. ``arch`` is the architecture the weights are for (named in the messages).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"checkpoint {path} is empty (0 bytes)")
    kind = _archive_kind(path)
    if kind == "broken":
        raise ModelError(f"checkpoint {path} is corrupt or truncated: an incomplete zip "
                         f"archive ({path.stat().st_size} bytes, no readable directory)")
    if kind == "torchscript":
        raise ModelError(f"{path} is a TorchScript archive, not a checkpoint (state_dict): "
                         "give it as the model itself, without --weights")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.findall(r"GLOBAL (\S+)", str(exc))
        imports = blocked or _pickle_imports(path)
        if imports:
            raise ModelError(
                f"refusing checkpoint {path}: it pickles code or objects ({imports[0]}), which "
                "weights-only loading forbids; nothing in it was run"
            ) from None
        if _is_onnx(path):
            raise ModelError(
                f"{path} is an ONNX model, not a PyTorch checkpoint: "
                f"'{arch or 'this model'}' takes a torch state_dict (ONNX weights are read only "
                f"for: {_onnx_readers()}, from a *.onnx file)"
            ) from None
        raise _unreadable(path, _reason(exc)) from None
    except Exception as exc:  # noqa: BLE001  (torch's readers raise many types on bad bytes)
        if kind == "zip":  # a torch.save archive whose entries are damaged
            raise ModelError(f"checkpoint {path} is corrupt or truncated: "
                             f"{_reason(exc)}") from None
        raise _unreadable(path, f"{type(exc).__name__}: {_reason(exc)}") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"checkpoint {path} does not hold a state_dict of tensors")
    return data


def apply_weights(module: nn.Module, state: dict[str, torch.Tensor], source: Path,
                  arch: str) -> None:
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
        state = load_state_dict(weights, arch)
    try:
        apply_weights(module, state, weights, arch)
    except RuntimeError as exc:  # size mismatches
        detail = str(exc).strip().splitlines()
        sizes = [m.groups() for line in detail if (m := _SIZE_MISMATCH.search(line))]
        if sizes:
            name, got, want = sizes[0]
            more = f" (and {len(sizes) - 1} more)" if len(sizes) > 1 else ""
            shown = (f"{len(sizes)} tensor(s) of the wrong shape, e.g. {name}: [{got}] in the "
                     f"checkpoint, [{want}] in the model{more}")
        else:
            shown = next((line.strip() for line in detail if "size mismatch" in line),
                         detail[0] if detail else type(exc).__name__)
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
        raise ModelError(f"cannot import {path}: {_one_line(exc)}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelError(f"{path} has no callable '{factory_name}'")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001  (any error in user code is the user's to fix)
        raise ModelError(f"{ref} raised {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model, path.stem


def _archive_kind(path: Path) -> str | None:
    """What kind of zip archive ``path`` is: ``"torchscript"`` (``torch.jit.save``), ``"zip"``
    (another, e.g. a ``torch.save`` checkpoint), ``"broken"`` (it starts as a zip archive but
    its directory cannot be read: truncated or garbled), or ``None`` (not a zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        with open(path, "rb") as handle:
            return "broken" if handle.read(4) == _ZIP_MAGIC else None
    return "torchscript" if any(n.endswith("constants.pkl") for n in names) else "zip"


def _load_torchscript(path: Path) -> nn.Module:
    """``torch.jit.load`` (TorchScript code, never Python pickles), a corrupt archive being a
    :class:`ModelError` naming the file."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001  (the TorchScript reader raises many types)
        raise ModelError(f"TorchScript archive {path} is corrupt or truncated: "
                         f"{_reason(exc)}") from None


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
    elif Path(ref).is_file() and (kind := _archive_kind(Path(ref))) in ("torchscript", "broken"):
        if kind == "broken":
            raise ModelError(f"{ref} is corrupt or truncated: an incomplete zip archive (no "
                             "readable directory), not a loadable TorchScript model")
        if weights is not None:
            raise ModelError(f"{ref} is a TorchScript archive with its own weights; drop --weights")
        module, name = _load_torchscript(Path(ref)), Path(ref).stem
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


# Length of the noise a loaded model is checked on (or its shortest input, if longer).
CONTRACT_SECONDS = 1.0


def check_waveform_contract(artifact: Artifact, seconds: float = CONTRACT_SECONDS) -> None:
    """Run ``artifact``'s module once on ``[1, L]`` deterministic noise (``seconds`` at its
    rate) and raise :class:`ModelError` unless it keeps the waveform contract: ``forward``
    returns, without raising, a tensor of the input's shape with only finite samples.

    A build calls it right after loading, so a user model that raises, returns NaN or another
    length fails with a one-line reason before any pass runs, instead of deep inside one."""
    info = artifact.info
    who = info.source.get("model") or info.source.get("in_memory") or info.name
    if info.source.get("weights"):
        who = f"{who} (weights {info.source['weights']})"
    length = max(round(seconds * info.sample_rate), info.min_samples)
    noise = 0.1 * torch.randn(1, length, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            out = artifact.module(noise)
    except Exception as exc:  # noqa: BLE001  (any error in a user's forward is theirs to fix)
        raise ModelError(f"model {who}: forward raised {_one_line(exc)} on a [1, {length}] "
                         f"waveform at {info.sample_rate} Hz") from None
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        what = f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {who}: forward returned {what}, not a float waveform "
                         "tensor [B, L]")
    if tuple(out.shape) != (1, length):
        raise ModelError(f"model {who}: forward returned shape {list(out.shape)} for a "
                         f"[1, {length}] waveform; it must return the enhanced waveform "
                         "[B, L], as long as its input")
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise ModelError(f"model {who}: forward returned {bad} NaN or infinite samples of "
                         f"{out.numel()} for a finite [1, {length}] waveform")


def load_checked(ref: str | nn.Module | None, weights: Path | None = None,
                 timeout: float | None = None) -> Artifact:
    """:func:`load_model`, then :func:`check_waveform_contract`, each bounded by ``timeout``
    seconds (``None``: no limit; see :mod:`secompile.compiler.core.limits`): how a build loads
    its model, so a factory or ``forward`` that hangs is a :class:`ModelError` too."""
    from secompile.compiler.core.limits import describe_limit, time_limit

    shown = type(ref).__name__ if isinstance(ref, nn.Module) else (ref or DEFAULT_MODEL)

    def expired(step: str) -> Callable[[], ModelError]:
        return lambda: ModelError(f"model {shown}: {step} did not finish within its time "
                                  f"limit of {describe_limit(timeout)} (--pass-timeout)")

    with time_limit(timeout, expired("loading (import, factory, weights)")):
        artifact = load_model(ref, weights)
    with time_limit(timeout, expired(f"forward on {CONTRACT_SECONDS:g} s of audio")):
        check_waveform_contract(artifact)
    return artifact


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

