"""The output folder of a build: staged, locked, committed, and never a user's file lost.

What a build does to ``out`` (the rules a careful user can rely on):

- **Staged, then committed.** Outputs are assembled in a hidden staging folder
  ``out/.staging-<pid>-*`` and moved into place only when every target succeeded, so a failed
  or interrupted (Ctrl-C) build leaves no partial artifact behind. The commit holds an
  exclusive lock on ``out`` (two builds into one folder commit one after the other) and holds
  back SIGINT/SIGTERM until it is done; if a move fails, what was there before is put back.
  ``report.json`` moves last: its presence means every artifact it names is in place.
- **Killed builds are cleaned up.** A build killed outright (SIGKILL, power loss) leaves its
  hidden staging folder; the next build into ``out`` removes every ``.staging-*`` / ``.old-*``
  folder whose owner process (the pid in its name, on this host) is gone. Hidden folders are
  never outputs: nothing reads them, and no report names them.
- **Only its own files are replaced.** A build writes ``out/<target>/`` folders and
  ``report.json``, ``report.md``, ``report.html`` (plus ``gates.xml``, ``rejected-report.json``
  when quality gates run) and touches nothing else in ``out``: a user's other files there are
  kept. It replaces one of those destinations only when secompile wrote all of it: a target
  folder whose files are all named by its ``manifest.json`` (the artifact, ``manifest.json``
  and the side files), a report file that carries secompile's signature. A destination that
  holds anything else (say ``out/cpu/notes.txt``) is refused before any pass runs, with an
  :class:`OutputError` naming the files: move them away or choose another ``--out``.
- **Write failures are named.** A read-only ``out``, a full disk or any other failed write of
  the outputs is an :class:`OutputError` (exit 2) naming the folder and the reason, and the
  staging folder is removed: nothing half-written stays in ``out``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from secompile.compiler.core.artifact import MANIFEST_FILE, manifest_files
from secompile.compiler.core.errors import OutputError

STAGING_PREFIX = ".staging-"  # + "<pid>-": a build's outputs before they are committed
TRASH_PREFIX = ".old-"  # + "<pid>-": the outputs a commit replaces, until it is done
OWNER_FILE = ".owner"  # in both: the host whose pid the folder name gives
REPORT_FILES = ("report.json", "report.md", "report.html")
GATE_FILES = ("gates.xml", "rejected-report.json")


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """Turn a failed write of the build's outputs (full disk, read-only folder...) into an
    :class:`OutputError`; the caller removes the staging folder."""
    try:
        yield
    except OSError as exc:
        path = exc.filename2 or exc.filename  # a copy's destination, else the file written
        inside = path is not None and Path(os.path.abspath(path)).is_relative_to(
            os.path.abspath(out))
        where = f" ({path})" if path is not None and not inside else ""
        raise OutputError(f"cannot write the build's outputs to {out}: "
                          f"{exc.strerror or exc}{where}; nothing of this build was left "
                          f"there") from None


def owned_folder(out: Path, prefix: str) -> Path:
    """A new hidden folder ``out/<prefix><pid>-*`` that records its owner (host and pid)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out))
    try:
        (folder / OWNER_FILE).write_text(socket.gethostname() + "\n")
    except BaseException:  # a full disk: leave no empty folder behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _owner_alive(folder: Path) -> bool:
    """Whether the build that made staging or trash ``folder`` may still be running: its pid
    is alive, or it ran on another host (which this one cannot ask)."""
    found = re.match(rf"({re.escape(STAGING_PREFIX)}|{re.escape(TRASH_PREFIX)})(\d+)-",
                     folder.name)
    if found is None:  # named by a secompile that did not record pids: a day old is dead
        return time.time() - folder.stat().st_mtime < 86400
    with contextlib.suppress(OSError):
        host = (folder / OWNER_FILE).read_text().strip()
        if host and host != socket.gethostname():
            return True
    pid = int(found.group(2))
    if pid == os.getpid():
        return True  # another build in this very process (a fleet's thread)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def drop_stale_staging(out: Path, log: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Remove the staging and trash folders that killed builds left in ``out`` (their owner
    process is gone); return them. Folders of running builds are left alone."""
    removed = []
    for folder in sorted(out.glob(".*")):
        if not folder.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or not folder.is_dir():
            continue
        with contextlib.suppress(OSError):
            if not _owner_alive(folder):
                shutil.rmtree(folder)
                removed.append(folder)
                log(f"  removed {folder.name}, left in {out} by an interrupted build")
    return removed


def _signature(path: Path) -> bool:
    """Whether the top-level file ``path`` carries the signature of secompile's reports."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            return isinstance(data, dict) and "secompile" in data
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except (OSError, ValueError):
        return False
    marks = {"report.md": b"# secompile report", "report.html": b"<title>secompile report",
             "gates.xml": b"secompile.gates"}
    return marks.get(path.name, b"\0\0") in head


def _manifest_files(folder: Path) -> set[str]:
    """The files of target folder ``folder`` that its ``manifest.json`` names (none when it
    has no readable secompile manifest)."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or "artifact" not in data or "side_files" not in data:
        return set()
    return {MANIFEST_FILE, *manifest_files(data)}


def foreign_files(out: Path, names: Iterable[str]) -> list[str]:
    """The files at ``out/<name>`` for each of ``names`` that secompile did not write
    (relative to ``out``): what replacing those destinations would destroy."""
    foreign: list[str] = []
    for name in names:
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            if path.is_symlink() or name not in (*REPORT_FILES, *GATE_FILES) \
                    or not _signature(path):
                foreign.append(name)
        elif path.is_dir():
            known = _manifest_files(path)
            foreign += sorted(str(p.relative_to(out)) for p in path.rglob("*")
                              if (p.is_symlink() or not p.is_dir())
                              and p.relative_to(path).as_posix() not in known)
    return foreign


def check_destinations(out: Path, names: Iterable[str]) -> None:
    """Refuse (:class:`OutputError`) to replace destinations ``out/<name>`` that hold files
    secompile did not write, naming them and what to do."""
    foreign = foreign_files(out, names)
    if foreign:
        more = f" (and {len(foreign) - 3} more)" if len(foreign) > 3 else ""
        raise OutputError(f"output folder {out} holds files secompile did not write: "
                          f"{', '.join(foreign[:3])}{more}; the build would replace them: "
                          f"move them away or choose another --out (nothing was changed)")


@contextlib.contextmanager
def _out_locked(out: Path) -> Iterator[None]:
    """An exclusive lock on the folder ``out`` itself (no lock file left in it), where the
    platform has ``flock``: two builds into one folder commit one after the other."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): commits are not serialized
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (main thread only: Python delivers signals there) so a
    Ctrl-C lands after the commit, never half way through it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def commit(staging: Path, out: Path) -> None:
    """Move every staged entry into ``out``, replacing older ones of the same name when
    secompile wrote all of them (else :class:`OutputError`, nothing changed).

    Locked against other builds into ``out``, with SIGINT/SIGTERM held back; a failed move puts
    back what was there. ``report.json`` moves last: its presence means every artifact it
    names is in place.
    """
    entries = sorted((e for e in staging.iterdir() if not e.name.startswith(".")),
                     key=lambda p: p.name == "report.json")
    with _out_locked(out), _signals_held():
        check_destinations(out, [e.name for e in entries])
        trash = owned_folder(out, TRASH_PREFIX)
        done: list[tuple[Path, Path | None]] = []
        try:
            for entry in entries:
                destination = out / entry.name
                backup = trash / entry.name if os.path.lexists(destination) else None
                if backup is not None:
                    os.replace(destination, backup)
                try:
                    os.replace(entry, destination)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, destination)
                    raise
                done.append((destination, backup))
        except BaseException:
            for destination, backup in reversed(done):  # put back the previous outputs
                with contextlib.suppress(OSError):
                    _delete(destination)
                    if backup is not None:
                        os.replace(backup, destination)
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
