"""Content-addressed cache of pass outputs.

A key is the sha256 of the pass's input (the previous pass's key, or the input model's hash),
the pass name, its canonical config, the pass's own extra inputs (evaluation data, threads...),
library versions and a hash of secompile's code, so every key of a pipeline is known before
anything runs. Entries are written to a temporary folder and renamed into place, so a crash
never leaves a half entry.

Integrity: ``entry.json`` records the sha256 of every file of the entry and of its own content
(``self_sha256``, over the canonical JSON of everything else). A lookup verifies them all; an
entry that fails (bytes changed, a file truncated or missing, ``entry.json`` edited or
unreadable) is corrupted: the lookup warns ("cache entry X corrupted (...), rebuilding"),
removes it and answers a miss, so the pass runs again and its fresh output replaces the entry.
A corrupted entry is never served.

Concurrency: builds on one machine (or one shared file system with working ``flock``) may share
a cache folder. Writing an entry and removing a corrupted one hold a per-key lock
(``<key[:2]>/.<key>.lock``, the ``filelock`` package); readers need none, since an entry
becomes visible only by an atomic rename of a complete folder. Two builds that miss the same
key both run the pass; the second to store finds a verified entry and keeps it.

An entry holds the pass's metrics and files and one of three outputs:

``file``
    the output artifact's file (an ONNX model), stored and served as is;
``passthrough``
    the pass returned its input unchanged (``validate``, a rewrite that did not apply);
``state``
    a torch module a pass can rebuild from its input and weights alone (``Pass.restore``:
    ``prune`` and ``distill``, whose minutes of training are worth keeping): its state_dict is
    stored (``torch.save``) and loaded back with ``weights_only=True``, so no code is unpickled;
``torch``
    any other in-memory torch module: only recorded, never stored. Pickling a module would need
    the user's code at load time and unpickling is code execution, so a cache that loads only
    data is the safe one. The manager instead resumes after the last cached file artifact;
    the torch passes before it are reported as hits, and a torch pass whose successor is not
    cached simply runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from secompile.compiler.core.artifact import Artifact, file_sha256
from secompile.compiler.core.pass_base import PassResult

_ENTRY_VERSION = 3  # 3: entry.json holds the sha256 of each file and of itself
KINDS = ("file", "passthrough", "state", "torch")
STATE_FILE = "state.pt"
ENTRY_FILE = "entry.json"
# How long a build waits for another build writing the same entry before it skips storing.
LOCK_SECONDS = 300


class CorruptEntry(Exception):
    """A stored entry failed verification (internal to :class:`PassCache`)."""


def _self_sha256(meta: dict[str, Any]) -> str:
    """The hash ``entry.json`` records of its own content (every key but ``self_sha256``), over
    the canonical JSON form, so it is the same before and after a write-and-read."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != "self_sha256"},
                                 default=str))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """Stable sha256 of a JSON-able description of a pass invocation."""
    blob = json.dumps({"v": _ENTRY_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """A stored pass outcome (see the module docstring for ``kind``)."""

    key: str
    kind: str
    folder: Path
    meta: dict[str, Any]

    def result(self, source: Artifact, restore: Callable[[Artifact, dict], Any] | None = None
               ) -> PassResult:
        """The cached ``PassResult`` for input ``source`` (not for ``torch`` entries);
        ``restore`` rebuilds a ``state`` entry's module from ``source`` and the weights."""
        if self.kind == "passthrough":
            artifact = source
        elif self.kind == "state":
            import torch

            if restore is None:
                raise ValueError("a state cache entry needs the pass's restore function")
            state = torch.load(self.folder / STATE_FILE, map_location="cpu", weights_only=True)
            artifact = replace(source, module=restore(source, state),
                               metadata=self.meta["metadata"], lineage=tuple(self.meta["lineage"]))
        elif self.kind == "file":
            artifact = replace(
                source, format=self.meta["format"], module=None,
                path=self.folder / self.meta["payload"], metadata=self.meta["metadata"],
                lineage=tuple(self.meta["lineage"]),
            )
        else:
            raise ValueError("a torch cache entry records a result but cannot rebuild it")
        return PassResult(artifact, self.meta["modified"], self.meta["metrics"], self.files)

    @property
    def files(self) -> tuple[Path, ...]:
        """The side outputs the pass wrote, as stored in this entry."""
        return tuple(self.folder / "files" / name for name in self.meta["files"])


class PassCache:
    """A folder of cache entries, one sub-folder per key, verified on every lookup.

    ``warn`` receives the one-line warning about a corrupted entry (default: the
    ``secompile`` logger)."""

    def __init__(self, root: Path, warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.warn = warn or logging.getLogger("secompile").warning

    def _folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _lock(self, key: str, timeout: float = LOCK_SECONDS) -> FileLock:
        """The lock held while the entry of ``key`` is written or removed."""
        folder = self._folder(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(folder.parent / f".{key}.lock", timeout=timeout)

    @staticmethod
    def _verified(key: str, folder: Path) -> CacheEntry:
        """The entry in ``folder``, every hash checked; :class:`CorruptEntry` saying why not."""
        try:
            meta = json.loads((folder / ENTRY_FILE).read_text())
        except FileNotFoundError:
            raise CorruptEntry(f"{ENTRY_FILE} missing") from None
        except (OSError, ValueError) as exc:
            raise CorruptEntry(f"{ENTRY_FILE} unreadable: {exc}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
            raise CorruptEntry(f"{ENTRY_FILE} has no file hashes")
        if meta.get("self_sha256") != _self_sha256(meta):
            raise CorruptEntry(f"sha256 mismatch: {ENTRY_FILE}")
        kind, hashes = meta.get("kind"), meta["sha256"]
        if kind not in KINDS:
            raise CorruptEntry(f"unknown kind {kind!r}")
        needed = [f"files/{name}" for name in meta.get("files", [])]
        needed += [meta.get("payload")] if kind == "file" else []
        needed += [STATE_FILE] if kind == "state" else []
        for name in needed:
            if name not in hashes:
                raise CorruptEntry(f"no sha256 recorded for {name}")
        for name, digest in hashes.items():
            try:
                actual = file_sha256(folder / name)
            except OSError:
                raise CorruptEntry(f"file missing: {name}") from None
            if actual != digest:
                raise CorruptEntry(f"sha256 mismatch: {name}")
        return CacheEntry(key, kind, folder, meta)

    def lookup(self, key: str) -> CacheEntry | None:
        """The verified entry stored under ``key``, or ``None``: a miss, also for a corrupted
        entry, which is reported through ``warn`` and removed."""
        folder = self._folder(key)
        if not folder.is_dir():
            return None
        try:
            return self._verified(key, folder)
        except CorruptEntry as exc:
            self.warn(f"cache entry {key[:12]} corrupted ({exc}), rebuilding")
        try:
            with self._lock(key, timeout=30):
                # Another build may have replaced it meanwhile: only a still-bad entry goes.
                try:
                    return self._verified(key, folder)
                except CorruptEntry:
                    self._remove(folder)
        except OSError:  # a read-only cache or a busy lock: still a miss, removed next time
            pass
        return None

    @staticmethod
    def _remove(folder: Path) -> None:
        """Delete an entry: renamed away first, so no reader sees it half deleted."""
        if not folder.exists():
            return
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=folder.parent))
        os.replace(folder, trash / folder.name)
        shutil.rmtree(trash, ignore_errors=True)

    def store(self, key: str, source: Artifact, result: PassResult,
              keep_state: bool = False) -> None:
        """Store ``result`` of a pass run on ``source`` under ``key`` (atomically, holding the
        key's lock); with ``keep_state`` a torch output's weights are kept (a ``state``
        entry). A verified entry already there is kept; a corrupted one is replaced.
        Raises ``OSError`` (``filelock.Timeout`` included) when it cannot store."""
        folder = self._folder(key)
        with self._lock(key):
            if folder.exists():
                try:
                    self._verified(key, folder)
                    return
                except CorruptEntry:
                    self._remove(folder)
            self._write(folder, source, result, keep_state)

    @staticmethod
    def _write(folder: Path, source: Artifact, result: PassResult, keep_state: bool) -> None:
        artifact = result.artifact
        if artifact is source:
            kind = "passthrough"
        elif artifact.format == "torch":
            kind = "state" if keep_state else "torch"
        else:
            kind = "file"
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            payload = None
            if kind == "file":
                payload = artifact.path.name
                shutil.copy2(artifact.path, staging / payload)
            elif kind == "state":
                import torch

                torch.save(artifact.module.state_dict(), staging / STATE_FILE)
            (staging / "files").mkdir()
            for path in result.files:
                shutil.copy2(path, staging / "files" / path.name)
            meta = {
                "kind": kind,
                "format": artifact.format,
                "payload": payload,
                "metadata": artifact.metadata,
                "lineage": list(artifact.lineage),
                "modified": result.modified,
                "metrics": result.metrics,
                "files": [p.name for p in result.files],
                "sha256": {p.relative_to(staging).as_posix(): file_sha256(p)
                           for p in sorted(staging.rglob("*")) if p.is_file()},
            }
            meta["self_sha256"] = _self_sha256(meta)
            (staging / ENTRY_FILE).write_text(json.dumps(meta, indent=1, default=str))
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
