"""PipelineSpec: parsing, TOML, canonical text, and up-front validation."""

from __future__ import annotations

import pytest

from compiler.errors import ConfigError
from compiler.pipeline import PipelineSpec, canonical_text
from targets import get_target

CPU = get_target("cpu")


def test_text_round_trip_and_canonical_form() -> None:
    spec = PipelineSpec.parse("fuse-conv-bn, export-onnx{opset=17 simplify=onnxsim},validate")
    assert spec.text() == "fuse-conv-bn,export-onnx{opset=17 simplify=onnxsim},validate"
    assert PipelineSpec.parse(spec.text()) == spec
    passes = spec.resolve(CPU)
    text = canonical_text(passes)
    assert text.startswith("fuse-conv-bn{parity_tolerance=1e-05},export-onnx{compact_dft=true")
    assert canonical_text(PipelineSpec.parse(text).resolve(CPU)) == text


def test_toml_form(tmp_path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[pass]]\nname = "fuse-conv-bn"\n[[pass]]\nname = "export-onnx"\n'
                    'opset = 18\n[[pass]]\nname = "validate"\nrepeats = 5\n')
    passes = PipelineSpec.load(str(path)).resolve(CPU)
    assert [p.name for p in passes] == ["fuse-conv-bn", "export-onnx", "validate"]
    assert passes[1].config.opset == 18 and passes[2].config.repeats == 5


@pytest.mark.parametrize("text, message", [
    ("fuse-conv-bn,export-onnx,teleport", "unknown pass 'teleport' (valid passes: aot-inductor, export-onnx"),
    ("export-onnx{opset=99}", "opset must be between 13 and 21"),
    ("export-onnx{opset=seventeen}", "option 'opset' must be int, got 'seventeen'"),
    ("export-onnx{speed=11}", "unknown option 'speed'"),
    ("export-onnx,fuse-conv-bn", ("'fuse-conv-bn' needs a torch model, but 'export-onnx' "
                                  "before it produces onnx (wrong pass order)")),
    ("fuse-conv-bn", "ends with a torch model but the target ships onnx"),
    ("", "pipeline is empty"),
    ("export-onnx{opset=17", "unbalanced braces"),
])
def test_bad_pipelines_are_rejected_before_work(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PipelineSpec.parse(text).resolve(CPU)
    assert message in str(info.value)


def test_bad_toml_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[pass]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        PipelineSpec.load(str(path))
    with pytest.raises(ConfigError, match="not found"):
        PipelineSpec.load(str(tmp_path / "missing.toml"))


def test_long_canonical_text_loads_back_and_duplicates_are_rejected(tmp_path) -> None:
    text = canonical_text(PipelineSpec.parse(CPU.default_pipeline).resolve(CPU))
    assert len(text) > 255  # longer than a file name may be
    assert canonical_text(PipelineSpec.load(text).resolve(CPU)) == text
    with pytest.raises(ConfigError, match="option 'opset' given twice"):
        PipelineSpec.parse("export-onnx{opset=17 opset=13}")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        PipelineSpec.load(str(tmp_path / "dir.toml"))


def test_including_adds_a_pass_once_before_another() -> None:
    spec = PipelineSpec.parse("fuse-conv-bn,export-onnx{opset=17},validate")
    streamed = spec.including("stream", before="export-onnx")
    assert streamed.text() == "fuse-conv-bn,stream,export-onnx{opset=17},validate"
    assert streamed.including("stream", before="export-onnx") is streamed
    with pytest.raises(ConfigError, match="no 'export-onnx' pass"):
        PipelineSpec.parse("fuse-conv-bn").including("stream", before="export-onnx")
