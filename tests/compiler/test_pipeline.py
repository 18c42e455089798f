"""PipelineSpec: parsing, TOML, canonical text, and up-front validation."""

from __future__ import annotations

import pytest

from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pipeline import PipelineSpec, canonical_text
from secompile.targets import get_target

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
    ("fuse-conv-bn,export-onnx,teleport", "unknown pass 'teleport' (valid passes: aot-inductor, distill, export-onnx"),
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


def test_prune_and_distill_flags_go_after_the_leading_rewrites() -> None:
    from secompile.compiler.app.build import pipeline_spec

    cpu, gpu, edge = (get_target(n) for n in ("cpu", "gpu", "edge"))
    spec = pipeline_spec(None, cpu, stream=False, prune=0.5, distill=0.6)
    assert [p.name for p in spec.passes][:5] == [
        "fuse-conv-bn", "merge-grouped-gru", "prune", "distill", "export-onnx"]
    assert spec.passes[2].options == (("macs_reduction", 0.5),)
    assert spec.passes[3].options == (("width", 0.6),)
    # the torch passes come before every lowering, the gpu's AOTInductor included
    assert [p.name for p in pipeline_spec(None, gpu, False, prune=0.3).passes][2:4] == [
        "prune", "aot-inductor"]
    assert [p.name for p in pipeline_spec("export-onnx", cpu, False, prune=0.3).passes] == [
        "prune", "export-onnx"]
    resolved = pipeline_spec(None, cpu, stream=True, prune=0.5).resolve(cpu)
    assert [p.name for p in resolved].index("prune") < [p.name for p in resolved].index("stream")
    # edge prunes by default: the flag would be a second prune, so it is refused
    with pytest.raises(ConfigError, match="already has 'prune'"):
        pipeline_spec(None, edge, stream=False, prune=0.5)


def test_prune_and_distill_run_before_lowering_only() -> None:
    cpu = get_target("cpu")
    for text in ("export-onnx,prune,validate", "export-onnx,distill,validate"):
        with pytest.raises(ConfigError, match="wrong pass order"):
            PipelineSpec.parse(text).resolve(cpu)
    names = [p.name for p in PipelineSpec.parse(
        "fuse-conv-bn,prune{ratio=0.3},distill{width=0.5},export-onnx,quantize,validate"
    ).resolve(cpu)]
    assert names[1:3] == ["prune", "distill"]


def test_a_model_change_after_a_side_output_is_rejected() -> None:
    cpu = get_target("cpu")
    with pytest.raises(ConfigError, match="changes the model after 'stream'"):
        PipelineSpec.parse("stream,prune{ratio=0.5},export-onnx,validate").resolve(cpu)


@pytest.mark.parametrize("toml, message", [
    ("pass = [1, 2]\n", "pass number 1 is not a [[pass]] table"),
    ('pass = [["name"]]\n', "pass number 1 is not a [[pass]] table"),
    ("[[pass]]\nname = 3\n", "name must be a string, got 3"),
    ("[[pass]]\nopset = 17\n", "[[pass]] number 1 has no name"),
    ("pipeline = 5\n", "pipeline must be a string"),
    (f"[[pass]]\nname = 'export-onnx'\nopset = {'9' * 5000}\n", "not valid TOML"),
])
def test_toml_of_the_wrong_shape_is_a_config_error(tmp_path, toml: str, message: str) -> None:
    # found by tests/faults/test_pipeline_fuzz.py: each escaped once as another exception
    path = tmp_path / "p.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        PipelineSpec.load(str(path))
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("\x00.toml", "cannot read pipeline file"),
    (f"fuse-conv-bn{{parity_tolerance={'9' * 400}}},export-onnx", "is out of range"),
    ("fuse-conv-bn,export-onnx,quantize{min_speedup=nan},validate",
     "option 'min_speedup' must be a number, got nan"),
])
def test_unreadable_names_huge_numbers_and_nan_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PipelineSpec.load(text).resolve(CPU)
    assert message in str(info.value)
