"""Build faults: SIGINT and SIGKILL mid-build, a full disk, a read-only ``--out`` and an
``--out`` that holds the user's own files. A build owes: no partial artifact in ``--out``, a
cache the next build reuses to produce the same bytes, a named one-line error, and never a
deleted file it did not write."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from secompile.compiler.app.out_folder import (
    OWNER_FILE,
    check_destinations,
    commit,
    drop_stale_staging,
    foreign_files,
)
from secompile.compiler.core.errors import OutputError
from tests.faults._support import (
    build_args,
    can_mount,
    interrupted,
    patched,
    reference,
    remount,
    sha256,
    tmpfs,
    visible,
    warm_cache,
)
from tests.faults.harness import Observation, Probe, files_under, named_error, secompile

ARTIFACTS = ("cpu/model.onnx", "cpu/manifest.json", "report.json", "report.md", "report.html")


def _interrupt_then_rebuild(tmp: Path, sig: signal.Signals) -> Observation:
    """Signal a build once its artifact is staged and cached, check ``--out``, build again
    with the same cache and compare with an uninterrupted build."""
    ref, _ = reference()
    out, cache = tmp / "out", tmp / "cache"
    first, waited = interrupted(build_args(out, cache), sig, tmp / "staged")
    entries = len(list(cache.rglob("entry.json")))
    left = sorted(visible(out))
    staged = sorted(p.name for p in out.glob(".staging-*"))
    second = secompile(build_args(out, cache), timeout=300)
    summary = second.stdout.splitlines()[0] if second.stdout.strip() else ""
    hits = next((part.split(":", 1)[1].strip() for part in summary.split("; ")
                 if part.startswith("cache hits:")), "none")
    shipped = out / "cpu" / "model.onnx"
    same = shipped.is_file() and sha256(shipped) == ref
    stale = sorted(p.name for p in out.glob(".staging-*"))
    expected_exit = 130 if sig == signal.SIGINT else -signal.SIGKILL
    ok = (first.exit_code == expected_exit and not left and entries >= 1
          and (not staged if sig == signal.SIGINT else len(staged) == 1)
          and second.exit_code == 0 and "export-onnx" in hits and same and not stale
          and visible(out) >= set(ARTIFACTS))
    return Observation(ok, f"{sig.name} {waited:.0f} s in (artifact staged, {entries} cache "
                           f"entry): exit {first.exit_code}, {len(left)} files in --out, "
                           f"{len(staged)} hidden staging folder(s); next build: exit "
                           f"{second.exit_code}, cache hits: {hits}, model.onnx sha256 "
                           f"{'==' if same else '!='} uninterrupted build, {len(stale)} "
                           f"staging folders left")


_ENOSPC = """
    import errno, os, shutil
    real = shutil.copyfile
    def full(src, dst, *args, **kwargs):
        if str(dst).startswith({out!r}):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)
    shutil.copyfile = full
"""


def _disk_full(tmp: Path) -> Observation:
    cache, out = warm_cache(tmp), tmp / "out"
    if can_mount():  # a real full file system: a 256 KiB tmpfs, smaller than the artifact
        with tmpfs(out, "size=256k"):
            result = secompile(build_args(out, cache), timeout=300)
            left = sorted(files_under(out))
        how = "256 KiB tmpfs"
    else:  # no mount here: the write itself fails as a full disk would (ENOSPC)
        result = patched(_ENOSPC.format(out=str(out)), build_args(out, cache))
        left = sorted(files_under(out))
        how = "ENOSPC injected into the copy"
    seen = named_error(result, "no space left on device", str(out))
    return Observation(seen.ok and not left, f"{how}: {seen.observed}; {len(left)} files "
                                             f"left in --out")


def _read_only(tmp: Path) -> Observation:
    cache, out = warm_cache(tmp), tmp / "out"
    if can_mount():  # read-only for root too: a tmpfs remounted ro
        with tmpfs(out, "size=1m"):
            (out / "keep.txt").write_text("mine")
            remount(out, "remount,ro")
            result = secompile(build_args(out, cache), timeout=300)
            left = files_under(out)
        how, needle = "read-only tmpfs", "read-only file system"
    elif os.geteuid() != 0:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        out.chmod(0o555)
        try:
            result = secompile(build_args(out, cache), timeout=300)
        finally:
            out.chmod(0o755)
        left, how, needle = files_under(out), "chmod 0o555", "permission denied"
    else:
        pytest.skip("running as root without mount: chmod 0o555 does not stop root writing, "
                    "and no read-only file system can be made here")
    seen = named_error(result, "not writable", needle)
    return Observation(seen.ok and left == {"keep.txt"},
                       f"{how}: {seen.observed}; --out holds {sorted(left)}")


def _own_files_kept(tmp: Path) -> Observation:
    """Rebuild over an earlier build's --out that also holds the user's files: those beside
    the outputs are kept; a user's file inside a target folder stops the build unharmed."""
    cache, out = warm_cache(tmp), tmp / "out"
    shutil.copytree(reference()[1].parent / "out", out)
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "clip.wav").write_bytes(b"RIFF")
    rebuilt = secompile(build_args(out, cache), timeout=300)
    kept = (out / "notes.txt").exists() and (out / "data" / "clip.wav").exists()
    (out / "cpu" / "my-results.csv").write_text("a,b\n")
    before = {f: sha256(out / f) for f in files_under(out)}
    refused = secompile(build_args(out, cache), timeout=300)
    unchanged = before == {f: sha256(out / f) for f in files_under(out)}
    seen = named_error(refused, "cpu/my-results.csv", "did not write")
    ok = rebuilt.exit_code == 0 and kept and seen.ok and unchanged
    return Observation(ok, f"rebuild over own output + user files: exit {rebuilt.exit_code}, "
                           f"user files {'kept' if kept else 'LOST'}; user file in out/cpu: "
                           f"{seen.observed}; --out {'unchanged' if unchanged else 'CHANGED'}")


PROBES: list[Probe] = [
    Probe("build", "SIGINT mid-build", "no partial artifact; rebuild byte-identical from cache",
          lambda tmp: _interrupt_then_rebuild(tmp, signal.SIGINT)),
    Probe("build", "SIGKILL mid-build",
          "only a hidden staging folder left, cleaned by the next build; rebuild byte-identical "
          "from cache", lambda tmp: _interrupt_then_rebuild(tmp, signal.SIGKILL)),
    Probe("build", "disk full while writing --out",
          "named one-line OutputError, exit 2, nothing half-written in --out", _disk_full),
    Probe("build", "read-only --out",
          "named one-line OutputError, exit 2, --out untouched", _read_only),
    Probe("build", "--out holds the user's own files",
          "never deletes what secompile did not write; refuses to replace a folder holding them",
          _own_files_kept),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe, tmp_path):
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


# --- the pieces, in process -------------------------------------------------------------------


def _fake_output(out: Path, target: str = "cpu") -> None:
    """What a build commits: a target folder its manifest describes, and the reports."""
    folder = out / target
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "model_stream.onnx").write_bytes(b"stream")
    (folder / "manifest.json").write_text(
        '{"artifact": "model.onnx", "pipeline": "p", '
        '"side_files": [{"file": "model_stream.onnx"}]}')
    (out / "report.json").write_text('{"secompile": "0.1.0", "targets": {}}')
    (out / "report.md").write_text("# secompile report: default\n")
    (out / "report.html").write_text("<!DOCTYPE html><html><head><title>secompile report: x")


def test_foreign_files_are_what_no_manifest_or_signature_claims(tmp_path) -> None:
    _fake_output(tmp_path)
    names = ["cpu", "edge", "report.json", "report.md", "report.html", "gates.xml"]
    assert foreign_files(tmp_path, names) == []
    (tmp_path / "cpu" / "notes.txt").write_text("mine")
    (tmp_path / "report.md").write_text("my own report")
    (tmp_path / "edge").write_text("a file where a target folder goes")
    assert foreign_files(tmp_path, names) == ["cpu/notes.txt", "edge", "report.md"]
    with pytest.raises(OutputError, match=r"cpu/notes.txt, edge, report.md; the build would"):
        check_destinations(tmp_path, names)


def test_a_folder_without_a_manifest_is_foreign_and_an_empty_one_is_not(tmp_path) -> None:
    (tmp_path / "cpu").mkdir()
    assert foreign_files(tmp_path, ["cpu"]) == []
    (tmp_path / "cpu" / "model.onnx").write_bytes(b"someone else's")
    assert foreign_files(tmp_path, ["cpu"]) == ["cpu/model.onnx"]


def _staged(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    _fake_output(out)
    (out / "mine.txt").write_text("kept")
    staging = out / ".staging-1-x"
    _fake_output(staging)
    (staging / "cpu" / "model.onnx").write_bytes(b"new onnx")
    (staging / OWNER_FILE).write_text("host\n")
    return out, staging


def test_commit_replaces_own_outputs_and_keeps_the_rest(tmp_path) -> None:
    out, staging = _staged(tmp_path)
    commit(staging, out)
    assert (out / "cpu" / "model.onnx").read_bytes() == b"new onnx"
    assert (out / "mine.txt").read_text() == "kept"
    assert not (out / OWNER_FILE).exists(), "the owner record is not an output"
    assert not list(out.glob(".old-*"))
    assert [p.name for p in staging.iterdir()] == [OWNER_FILE]


def test_a_failed_commit_puts_the_previous_outputs_back(tmp_path, monkeypatch) -> None:
    out, staging = _staged(tmp_path)
    before = {f: (out / f).read_bytes() for f in visible(out)}
    real = os.replace

    def failing(src, dst):
        if Path(src).parent == staging and Path(dst) == out / "report.md":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        commit(staging, out)
    monkeypatch.undo()
    assert {f: (out / f).read_bytes() for f in visible(out)} == before
    assert not list(out.glob(".old-*"))


def test_stale_staging_goes_and_a_live_build_keeps_its_own(tmp_path) -> None:
    import socket
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)  # a pid that just exited
    live = tmp_path / f".staging-{os.getppid()}-a"
    gone = tmp_path / f".staging-{dead}-b"
    trash = tmp_path / f".old-{dead}-c"
    other_host = tmp_path / f".staging-{dead}-d"
    legacy_old, legacy_new = tmp_path / ".staging-old", tmp_path / ".staging-new"
    for folder in (live, gone, trash, other_host, legacy_old, legacy_new):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
    (gone / OWNER_FILE).write_text(socket.gethostname())
    (other_host / OWNER_FILE).write_text("another-host")
    os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
    removed = drop_stale_staging(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        p.name for p in (gone, trash, legacy_old))
    assert live.exists() and other_host.exists() and legacy_new.exists()
