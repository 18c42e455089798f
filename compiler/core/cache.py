"""Content-addressed cache of pass outputs.

A key is the sha256 of the pass's input (the previous pass's key, or the input model's hash),
the pass name, its canonical config, the pass's own extra inputs (evaluation data, threads...),
library versions and a hash of secompile's code, so every key of a pipeline is known before
anything runs. Entries are written to a temporary folder and renamed into place, so a crash
never leaves a half entry; an unreadable entry is a miss.

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
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from secompile.compiler.core.artifact import Artifact
from secompile.compiler.core.pass_base import PassResult

_ENTRY_VERSION = 2
KINDS = ("file", "passthrough", "state", "torch")
STATE_FILE = "state.pt"


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
    """A folder of cache entries, one sub-folder per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key``, or ``None`` (also for an unreadable entry)."""
        folder = self._folder(key)
        try:
            meta = json.loads((folder / "entry.json").read_text())
            kind = meta["kind"]
        except (OSError, ValueError, KeyError):
            return None
        if kind not in KINDS or (kind == "file" and not (folder / meta["payload"]).is_file()):
            return None
        if kind == "state" and not (folder / STATE_FILE).is_file():
            return None
        if not all((folder / "files" / name).is_file() for name in meta.get("files", [])):
            return None
        return CacheEntry(key, kind, folder, meta)

    def store(self, key: str, source: Artifact, result: PassResult,
              keep_state: bool = False) -> None:
        """Store ``result`` of a pass run on ``source`` under ``key`` (atomically); with
        ``keep_state`` a torch output's weights are kept (a ``state`` entry)."""
        folder = self._folder(key)
        if folder.exists():
            return
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
            }
            (staging / "entry.json").write_text(json.dumps(meta, indent=1, default=str))
            os.replace(staging, folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not folder.exists():
                raise
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
