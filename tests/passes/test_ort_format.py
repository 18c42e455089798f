"""ort-format: the .ort file and its operator config, proven against the .onnx."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from secompile.compiler.core.errors import ConfigError
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.ort_format import OPERATORS_FILE, ORT_FILE, OrtFormat, OrtFormatConfig
from tests.conftest import noise_audio


def test_writes_a_loadable_ort_model_and_operator_config(tiny, make_ctx) -> None:
    art = ExportOnnx().run(tiny, make_ctx(tiny)).artifact
    result = OrtFormat().run(art, make_ctx(tiny).with_pass_dir(1, "ort-format"))
    assert not result.modified and result.artifact is art
    names = sorted(p.name for p in result.files)
    assert names == sorted([ORT_FILE, OPERATORS_FILE])
    ort_path = next(p for p in result.files if p.name == ORT_FILE)
    session = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"noisy": noise_audio()})
    assert out.shape == noise_audio().shape
    assert result.metrics["max_abs_vs_onnx"] <= 1e-5  # fp32: same arithmetic
    assert result.metrics["agreement_db"] >= 60
    assert any("Conv" in line for line in result.metrics["operator_lines"])


@pytest.mark.parametrize("options", [{"optimization": "all"}, {"min_agreement_db": 0}])
def test_config_errors(options) -> None:
    with pytest.raises(ConfigError):
        OrtFormatConfig.from_options(options, "ort-format")
