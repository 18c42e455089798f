"""PassManager with instruments and the content-addressed cache."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest
import torch

from secompile.compiler.core.artifact import file_sha256
from secompile.compiler.core.cache import PassCache, cache_key
from secompile.compiler.core.errors import PassError
from secompile.compiler.core.manager import PassManager
from secompile.compiler.core.pass_base import Pass, PassConfig, PassResult
from secompile.compiler.core.pipeline import PipelineSpec
from secompile.compiler.runtime.parity import default_instruments
from secompile.targets import get_target


def _manager(text: str, cache: PassCache | None = None) -> PassManager:
    return PassManager.from_spec(PipelineSpec.parse(text), get_target("cpu"), cache=cache,
                                 instruments=default_instruments())


def test_records_instruments_and_cache_hits(tiny, make_ctx, tmp_path) -> None:
    cache = PassCache(tmp_path / "cache")
    text = "fuse-conv-bn,export-onnx"
    first = _manager(text, cache).run(tiny, make_ctx(tiny))
    assert [r["cache"] for r in first.records] == ["miss", "miss"]
    for record in first.records:
        assert record["seconds"] >= 0 and record["peak_rss_mb"] > 0
        assert record["parity_max_abs"] <= record["parity_tolerance"]
    second = _manager(text, cache).run(tiny, make_ctx(tiny))
    assert second.cache_hits == ["fuse-conv-bn", "export-onnx"]
    assert file_sha256(second.artifact.path) == file_sha256(first.artifact.path)
    assert second.artifact.lineage == first.artifact.lineage
    changed = _manager("fuse-conv-bn,export-onnx{opset=18}", cache).run(tiny, make_ctx(tiny))
    # A config change invalidates that pass; the torch pass before it runs again because
    # torch modules are never stored, but keeps its key.
    assert changed.cache_hits == []
    assert changed.records[0]["cache_key"] == first.records[0]["cache_key"]
    assert changed.records[1]["cache_key"] != first.records[1]["cache_key"]


def test_cache_holds_no_pickles_and_resumes_after_the_last_file(tiny, make_ctx, tmp_path) -> None:
    assert cache_key({"x": 1}) == cache_key({"x": 1}) != cache_key({"x": 2})
    cache = PassCache(tmp_path / "cache")
    text = "fuse-conv-bn,export-onnx"
    first = _manager(text, cache).run(tiny, make_ctx(tiny))
    stored = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not any(name.endswith((".pt", ".pkl")) for name in stored), stored
    fuse_key, export_key = (r["cache_key"] for r in first.records)
    assert cache.lookup(fuse_key).kind == "torch" and cache.lookup(export_key).kind == "file"
    shutil.rmtree(cache.lookup(export_key).folder)
    rerun = _manager(text, cache).run(tiny, make_ctx(tiny))
    assert [r["cache"] for r in rerun.records] == ["miss", "miss"], "a torch entry cannot serve"
    (cache.lookup(export_key).folder / "entry.json").write_text("{ not json")
    assert cache.lookup(export_key) is None, "an unreadable entry is a miss"


@dataclass(frozen=True)
class _BreakConfig(PassConfig):
    parity_tolerance: float = 1e-4


class _Breaker(Pass):
    """Scales the output: the parity verifier must catch it."""

    name = "break-output"
    Config = _BreakConfig

    def run(self, artifact, ctx) -> PassResult:
        class Scaled(torch.nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, wav):
                return self.inner(wav) * 1.5

        return PassResult(artifact.derive(self.name, module=Scaled(artifact.module)), True)


class _Crash(Pass):
    name = "crash"

    def run(self, artifact, ctx) -> PassResult:
        raise ValueError("boom")


def test_parity_verifier_names_the_pass_and_those_before(tiny, make_ctx) -> None:
    from secompile.passes.fuse_conv_bn import FuseConvBn

    manager = PassManager([FuseConvBn(), _Breaker()], instruments=default_instruments())
    with pytest.raises(PassError) as info:
        manager.run(tiny, make_ctx(tiny))
    message = str(info.value)
    assert "pass 'break-output' failed" in message
    assert "max abs on real audio (tolerance 0.0001)" in message
    assert "passes before it: fuse-conv-bn" in message


def test_internal_failures_become_pass_errors(tiny, make_ctx) -> None:
    with pytest.raises(PassError, match=r"pass 'crash' failed: ValueError: boom .*nothing"):
        PassManager([_Crash()]).run(tiny, make_ctx(tiny))


def test_dump_instrument_writes_every_pass_output(tiny, make_ctx, tmp_path) -> None:
    from secompile.compiler.core.instruments import DumpInstrument
    from secompile.passes.export_onnx import ExportOnnx
    from secompile.passes.fuse_conv_bn import FuseConvBn

    manager = PassManager([FuseConvBn(), ExportOnnx()],
                          instruments=[*default_instruments(), DumpInstrument(tmp_path / "dump")])
    run = manager.run(tiny, make_ctx(tiny))
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == [
        "00-fuse-conv-bn.pt", "01-export-onnx.onnx"]
    state = torch.load(tmp_path / "dump" / "00-fuse-conv-bn.pt", weights_only=True)
    assert "core.conv.weight" in state
    assert run.records[1]["dump"].endswith("01-export-onnx.onnx")


def test_side_outputs_reach_later_passes_fresh_or_cached(tiny, make_ctx, tmp_path) -> None:
    cache = PassCache(tmp_path / "cache")
    text = "stream,export-onnx"
    ctx = make_ctx(tiny)
    first = _manager(text, cache).run(tiny, ctx)
    assert ctx.outputs["model_stream.onnx"].is_file()
    served = make_ctx(tiny)
    again = _manager(text, cache).run(tiny, served)
    assert again.cache_hits == ["stream", "export-onnx"]
    path = served.outputs["model_stream.onnx"]
    assert path.is_relative_to(tmp_path / "cache")
    assert file_sha256(path) == file_sha256(first.results[0].files[0])
    path.unlink()  # an entry that lost a side output is a miss, never a build without it
    assert cache.lookup(first.records[0]["cache_key"]) is None


@pytest.mark.parametrize("text", ["prune{ratio=0.5 steps=0 round_to=1 min_agreement_db=0}",
                                  "distill{width=0.5 steps=0}"])
def test_state_entries_rebuild_the_shrunk_module(tiny, make_ctx, tmp_path, text) -> None:
    from secompile.compiler.core.cache import STATE_FILE
    from tests.conftest import noise_audio

    cache = PassCache(tmp_path / "cache")
    first = _manager(f"{text},export-onnx", cache).run(tiny, make_ctx(tiny))
    assert [r["cache"] for r in first.records] == ["miss", "miss"]
    onnx_sha = file_sha256(first.artifact.path)  # the next run reuses the same work folder
    entry = cache.lookup(first.records[0]["cache_key"])
    assert entry.kind == "state" and (entry.folder / STATE_FILE).is_file()
    # Another export option: the export is a miss, so the shrunk module itself is served
    # (rebuilt from its weights by the pass's restore), not superseded by a cached ONNX file.
    second = _manager(f"{text},export-onnx{{opset=18}}", cache).run(tiny, make_ctx(tiny))
    assert [r["cache"] for r in second.records] == ["hit", "miss"]
    fresh, served = first.results[0], second.results[0]
    assert served.modified and served.metrics == fresh.metrics
    core = served.artifact.module.core
    assert core.gru.hidden_size == 4 and core.conv.out_channels == 4
    assert core.deconv.out_channels == 2 and core.bn2.num_features == 2
    a, b = fresh.artifact.module.state_dict(), served.artifact.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert served.artifact.lineage == fresh.artifact.lineage
    assert served.artifact.content_hash() == fresh.artifact.content_hash()
    wav = torch.as_tensor(noise_audio(0.8, 2))
    with torch.inference_mode():
        assert torch.equal(served.artifact.module(wav), fresh.artifact.module(wav))
    assert tiny.module.core.gru.hidden_size == 8, "restore must not touch the input module"
    third = _manager(f"{text},export-onnx", cache).run(tiny, make_ctx(tiny))
    assert third.cache_hits == [text.split("{")[0], "export-onnx"]
    assert file_sha256(third.artifact.path) == onnx_sha
