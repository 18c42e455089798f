"""Pass-cache faults: entries corrupted on disk (bytes changed, ``entry.json`` edited, a file
truncated) are detected by their sha256 and rebuilt, never shipped; two builds sharing one
cache folder at once both succeed with identical artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.cache import ENTRY_FILE, PassCache
from secompile.compiler.core.pass_base import PassResult
from tests.faults._support import build_args, reference, sha256, warm_cache
from tests.faults.harness import Observation, Probe


def _entry(cache: Path) -> Path:
    """The one entry of a ``--pipeline export-onnx`` build's cache."""
    (entry,) = [p.parent for p in cache.rglob(ENTRY_FILE)]
    return entry


def _corrupted_then_built(tmp: Path, corrupt: Callable[[Path], str]) -> Observation:
    """Corrupt the warm cache's entry with ``corrupt`` (which says what it did), build again
    and check the entry was detected, rebuilt, replaced, and never shipped."""
    from tests.faults.harness import secompile

    ref, _ = reference()
    cache = warm_cache(tmp)
    entry = _entry(cache)
    did = corrupt(entry)
    result = secompile(build_args(tmp / "out", cache), timeout=300)
    warning = next((line.strip() for line in result.stderr.splitlines()
                    if f"cache entry {entry.name[:12]} corrupted" in line), None)
    shipped = tmp / "out" / "cpu" / "model.onnx"
    same = shipped.is_file() and sha256(shipped) == ref
    hit = "cache hits" in result.stdout
    healed = PassCache(cache, warn=lambda _: None).lookup(entry.name) is not None
    ok = result.exit_code == 0 and warning is not None and not hit and same and healed
    return Observation(ok, f"{did}: exit {result.exit_code}; {warning or 'no warning'}; "
                           f"{'served from cache' if hit else 'rebuilt'}, model.onnx sha256 "
                           f"{'==' if same else '!='} clean build; entry "
                           f"{'replaced and verified' if healed else 'still bad'}")


def _flip_payload(entry: Path) -> str:
    payload = entry / "model.onnx"
    data = bytearray(payload.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    payload.write_bytes(bytes(data))
    return "16 payload bytes flipped (size kept)"


def _edit_entry_json(entry: Path) -> str:
    path = entry / ENTRY_FILE
    meta = json.loads(path.read_text())
    meta["modified"] = not meta["modified"]
    meta["lineage"] = [*meta["lineage"], "edited"]
    path.write_text(json.dumps(meta, indent=1))
    return "entry.json edited (modified, lineage)"


def _truncate_payload(entry: Path) -> str:
    payload = entry / "model.onnx"
    size = payload.stat().st_size
    with open(payload, "r+b") as handle:
        handle.truncate(size // 2)
    return f"payload truncated {size} -> {size // 2} bytes"


def _concurrent_builds(tmp: Path) -> Observation:
    ref, _ = reference()
    cache = tmp / "cache"
    outs = [tmp / "out-a", tmp / "out-b"]
    start = time.monotonic()
    command = [sys.executable, "-m", "secompile"]
    processes = [subprocess.Popen([*command, *map(str, build_args(o, cache))],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for o in outs]
    results = [(p, *p.communicate(timeout=300)) for p in processes]
    seconds = time.monotonic() - start
    codes = [p.returncode for p, _, _ in results]
    hashes = {sha256(o / "cpu" / "model.onnx") for o in outs
              if (o / "cpu" / "model.onnx").exists()}
    strays = [p.name for p in cache.rglob(".tmp-*")] + [p.name for p in cache.rglob(".trash-*")]
    healthy = PassCache(cache, warn=lambda _: None).lookup(_entry(cache).name) is not None
    ok = codes == [0, 0] and hashes == {ref} and healthy and not strays
    errors = "; ".join(err.strip().splitlines()[-1] for p, _, err in results
                       if p.returncode and err.strip())
    return Observation(ok, f"2 builds at once on one --cache-dir: exits {codes} in "
                           f"{seconds:.0f} s, {len(hashes)} distinct model.onnx "
                           f"({'== clean build' if hashes == {ref} else 'differs'}), cache entry "
                           f"{'verifies' if healthy else 'bad'}, {len(strays)} stray temp "
                           f"folders{'; ' + errors if errors else ''}")


PROBES: list[Probe] = [
    Probe("cache", "cache payload bytes changed",
          "sha256 mismatch warned, entry rebuilt and replaced, never shipped",
          lambda tmp: _corrupted_then_built(tmp, _flip_payload)),
    Probe("cache", "cache entry.json edited",
          "sha256 mismatch warned, entry rebuilt and replaced, never shipped",
          lambda tmp: _corrupted_then_built(tmp, _edit_entry_json)),
    Probe("cache", "cache file truncated",
          "sha256 mismatch warned, entry rebuilt and replaced, never shipped",
          lambda tmp: _corrupted_then_built(tmp, _truncate_payload)),
    Probe("cache", "two builds share one cache at once",
          "both succeed, identical artifacts, one sound entry", _concurrent_builds),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe, tmp_path):
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


# --- PassCache in process ---------------------------------------------------------------------


def _stored(tmp_path: Path, warnings: list[str] | None = None) -> tuple[PassCache, str, Path]:
    """A cache holding one ``file`` entry with a side file; its key and folder."""
    source_file = tmp_path / "in.onnx"
    source_file.write_bytes(b"input model")
    made = tmp_path / "made.onnx"
    made.write_bytes(b"output model " * 100)
    side = tmp_path / "side.json"
    side.write_text('{"side": 1}')
    info = ModelInfo(name="m", sample_rate=16000, source={"model": None})
    source = Artifact("onnx", info, path=source_file)
    result = PassResult(source.derive("p", path=made), True, {"n": 1.5, "nan": float("nan")},
                        (side,))
    cache = PassCache(tmp_path / "cache", warn=(warnings if warnings is not None else []).append)
    key = "ab" * 32
    cache.store(key, source, result)
    return cache, key, tmp_path / "cache" / key[:2] / key


def test_store_records_every_hash_and_lookup_verifies(tmp_path) -> None:
    cache, key, folder = _stored(tmp_path)
    meta = json.loads((folder / ENTRY_FILE).read_text())
    assert set(meta["sha256"]) == {"made.onnx", "files/side.json"}
    assert meta["sha256"]["made.onnx"] == sha256(folder / "made.onnx")
    entry = cache.lookup(key)
    assert entry is not None and entry.kind == "file"
    assert entry.files == (folder / "files" / "side.json",)


@pytest.mark.parametrize("damage", [
    lambda f: (f / "made.onnx").write_bytes(b"output model " * 99 + b"output mode! "),
    lambda f: (f / "files" / "side.json").write_text('{"side": 2}'),
    lambda f: (f / "files" / "side.json").unlink(),
    lambda f: (f / ENTRY_FILE).write_text((f / ENTRY_FILE).read_text()[:40]),
    lambda f: (f / ENTRY_FILE).write_text(
        (f / ENTRY_FILE).read_text().replace('"modified": true', '"modified": false')),
    lambda f: (f / ENTRY_FILE).unlink(),
], ids=["payload-byte", "side-file-changed", "side-file-missing", "entry-truncated",
        "entry-edited", "entry-missing"])
def test_a_corrupted_entry_is_a_warned_miss_and_removed(tmp_path, damage) -> None:
    warnings: list[str] = []
    cache, key, folder = _stored(tmp_path, warnings)
    damage(folder)
    assert cache.lookup(key) is None
    assert len(warnings) == 1 and warnings[0].startswith(f"cache entry {key[:12]} corrupted (")
    assert warnings[0].endswith("), rebuilding")
    assert not folder.exists(), "the bad entry is removed"
    assert not list(folder.parent.glob(".trash-*"))


def test_store_replaces_a_corrupted_entry_and_keeps_a_sound_one(tmp_path) -> None:
    cache, key, folder = _stored(tmp_path)
    (folder / "made.onnx").write_bytes(b"rotten")
    _stored(tmp_path)  # stores again under the same key: the rotten entry is replaced
    assert cache.lookup(key) is not None
    before = (folder / ENTRY_FILE).stat().st_mtime_ns
    _stored(tmp_path)  # a sound entry is kept as it is
    assert (folder / ENTRY_FILE).stat().st_mtime_ns == before


def test_concurrent_stores_of_one_key_leave_one_sound_entry(tmp_path) -> None:
    errors: list[BaseException] = []

    def store() -> None:
        try:
            _stored(tmp_path)
        except BaseException as exc:  # noqa: BLE001  (collected for the assertion)
            errors.append(exc)

    threads = [threading.Thread(target=store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    cache = PassCache(tmp_path / "cache")
    assert cache.lookup("ab" * 32) is not None
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_machine_peak_is_measured_once_by_concurrent_builds(tmp_path, monkeypatch) -> None:
    from secompile.compiler.analysis import profile

    calls: list[int] = []

    def slow_measure():
        calls.append(1)
        time.sleep(0.3)
        return profile.MachinePeak(1.0, 1.0, "cpu", "now")

    monkeypatch.setattr(profile, "measure_machine_peak", slow_measure)
    peaks: list = []
    threads = [threading.Thread(target=lambda: peaks.append(
        profile.machine_peak(tmp_path / "machine.json"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(peaks) == 3
    assert sum(p.cached for p in peaks) == 2
    assert json.loads((tmp_path / "machine.json").read_text())["gemm_gflops"] == 1.0
