"""Shared pieces of the build, cache and fleet fault probes: one deterministic build (the
default model, ``--pipeline export-onnx``), its reference hash, patched CLI runs (a fault
injected into the ``secompile`` process itself) and tmpfs mounts where this machine allows."""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.faults.harness import CliResult, files_under, secompile

PIPELINE = "export-onnx"  # deterministic: the same model.onnx bytes from every fresh build


def build_args(out: Path, cache: Path | None) -> list[str | Path]:
    """``secompile build`` of the default model through :data:`PIPELINE` into ``out``."""
    caching = ["--cache-dir", cache] if cache else ["--no-cache"]
    return ["build", "--pipeline", PIPELINE, "--out", out, "--no-ray", *caching]


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def reference() -> tuple[str, Path]:
    """An uninterrupted build from an empty cache, once per process: the sha256 of its
    ``cpu/model.onnx`` and its (now warm) cache folder, a template probes copy."""
    root = Path(tempfile.mkdtemp(prefix="fault-reference-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    result = secompile(build_args(root / "out", root / "cache"), timeout=300)
    assert result.exit_code == 0, result.stderr
    return sha256(root / "out" / "cpu" / "model.onnx"), root / "cache"


def warm_cache(tmp: Path) -> Path:
    """A private copy of the reference build's cache under ``tmp``."""
    return Path(shutil.copytree(reference()[1], tmp / "cache"))


def visible(folder: Path) -> set[str]:
    """The files under ``folder`` outside hidden folders and files (what a user sees)."""
    if not folder.exists():
        return set()
    return {f for f in files_under(folder) if not any(p.startswith(".") for p in Path(f).parts)}


def _wrapper(prelude: str, args: list[str | Path]) -> list[str]:
    script = textwrap.dedent(prelude) + textwrap.dedent("""
        from secompile.compiler.app.cli import main
        main(ARGS, prog_name="secompile")
    """)
    return [sys.executable, "-c", script.replace("ARGS", repr([str(a) for a in args]))]


def patched(prelude: str, args: list[str | Path], timeout: float = 300) -> CliResult:
    """Run the CLI with ``args`` in a fresh process after ``prelude`` (Python that patches
    secompile, e.g. to make a write fail as a full disk would)."""
    done = subprocess.run(_wrapper(prelude, args), check=False, capture_output=True,
                          text=True, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


# The build stops once its artifact is staged and its pass cached, before the report and the
# commit (the window where a kill would leave a half-written --out without staging).
_STALL = """
    import pathlib, time
    import secompile.compiler.app.build as build
    real = build.write_html_report
    def stalled(*args, **kwargs):
        pathlib.Path({marker!r}).write_text("staged")
        time.sleep(300)
        return real(*args, **kwargs)
    build.write_html_report = stalled
"""


def interrupted(args: list[str | Path], sig: signal.Signals, marker: Path,
                timeout: float = 300) -> tuple[CliResult, float]:
    """Start a build, send ``sig`` once it has staged its outputs and filled the cache
    (``marker`` appears), and return its result and the seconds until the signal."""
    start = time.monotonic()
    process = subprocess.Popen(_wrapper(_STALL.format(marker=str(marker)), args),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():
            if process.poll() is not None or time.monotonic() - start > timeout:
                raise AssertionError(f"the build never reached its stall point: "
                                     f"{process.communicate()[1][-500:]}")
            time.sleep(0.1)
        waited = time.monotonic() - start
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return CliResult(process.returncode, stdout, stderr), waited


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, as in containers)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as probe:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                              check=False, capture_output=True)
        if done.returncode == 0:
            subprocess.run(["umount", probe], check=False, capture_output=True)
        return done.returncode == 0


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` with ``options`` (``size=...``, ``ro``), unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder], check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        if subprocess.run(["umount", folder], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", folder], check=False, capture_output=True)


def remount(folder: Path, options: str) -> None:
    """Change the options of the tmpfs on ``folder`` (e.g. ``remount,ro``)."""
    subprocess.run(["mount", "-o", options, folder], check=True, capture_output=True)

