"""Content-addressed cache of pass outputs.

A key is the sha256 of the pass's input (the previous key, or the input model's hash), the
pass name, its canonical config, the pass's own extra inputs (evaluation data, threads...),
library versions and a hash of secompile's code. An entry holds the output artifact (ONNX file,
or a pickled torch module), the pass's metrics and the files it wrote. Entries are written to a
temporary folder and renamed into place, so a crash never leaves a half entry.

Torch modules are stored with ``torch.save`` and read back with ``weights_only=False``: the
cache only ever loads files that secompile itself wrote into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.artifact import Artifact
from compiler.passes import PassResult

_ENTRY_VERSION = 1


def cache_key(parts: dict[str, Any]) -> str:
    """Stable sha256 of a JSON-able description of a pass invocation."""
    blob = json.dumps({"v": _ENTRY_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CacheHit:
    """A stored pass output, ready to be turned back into a ``PassResult``."""

    key: str
    result: PassResult


class PassCache:
    """A folder of cache entries, one sub-folder per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str, source: Artifact, pass_name: str) -> CacheHit | None:
        """The cached result of running ``pass_name`` on ``source``, or ``None``."""
        entry = self._entry(key)
        meta_path = entry / "entry.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        changes: dict[str, Any] = {"format": meta["format"], "metadata": meta["metadata"]}
        if meta["format"] == "torch":
            import torch

            changes["module"] = torch.load(entry / "module.pt", weights_only=False)
            changes["path"] = None
        else:
            changes["path"] = entry / meta["payload"]
            changes["module"] = None
        artifact = source.derive(pass_name, **changes)
        files = tuple(entry / "files" / name for name in meta["files"])
        result = PassResult(artifact, meta["modified"], meta["metrics"], files)
        return CacheHit(key, result)

    def store(self, key: str, result: PassResult) -> None:
        """Store ``result`` under ``key`` (atomically; an existing entry is kept)."""
        entry = self._entry(key)
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            artifact = result.artifact
            payload = None
            if artifact.format == "torch":
                import torch

                torch.save(artifact.module, staging / "module.pt")
            else:
                payload = artifact.path.name
                shutil.copy2(artifact.path, staging / payload)
            (staging / "files").mkdir()
            for path in result.files:
                shutil.copy2(path, staging / "files" / path.name)
            meta = {
                "format": artifact.format,
                "payload": payload,
                "metadata": artifact.metadata,
                "modified": result.modified,
                "metrics": result.metrics,
                "files": [p.name for p in result.files],
            }
            (staging / "entry.json").write_text(json.dumps(meta, indent=1, default=str))
            os.replace(staging, entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not entry.exists():
                raise
