"""The Python API (``import secompile``): build, load/enhance/stream, profile, compare, the
``PerformanceOptimizer``, in-memory models, errors, and the README's example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import secompile
from secompile.calibration.audio import read_audio
from secompile.calibration.metrics import si_sdr
from secompile.compiler.app.build import BuildRequest
from secompile.compiler.runtime.streaming import zero_boundary_offline
from secompile.models.registry import from_module, load_model

REPO = Path(__file__).resolve().parents[2]
FAST = "fuse-conv-bn,merge-grouped-gru,export-onnx"


class Smoother(nn.Module):
    """A user's own waveform model ``[B, L] -> [B, L]`` with BatchNorm to fold."""

    sample_rate = 16000

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 9, padding=4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Conv1d(4, 1, 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.bn(self.conv(wav[:, None]))))[:, 0]


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> secompile.BuildResult:
    """The default model built for cpu with the fast pipeline, streaming artifact included."""
    out = tmp_path_factory.mktemp("api") / "build"
    return secompile.build(out=out, pipeline=FAST, stream=True, cache_dir=False)


def test_build_returns_artifacts_report_and_paths(default_build) -> None:
    result = default_build
    assert result.artifacts["cpu"] == result.out / "cpu" / "model.onnx"
    assert result.artifacts["cpu"].is_file() and result.manifests["cpu"].is_file()
    assert result.streams["cpu"].name == "model_stream.onnx"
    for path in (result.report_json, result.report_md, result.report_html):
        assert path.is_file()
    assert result.report["model"]["name"] == "default"
    assert result.gates["limits"] == {"si_sdr": 0.2, "pesq": 0.05}
    assert result.speedup("cpu") is None  # no validate pass: nothing measured, nothing claimed
    with pytest.raises(secompile.ConfigError, match="target 'edge' was not built"):
        result.target("edge")


def test_load_enhances_paths_arrays_tensors_and_batches(default_build) -> None:
    enhancer = secompile.load(default_build)
    assert enhancer.sample_rate == 16000 and enhancer.path == default_build.artifacts["cpu"]
    reference = load_model("default").module
    from_folder = secompile.load(default_build.out)  # a build folder works too
    from_path = enhancer.enhance(secompile.demo_wav())
    noisy = read_audio(secompile.demo_wav(), 16000)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(noisy)[None])[0].numpy()
    assert from_path.shape == noisy.shape
    assert si_sdr(from_path.astype(np.float64), expected.astype(np.float64)) > 60
    np.testing.assert_allclose(from_folder.enhance(noisy), from_path, atol=1e-6)
    batch = enhancer.enhance(torch.from_numpy(np.stack([noisy[:16000], noisy[16000:32000]])))
    assert batch.shape == (2, 16000)
    resampled = enhancer.enhance(np.zeros(8000, np.float32), sample_rate=8000)
    assert resampled.shape == (8000,)


def test_enhance_rejects_bad_audio(default_build) -> None:
    enhancer = secompile.load(default_build)
    with pytest.raises(secompile.DataError, match="NaN"):
        enhancer.enhance(np.full(16000, np.nan, np.float32))
    with pytest.raises(secompile.DataError, match="too short"):
        enhancer.enhance(np.zeros(10, np.float32))
    with pytest.raises(secompile.DataError, match=r"\[L\] or \[B, L\]"):
        enhancer.enhance(np.zeros((1, 1, 16000), np.float32))
    with pytest.raises(secompile.DataError, match="cannot read audio"):
        enhancer.enhance(REPO / "README.md")


def test_stream_runs_hop_by_hop_like_the_offline_artifact(default_build) -> None:
    enhancer = secompile.load(default_build)
    session = enhancer.stream()
    noisy = read_audio(secompile.demo_wav(), 16000)[:16000]
    streamed = session.enhance(noisy)
    # a stream starts from silence: it equals the offline model with zero (not reflect) padding
    expected = zero_boundary_offline(load_model("default").module, noisy)
    assert np.max(np.abs(streamed - expected)) < 1e-4
    session.reset()
    assert session.process(np.zeros(session.hop, np.float32)).shape == (session.hop,)
    # the streaming file itself loads as an Enhancer (run hop by hop)
    direct = secompile.load(default_build.streams["cpu"])
    np.testing.assert_allclose(direct.enhance(noisy), streamed, atol=1e-6)


def test_stream_without_a_streaming_artifact_says_how_to_get_one(tmp_path) -> None:
    result = secompile.build(out=tmp_path / "b", pipeline=FAST, cache_dir=False)
    with pytest.raises(secompile.ModelError, match="stream=True"):
        secompile.load(result).stream()
    with pytest.raises(secompile.ModelError, match="stream=True"):
        secompile.load("default").stream()


def test_in_memory_module_is_compiled_validated_and_left_untouched(tmp_path) -> None:
    torch.manual_seed(0)
    model = Smoother().train()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = secompile.build(model, out=tmp_path / "b", cache_dir=tmp_path / "cache",
                             pipeline="fuse-conv-bn,export-onnx,validate{speed=false}")
    assert model.training, "the caller's module keeps its mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hasattr(model, "bn"), "fuse-conv-bn rewrote a copy, not the caller's module"
    entry = result.target("cpu")
    assert entry["memory_reduction"] is not None and entry["memory_reduction"] > 0
    assert result.report["model"]["source"]["model"] is None
    assert result.report["model"]["source"]["in_memory"] == "Smoother"
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(wav)[None])[0].numpy()
    np.testing.assert_allclose(secompile.load(result).enhance(wav), expected, atol=1e-5)
    np.testing.assert_allclose(secompile.load(model).enhance(wav), expected, atol=1e-6)
    again = secompile.build(model, out=tmp_path / "b2", cache_dir=tmp_path / "cache",
                            pipeline="fuse-conv-bn,export-onnx")
    assert again.target("cpu")["cache_hits"] == ["fuse-conv-bn", "export-onnx"]


def test_editing_forward_changes_the_models_identity() -> None:
    class Edited(Smoother):
        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            return super().forward(wav) * 0.5

    first, second = Smoother(), Edited()
    second.load_state_dict(first.state_dict())
    a, b = from_module(first), from_module(second)
    assert a.info.code_sha256 != b.info.code_sha256
    assert a.content_hash() != b.content_hash()
    assert from_module(first).content_hash() == a.content_hash()


def test_build_errors_are_typed_and_name_the_problem(tmp_path) -> None:
    with pytest.raises(secompile.ConfigError, match="ray needs a model"):
        secompile.build(Smoother(), out=tmp_path / "a", ray="auto")
    with pytest.raises(secompile.ConfigError, match="targets is empty"):
        secompile.build(out=tmp_path / "a", targets=[])
    with pytest.raises(secompile.ConfigError, match="threads"):
        secompile.build(out=tmp_path / "a", threads=0)
    with pytest.raises(secompile.ConfigError, match="prune"):
        secompile.build(out=tmp_path / "a", prune=1.5)
    with pytest.raises(secompile.ConfigError, match="max_pesq_drop"):
        secompile.build(out=tmp_path / "a", max_pesq_drop=-1)
    with pytest.raises(secompile.TargetError, match="unknown target 'tpu'"):
        secompile.build(out=tmp_path / "a", targets=["tpu"])
    with pytest.raises(secompile.ConfigError, match="unknown pass"):
        secompile.build(out=tmp_path / "a", pipeline="fuse-conv-bn,speed-up")
    with pytest.raises(secompile.ModelError, match="unknown model 'nope'"):
        secompile.build("nope", out=tmp_path / "a")
    with pytest.raises(secompile.ModelError, match="expected a torch.nn.Module"):
        from_module(object())  # type: ignore[arg-type]
    with pytest.raises(secompile.ConfigError, match="distill"):
        BuildRequest(model=None, out=tmp_path, distill=1.0)
    assert not (tmp_path / "a" / "cpu").exists(), "no half-written artifact"


def test_build_out_defaults_to_a_fresh_temporary_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = secompile.build(pipeline=FAST, cache_dir=False)
    assert result.out.name.startswith("secompile-build-") and result.out.is_dir()
    assert not any(tmp_path.iterdir()), "nothing written to the working directory"


def test_profile_and_compare(default_build, tmp_path) -> None:
    onnx_profile = secompile.profile(default_build.artifacts["cpu"], threads=1,
                                     cache_dir=tmp_path)
    assert onnx_profile.backend == "onnxruntime" and onnx_profile.rows
    torch_profile = secompile.profile(Smoother(), threads=1, cache_dir=tmp_path, seconds=0.5)
    assert torch_profile.backend == "torch"
    assert {r.kind for r in torch_profile.rows} >= {"Conv1d"}
    with pytest.raises(secompile.ModelError, match="weights apply"):
        secompile.profile(default_build.artifacts["cpu"], weights="x.pt", cache_dir=tmp_path)
    with pytest.raises(secompile.ConfigError, match="seconds"):
        secompile.profile("default", seconds=0, cache_dir=tmp_path)

    same = secompile.compare(default_build, default_build.out, tolerances={"speedup": 0.2})
    assert same.ok and same.failed == [] and same.findings
    assert "no regression" in same.markdown() and same.table()
    same.write_junit(tmp_path / "gates.xml")
    assert (tmp_path / "gates.xml").read_text().startswith("<?xml")
    with pytest.raises(secompile.DataError, match="report not found"):
        secompile.compare(tmp_path / "missing", default_build)
    with pytest.raises(secompile.ConfigError, match="tolerance"):
        secompile.compare(default_build, default_build, ["speedup=fast"])


@pytest.mark.slow
def test_performance_optimizer_profiles_optimizes_and_validates(tmp_path) -> None:
    optimizer = secompile.PerformanceOptimizer("default", workdir=tmp_path, cache_dir=False)
    bottlenecks = optimizer.profile_pipeline()
    assert bottlenecks and bottlenecks[-1].time_share > 0
    shares = [b.time_share for b in bottlenecks]
    assert shares == sorted(shares, reverse=True) and sum(shares) > 0.5
    learned = next(b for b in bottlenecks if b.kind in ("GRU", "Conv2d", "ConvTranspose2d"))
    assert set(learned.strategies) == set(secompile.STRATEGIES)
    assert learned.potential is not None and 0 <= learned.potential <= learned.time_share
    glue = next((r for r in optimizer.profile.rows if r.name.endswith("(self)")), None)

    with pytest.raises(secompile.ConfigError, match="unknown strategy 'magic'"):
        optimizer.optimize_component(learned.name, "magic")
    with pytest.raises(secompile.ConfigError, match="unknown component 'nowhere'"):
        optimizer.optimize_component("nowhere", "onnx")
    if glue is not None:
        with pytest.raises(secompile.ConfigError, match="does not rewrite"):
            optimizer.optimize_component(glue.name, "int8")

    done = optimizer.optimize_component(learned.name, "onnx")
    assert done.artifact.is_file() and done.pipeline == secompile.STRATEGIES["onnx"].pipeline
    check = optimizer.validate_optimization(done, repeats=10)
    assert check.speedup > 0 and set(check.latency_ms) == {"torch", "artifact"}
    assert check.agreement_db > 60 and check.quality_match  # fp32 lowering: same function
    assert check.memory_mb["torch"] > 0 and check.memory_mb["artifact"] > 0
    assert check.memory_saved_mb == pytest.approx(
        check.memory_mb["torch"] - check.memory_mb["artifact"], abs=0.11)


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## Pipelines and passes")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the API section holds one runnable example"
    return blocks[0]


@pytest.mark.slow
def test_readme_api_example_runs_as_written(tmp_path, monkeypatch, capsys,
                                           default_cpu_build) -> None:
    monkeypatch.chdir(tmp_path)
    # the default cache of a user who ran the README's main job (`secompile build --out
    # build`) before: the example's first build, the same one, is served from it
    monkeypatch.setenv("XDG_CACHE_HOME", str(default_cpu_build[1]))
    # the README's own text, run as a user would paste it
    exec(compile(_readme_example(), "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    printed = capsys.readouterr().out
    assert "build-api/cpu/model.onnx" in printed and "own model:" in printed
    assert (tmp_path / "build-api" / "report.html").is_file()
    assert (tmp_path / "build-stream" / "cpu" / "model_stream.onnx").is_file()
