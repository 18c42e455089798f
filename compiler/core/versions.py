"""Library versions and a hash of secompile's own code, for cache keys and manifests."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
from pathlib import Path

_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy", "pesq", "pystoi")
_PACKAGES = ("compiler", "passes", "calibration", "targets", "models")
# The folder holding the namespace's packages: the repository in an editable install (the
# card's top-level folders), ``site-packages/secompile`` in a regular one.
ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact (absent ones omitted)."""
    versions = {"python": platform.python_version(), "secompile": secompile_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def secompile_version() -> str:
    """The installed secompile version, or ``0+unknown`` when run from a bare tree."""
    try:
        return importlib.metadata.version("secompile")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@functools.cache
def code_hash() -> str:
    """sha256 over secompile's Python sources: a code change is a new cache key."""
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def machine_info() -> dict[str, str]:
    """CPU model and core count of this machine, for reports."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "system": platform.system()}
