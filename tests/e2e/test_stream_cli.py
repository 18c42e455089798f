"""Streaming end to end: ``build --stream`` / ``--target edge``, the manifest and report,
``enhance --stream``, the cache, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from secompile.compiler.core.artifact import file_sha256
from secompile.compiler.runtime.streaming import STREAM_FILE, StreamSession
from tests.e2e.test_cli import _cli

QUICK_VALIDATE = "validate{repeats=4 long_repeats=2 batch=2 memory=false}"
DEMO_NOISY = Path(__file__).resolve().parents[2] / "models" / "demo_audio" / "noisy" / "demo.wav"


@pytest.fixture(scope="module")
def edge_build(tmp_path_factory) -> tuple[Path, Path, object]:
    """The shipped default model built for edge (streaming by default) with a pass cache."""
    root = tmp_path_factory.mktemp("edge")
    out, cache = root / "build", root / "cache"
    result = _cli("build", "--target", "edge", "--out", out, "--cache-dir", cache,
                  "--pipeline", f"fuse-conv-bn,merge-grouped-gru,stream,export-onnx,"
                                f"{QUICK_VALIDATE}")
    assert result.exit_code == 0, result.output
    return out, cache, result


def test_edge_build_writes_the_stream_its_contract_and_measurements(edge_build) -> None:
    out, _, result = edge_build
    assert (out / "edge" / STREAM_FILE).is_file() and (out / "edge" / "model.onnx").is_file()
    assert "stream:" in result.output
    manifest = json.loads((out / "edge" / "manifest.json").read_text())["streaming"]
    assert manifest["artifact"] == STREAM_FILE
    assert manifest["sha256"] == file_sha256(out / "edge" / STREAM_FILE)
    assert (manifest["hop"], manifest["delay_samples"]) == (256, 256)
    assert manifest["input"]["shape"] == [1, 256] and manifest["initial_state"] == "zeros"
    assert manifest["states"][0]["name"] == "state.analysis"
    streaming = json.loads((out / "report.json").read_text())["targets"]["edge"]["streaming"]
    assert streaming["equivalence"]["audio"] == "evaluation pairs"
    assert streaming["equivalence"]["max_abs"] <= 1e-4
    assert streaming["equivalence"]["max_abs_delta_si_sdr"] <= 0.01
    latency = streaming["latency"]
    assert latency["threads"] == 1 and latency["hop_ms"] == 16.0
    assert latency["per_hop_ms"]["p50"] > 0 and latency["per_hop_ms"]["hops"] > 0
    assert 0 <= latency["under_load"]["deadline_miss_share"] <= 1
    assert latency["under_load"]["busy_processes"] >= 1
    assert "Streaming artifact `edge/model_stream.onnx`" in (out / "report.md").read_text()


def test_enhance_stream_writes_the_aligned_streamed_output(edge_build, tmp_path: Path) -> None:
    out, _, _ = edge_build
    enhanced = tmp_path / "enhanced"
    result = _cli("enhance", out, "--stream", DEMO_NOISY, "-o", enhanced)
    assert result.exit_code == 0, result.output
    got, rate = sf.read(enhanced / "demo.wav", dtype="float32")
    noisy, _ = sf.read(DEMO_NOISY, dtype="float32")
    assert rate == 16000 and got.shape == noisy.shape
    expected = StreamSession(out / "edge" / STREAM_FILE).enhance(noisy)
    assert np.max(np.abs(got - expected)) < 1e-4  # wav is written as 16-bit PCM


def test_enhance_stream_errors_name_the_problem(edge_build, tmp_path: Path) -> None:
    out, _, _ = edge_build
    offline = _cli("enhance", out / "edge" / "model.onnx", "--stream", DEMO_NOISY, "-o", tmp_path)
    assert offline.exit_code == 2 and "not a secompile streaming artifact" in offline.output
    wrong_mode = _cli("enhance", out / "edge" / STREAM_FILE, DEMO_NOISY, "-o", tmp_path)
    assert wrong_mode.exit_code == 2 and "run it with --stream" in wrong_mode.output
    (tmp_path / "empty").mkdir()
    none = _cli("enhance", tmp_path / "empty", "--stream", DEMO_NOISY, "-o", tmp_path)
    assert none.exit_code == 2 and "holds no model_stream.onnx" in none.output


def test_cached_rebuild_still_ships_the_stream(edge_build, tmp_path: Path) -> None:
    out, cache, _ = edge_build
    again = tmp_path / "again"
    result = _cli("build", "--target", "edge", "--out", again, "--cache-dir", cache,
                  "--pipeline", f"fuse-conv-bn,merge-grouped-gru,stream,export-onnx,"
                                f"{QUICK_VALIDATE}")
    assert result.exit_code == 0, result.output
    report = json.loads((again / "report.json").read_text())["targets"]["edge"]
    assert "stream" in report["cache_hits"] and "validate" in report["cache_hits"]
    assert file_sha256(again / "edge" / STREAM_FILE) == file_sha256(out / "edge" / STREAM_FILE)
    assert report["streaming"]["latency"] is not None


def test_build_stream_flag_adds_the_pass_to_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cpu"
    result = _cli("build", "--stream", "--no-cache", "--out", out, "--pipeline",
                  "fuse-conv-bn,export-onnx")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())["targets"]["cpu"]
    assert report["pipeline"].startswith("fuse-conv-bn{parity_tolerance=1e-05},stream{")
    assert (out / "cpu" / STREAM_FILE).is_file()
    assert report["streaming"]["equivalence"]["audio"] == "parity clip"


def test_stream_flag_without_an_export_pass_is_a_config_error(tmp_path: Path) -> None:
    result = _cli("build", "--stream", "--no-cache", "--out", tmp_path / "x", "--pipeline",
                  "fuse-conv-bn")
    assert result.exit_code == 2 and "no 'export-onnx' pass" in result.output
    assert not (tmp_path / "x" / "cpu").exists()
