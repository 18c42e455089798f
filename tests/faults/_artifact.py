"""One small built artifact shared by the fault probes of a process (built once, on demand).

Probes run both under pytest and from ``benchmarks/bench_faults.py`` (no fixtures there), so
the artifact is a cached helper: ``secompile build --pipeline export-onnx --no-cache`` of the
shipped default model into a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from tests.faults.harness import secompile


@functools.cache
def built_artifact() -> Path:
    """The build folder (``cpu/model.onnx`` + ``cpu/manifest.json``) of the default model."""
    root = Path(tempfile.mkdtemp(prefix="secompile-faults-"))
    atexit.register(shutil.rmtree, root, True)
    out = root / "build"
    result = secompile(["build", "--pipeline", "export-onnx", "--no-cache", "--no-ray",
                        "--quiet", "--out", out], timeout=300)
    if result.exit_code != 0:
        raise RuntimeError(f"the shared fault-suite build failed: {result.summary()}")
    return out


def copy_of_build(tmp: Path) -> Path:
    """A private copy of :func:`built_artifact` under ``tmp`` (probes that alter it)."""
    copy = tmp / "build"
    shutil.copytree(built_artifact(), copy)
    return copy
