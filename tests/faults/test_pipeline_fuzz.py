"""Fuzzing the pipeline parser: pipeline text and TOML pipeline files, from arbitrary text to
near-valid pipelines (known passes with random options and values, bad brackets, unicode, huge
numbers, nested tables, wrong types), loaded and resolved against every target.

The property: loading, printing and resolving a pipeline either works or raises one of the
project's typed errors (a ``SecompileError``; ``ConfigError`` in practice). Any other exception
is a bug, and the example that found it stays below as an ``@example``. Hypothesis runs
derandomized (the same examples every run, no example database) on a stated budget.
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from secompile.compiler.core.errors import SecompileError
from secompile.compiler.core.pass_base import format_option_value
from secompile.compiler.core.pipeline import PipelineSpec, canonical_text
from secompile.compiler.core.registry import get_pass, pass_names
from secompile.passes import register_builtin
from secompile.targets import get_target
from tests.faults.harness import Observation, Probe, in_process, named_error

register_builtin()

MAX_EXAMPLES = 600  # the fuzz budget: ~10 s on the project's 2 shared cores
TARGETS = tuple(get_target(name) for name in ("cpu", "edge", "gpu"))
PASSES = pass_names()
OPTIONS = {name: sorted(get_pass(name).Config.__dataclass_fields__) for name in PASSES}
ALL_OPTIONS = sorted({o for opts in OPTIONS.values() for o in opts})

# -- strategies ---------------------------------------------------------------------------------

_NAMES = st.one_of(st.sampled_from(PASSES), st.sampled_from(PASSES).map(str.upper),
                   st.text(min_size=0, max_size=12))
_KEYS = st.one_of(st.sampled_from(ALL_OPTIONS), st.sampled_from(ALL_OPTIONS).map(
    lambda k: k.replace("_", "-")), st.text(min_size=0, max_size=10))
_HUGE = st.sampled_from(["9" * 400, "9" * 5000, "1e999", "-1e999", "nan", "inf", "-inf",
                         "1e-400", "0x10", "1_000", "٣", "²", "-0", "+3", "1.", ".5e3"])
_TEXT_VALUES = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "True", "none", "auto", "onnxsim", "int8", "synthetic",
                     "calibration", "", "[]", "[1,2]", "[Conv,Gemm]", "[[1]]", "[a", "a]",
                     "{", "}", "{}", "=", "==", ",", "[,]", "[1,,2]"]),
    _HUGE,
    st.text(min_size=0, max_size=8),
)


@st.composite
def near_valid_text(draw: st.DrawFn) -> str:
    """A pipeline in text form built from real pass and option names, then perhaps mangled."""
    items = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(_NAMES)
        keys = st.one_of(st.sampled_from(OPTIONS[name]), _KEYS) if name in OPTIONS else _KEYS
        pairs = draw(st.lists(st.tuples(keys, _TEXT_VALUES), max_size=4))
        body = " ".join(draw(st.sampled_from(["{k}={v}", "{k}", "{k} = {v}", "{k}={v}={v}"]))
                        .format(k=k, v=v) for k, v in pairs)
        items.append(f"{name}{{{body}}}" if pairs or draw(st.booleans()) else name)
    text = draw(st.sampled_from([",", ", ", ",,", "\n", ";"])).join(items)
    for _ in range(draw(st.integers(0, 3))):  # mangle: brackets, separators, unicode
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["{", "}", "[", "]", ",", "=", " ", "\x00", "é", "\u202e",
                                     "\ud800", "\n", ".toml", "{{", "}}"]))
        text = text[:at] + junk + text[at:]
    return text


_TYPED_VALUES = {
    int: st.one_of(st.integers(-3, 40), st.integers(), st.sampled_from(["9" * 400, "-0"])),
    float: st.one_of(st.floats(), st.sampled_from(["1e999", "nan", "-inf", "1e-400", "9" * 5000])),
    bool: st.sampled_from(["true", "false", "1", "yes"]),
    str: _TEXT_VALUES,
}


@st.composite
def default_with_options(draw: st.DrawFn, toml: bool = False) -> list[tuple[str, dict]]:
    """A target's default pipeline, as (pass, {option: value text}), with options of the right
    name and type but any value (TOML values of any type when ``toml``), so each config's own
    range checks see extreme values: huge, nan, inf, negative, empty, nested."""
    target = draw(st.sampled_from(TARGETS))
    entries = []
    for spec in PipelineSpec.parse(target.default_pipeline).passes:
        fields = get_pass(spec.name).Config.__dataclass_fields__
        pairs = {k: format_option_value(v) for k, v in spec.options}
        for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
            default = fields[key].default
            if toml and draw(st.booleans()):
                pairs[key] = draw(_toml_value())
            elif isinstance(default, tuple):
                pairs[key] = "[" + ",".join(draw(st.lists(_TEXT_VALUES, max_size=3))) + "]"
            else:
                kind = type(default) if type(default) in _TYPED_VALUES else str
                value = str(draw(_TYPED_VALUES[kind]))
                pairs[key] = json.dumps(value) if toml and kind is str else value
        entries.append((spec.name, pairs))
    return entries


def as_text(entries: list[tuple[str, dict]]) -> str:
    """``default_with_options`` in pipeline text form."""
    return ",".join(f"{name}{{{' '.join(f'{k}={v}' for k, v in pairs.items())}}}"
                    if pairs else name for name, pairs in entries)


def as_toml(entries: list[tuple[str, dict]]) -> str:
    """``default_with_options`` as ``[[pass]]`` tables."""
    return "".join(f"[[pass]]\nname = {json.dumps(name)}\n"
                   + "".join(f"{k} = {v}\n" for k, v in pairs.items()) for name, pairs in entries)


def _toml_value(depth: int = 0) -> st.SearchStrategy[str]:
    scalars = st.one_of(
        st.integers().map(str),
        st.sampled_from(["9" * 30, "9" * 5000, "-9" * 20, "0x7f", "1_000", "+inf", "nan", "-nan",
                         "1e999", "3.5", "true", "false", "1979-05-27", "1979-05-27T07:32:00Z",
                         "07:32:00", "1979-05-27T00:32:00.999999-07:00"]),
        st.floats().map(lambda f: "nan" if math.isnan(f) else
                        ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)),
        st.text(max_size=10).map(lambda s: json.dumps(s, ensure_ascii=False)),
        st.sampled_from(['"auto"', '"onnxsim"', '"int8"', '"synthetic"', "'C:\\path'", '""',
                         '"""multi\nline"""', '"[1,2]"', '"Conv"']),
    )
    if depth >= 2:
        return scalars
    inner = st.deferred(lambda: _toml_value(depth + 1))
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(["a", "name", "opset", "x-y"]), inner), max_size=2,
                 unique_by=lambda kv: kv[0]).map(
            lambda kvs: "{" + ", ".join(f"{k} = {v}" for k, v in kvs) + "}"),
    )


@st.composite
def near_valid_toml(draw: st.DrawFn) -> str:
    """A TOML pipeline file: ``[[pass]]`` tables with real and made-up names and options of any
    TOML type, nested tables, a ``pipeline = ...`` key of any type, other top-level shapes."""
    shape = draw(st.sampled_from(["tables", "tables", "tables", "pipeline", "other"]))
    if shape == "pipeline":
        value = draw(st.one_of(near_valid_text().map(lambda t: json.dumps(t, ensure_ascii=False)),
                               _toml_value()))
        return f"pipeline = {value}\n"
    if shape == "other":
        return draw(st.sampled_from([
            "pass = 3\n", 'pass = ["fuse-conv-bn"]\n', "pass = [1, 2]\n", "pass = []\n",
            "[pass]\nname = 'export-onnx'\n", "pass = [{name = 'export-onnx'}, 5]\n",
            "pass = [[{name = 'export-onnx'}]]\n", "[[pass]]\n[[pass.name]]\nx = 1\n", "",
            "x = 1\n", "[[pass]]\nname = 'export-onnx'\n[pass.opset]\nv = 17\n",
            "pass = {name = 'export-onnx'}\n", "pipeline = ''\n", "pipeline = []\n",
        ]))
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        lines.append("[[pass]]")
        name = draw(_NAMES)
        if draw(st.integers(0, 9)):
            lines.append(f"name = {json.dumps(name, ensure_ascii=False)}")
        elif draw(st.booleans()):
            lines.append(f"name = {draw(_toml_value())}")
        keys = OPTIONS.get(name) or ALL_OPTIONS
        for key in draw(st.lists(st.one_of(st.sampled_from(keys), _KEYS), max_size=3,
                                 unique=True)):
            lines.append(f"{json.dumps(key, ensure_ascii=False)} = {draw(_toml_value())}")
        if not draw(st.integers(0, 7)):
            lines.append(f"[pass.{draw(st.sampled_from(['opset', 'sub', 'name']))}]")
            lines.append(f"v = {draw(_toml_value())}")
    return "\n".join(lines) + "\n"


CASES = st.one_of(
    st.tuples(st.just("text"), st.text()),
    st.tuples(st.just("text"), st.text(alphabet=string.ascii_lowercase + "-_{}[],= 0123456789.")),
    st.tuples(st.just("text"), near_valid_text()),
    st.tuples(st.just("text"), default_with_options().map(as_text)),
    st.tuples(st.just("toml"), default_with_options(toml=True).map(as_toml)),
    st.tuples(st.just("toml"), near_valid_toml()),
    st.tuples(st.just("toml"), st.text(max_size=60)),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
)

# -- the property -------------------------------------------------------------------------------


def attempt(case: tuple[str, object], folder: Path) -> str:
    """Load, print and resolve ``case`` against every target; returns how it ended ("ok" or a
    typed error's class name). Any other exception propagates: that is the bug being looked for.
    """
    kind, payload = case
    if kind == "text":
        source = str(payload)
    else:
        path = folder / "pipeline.toml"
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            path.write_text(str(payload), encoding="utf-8", errors="surrogatepass")
        source = str(path)
    try:
        spec = PipelineSpec.load(source)
    except SecompileError as exc:
        return type(exc).__name__
    outcomes = []
    for target in TARGETS:
        try:
            text = canonical_text(spec.resolve(target))
        except SecompileError as exc:
            outcomes.append(type(exc).__name__)
            continue
        outcomes.append("ok")
        try:  # the canonical form goes into reports and manifests and is read back from them
            PipelineSpec.parse(text).resolve(target)
        except SecompileError:
            pass  # a TOML string option with a space or brace does not print back (known)
    return "ok" if "ok" in outcomes else outcomes[0]


def fuzz(folder: Path, max_examples: int = MAX_EXAMPLES) -> Counter[str]:
    """Run the property on ``max_examples`` derandomized examples; the outcomes, counted."""
    seen: Counter[str] = Counter()

    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=CASES)
    # Bugs the fuzz found, each once an exception other than ConfigError:
    @example(case=("toml", "pass = [1, 2]\n"))  # TypeError: a [[pass]] entry that is no table
    @example(case=("toml", 'pass = [["name"]]\n'))  # AttributeError: 'list' has no .items()
    @example(case=("toml", f"[[pass]]\nname = 'export-onnx'\nopset = {'9' * 5000}\n"))
    # ^ ValueError from tomllib: an integer past Python's 4300-digit conversion limit
    @example(case=("text", "\x00.toml"))  # ValueError: embedded null byte in the file name
    @example(case=("text", f"fuse-conv-bn{{parity_tolerance={'9' * 400}}},export-onnx"))
    # ^ OverflowError: an int option too large for a float field
    def check(case: tuple[str, object]) -> None:
        seen[attempt(case, folder)] += 1

    check()
    return seen


def fuzz_probe(tmp: Path) -> Observation:
    """The fuzz as a probe: ``N examples, only ConfigError`` when it holds."""
    try:
        seen = fuzz(tmp)
    except Exception as exc:  # noqa: BLE001 - the bug the fuzz exists to find: report it
        notes = " ".join(getattr(exc, "__notes__", []))
        return Observation(False, f"{type(exc).__name__}: {exc} {notes}"[:400])
    errors = sorted(k for k in seen if k != "ok")
    observed = (f"{sum(seen.values())} examples ({seen['ok']} valid), only "
                f"{', '.join(errors) or 'no errors'}")
    return Observation(bool(seen) and set(errors) <= {"ConfigError"}, observed)


def cli_text_probe(tmp: Path) -> Observation:
    """A garbage ``--pipeline`` text on the command line."""
    return named_error(in_process(["build", "--pipeline", "fuse-conv-bn{{ópset=١٧]},☃,,{",
                                  "--out", tmp / "out", "--no-cache", "--no-ray"]),
                       "pipeline")


def cli_toml_probe(tmp: Path) -> Observation:
    """A garbage TOML pipeline file."""
    path = tmp / "garbage.toml"
    path.write_bytes(b"[[pass]\nname = \xff\xfe 'export-onnx'\n{{{")
    return named_error(in_process(["build", "--pipeline", path, "--out", tmp / "out",
                                  "--no-cache", "--no-ray"]), "pipeline", "toml")


PROBES: list[Probe] = [
    Probe("pipeline", "fuzzed pipelines raise only typed errors",
          f"{MAX_EXAMPLES} examples (and the bugs found, kept as examples), only ConfigError",
          fuzz_probe),
    Probe("pipeline", "garbage pipeline text on the CLI",
          "one-line error: naming the pipeline, exit 2", cli_text_probe),
    Probe("pipeline", "garbage TOML pipeline file on the CLI",
          "one-line error: naming the pipeline file as not valid TOML, exit 2", cli_toml_probe),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    observation = probe.run(tmp_path)
    assert observation.ok, observation.observed
