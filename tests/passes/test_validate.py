"""validate: measures both sides and never modifies the artifact."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf

from secompile.calibration.datasets import PairedFolder
from secompile.compiler.core.errors import ConfigError
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.validate import Validate, ValidateConfig
from tests.conftest import noise_audio


def test_validate_reports_every_measure(tiny, make_ctx, tmp_path) -> None:
    for sub in ("clean", "noisy"):
        (tmp_path / "eval" / sub).mkdir(parents=True)
    for i in range(2):
        clean = noise_audio(1.5, seed=i)[0]
        sf.write(tmp_path / "eval" / "clean" / f"{i}.wav", clean, 16000)
        sf.write(tmp_path / "eval" / "noisy" / f"{i}.wav", clean + noise_audio(1.5, 9)[0], 16000)
    evaluation = PairedFolder.scan(tmp_path / "eval", 16000)
    ctx = make_ctx(tiny, evaluation=evaluation)
    onnx_art = ExportOnnx().run(tiny, ctx).artifact
    cfg = ValidateConfig(repeats=3, long_repeats=2, batch=2)
    result = Validate(cfg).run(onnx_art, ctx)
    m = result.metrics
    assert not result.modified and result.artifact is onnx_art
    for key in ("speedup", "speedup_10s", "throughput_speedup", "size_reduction",
                "memory_reduction"):
        assert m[key] > 0, key
    assert m["latency_ms"]["1s"]["baseline"]["runs"] == 3
    assert m["peak_rss_mb"]["artifact"] > 0
    q = m["quality"]
    assert q["files"] == 2
    assert abs(q["delta"]["si_sdr"]) < 0.01
    assert set(q["delta"]) == {"si_sdr", "pesq", "stoi"}
    assert q["max_abs_vs_baseline"] < 1e-4
    shutil.rmtree(tmp_path / "eval")


def test_validate_without_eval_has_no_quality(tiny, make_ctx) -> None:
    ctx = make_ctx(tiny)
    cfg = ValidateConfig(repeats=2, long_repeats=1, batch=1, memory=False)
    result = Validate(cfg).run(tiny, ctx)
    assert "quality" not in result.metrics
    assert result.metrics["speedup"] > 0


@pytest.mark.parametrize("options", [{"repeats": 0}, {"batch": -1}, {"memory": 1}])
def test_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match="validate"):
        ValidateConfig.from_options(options, "validate")
