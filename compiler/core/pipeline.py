"""Pipelines as data: ``PipelineSpec`` loaded from TOML or text, validated before any work.

Canonical text form (written into reports and manifests, and accepted back by ``parse``)::

    fuse-conv-bn,export-onnx{opset=17 simplify=onnxsim},validate

TOML form (``--pipeline FILE``)::

    [[pass]]
    name = "export-onnx"
    opset = 17
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pass_base import Pass, PassConfig, format_option_value
from secompile.compiler.core.registry import get_pass

if TYPE_CHECKING:
    from secompile.targets.base import Target

# Passes that write a side output from the torch model as it is at that point.
TORCH_SIDE_OUTPUTS = ("stream", "aot-inductor", "tensorrt")
_ITEM = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*(?:\{(.*)\})?\s*$", re.DOTALL)


@dataclass(frozen=True)
class PassSpec:
    """One pipeline entry: a pass name and the options the user gave it."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def text(self) -> str:
        """The entry in textual form, e.g. ``export-onnx{opset=17}``."""
        if not self.options:
            return self.name
        body = " ".join(f"{k}={format_option_value(v)}" for k, v in self.options)
        return f"{self.name}{{{body}}}"


@dataclass(frozen=True)
class PipelineSpec:
    """An ordered list of pass entries."""

    passes: tuple[PassSpec, ...]

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        """Parse the textual form ``a,b{k=v k2=v2},c``."""
        items = _split_top_level(text)
        if not items or not any(i.strip() for i in items):
            raise ConfigError("pipeline is empty")
        specs = []
        for position, item in enumerate(items, 1):
            match = _ITEM.match(item)
            if not match:
                raise ConfigError(f"pipeline item {position}: cannot parse {item.strip()!r}")
            name, body = match.group(1), match.group(2)
            specs.append(PassSpec(name, _parse_options(body or "", name)))
        return cls(tuple(specs))

    @classmethod
    def from_toml(cls, path: Path) -> PipelineSpec:
        """Load ``[[pass]]`` tables (or a ``pipeline = "..."`` string) from a TOML file."""
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"pipeline file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read pipeline file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"pipeline file {path} is not valid TOML (not UTF-8: {exc})") \
                from None
        except ValueError as exc:  # a path the OS cannot take: a NUL byte, a lone surrogate
            raise ConfigError(f"cannot read pipeline file {str(path)!r}: {exc}") from None
        try:
            data = tomllib.loads(raw)
        except ValueError as exc:  # TOMLDecodeError, or an integer past Python's digit limit
            raise ConfigError(f"pipeline file {path} is not valid TOML: {exc}") from None
        if "pipeline" in data:
            if not isinstance(data["pipeline"], str):
                raise ConfigError(f"pipeline file {path}: pipeline must be a string like "
                                  f"'fuse-conv-bn,export-onnx', got {data['pipeline']!r}")
            return cls.parse(data["pipeline"])
        tables = data.get("pass")
        if not isinstance(tables, list) or not tables:
            raise ConfigError(f"pipeline file {path}: expected [[pass]] tables or pipeline = '...'")
        specs = []
        for position, table in enumerate(tables, 1):
            if not isinstance(table, dict):
                raise ConfigError(f"pipeline file {path}: pass number {position} is not a "
                                  f"[[pass]] table, got {table!r}")
            if "name" not in table:
                raise ConfigError(f"pipeline file {path}: [[pass]] number {position} has no name")
            if not isinstance(table["name"], str):
                raise ConfigError(f"pipeline file {path}: [[pass]] number {position}: name must "
                                  f"be a string, got {table['name']!r}")
            options = tuple(sorted((k, v) for k, v in table.items() if k != "name"))
            specs.append(PassSpec(table["name"], options))
        return cls(tuple(specs))

    @classmethod
    def load(cls, source: str) -> PipelineSpec:
        """A TOML file when ``source`` ends in ``.toml``, the textual form otherwise."""
        if source.strip().endswith(".toml"):
            return cls.from_toml(Path(source.strip()))
        return cls.parse(source)

    def including(self, name: str, before: str) -> PipelineSpec:
        """This pipeline with pass ``name`` added right before the first ``before`` pass (as
        is, when it already has ``name``); a ``ConfigError`` when there is no ``before``."""
        names = [p.name for p in self.passes]
        if name in names:
            return self
        if before not in names:
            raise ConfigError(f"cannot add '{name}': the pipeline has no '{before}' pass to "
                              f"put it before ({self.text()})")
        at = names.index(before)
        return PipelineSpec((*self.passes[:at], PassSpec(name), *self.passes[at:]))

    def adding_early(self, entry: PassSpec, after: tuple[str, ...]) -> PipelineSpec:
        """This pipeline with ``entry`` added right after its leading passes named in
        ``after`` (the graph rewrites that come first); a ``ConfigError`` when it already has a
        pass of that name, whose options belong in the pipeline then."""
        names = [p.name for p in self.passes]
        if entry.name in names:
            raise ConfigError(f"the pipeline already has '{entry.name}': set its options there "
                              f"instead ({self.text()})")
        at = 0
        while at < len(names) and names[at] in after:
            at += 1
        return PipelineSpec((*self.passes[:at], entry, *self.passes[at:]))

    def text(self) -> str:
        """The pipeline as written by the user (options not yet defaulted)."""
        return ",".join(p.text() for p in self.passes)

    def resolve(self, target: Target, input_format: str = "torch") -> list[Pass]:
        """Validate the whole pipeline for ``target`` and instantiate its passes.

        Rejects, before any work: unknown passes, unknown or ill-typed options, out-of-range
        values, passes the target does not support, and orders whose formats do not chain.
        """
        instances: list[Pass] = []
        fmt, producer = input_format, "the input model"
        for position, spec in enumerate(self.passes, 1):
            cls = get_pass(spec.name)
            config: PassConfig = cls.Config.from_options(dict(spec.options), spec.name)
            if not target.supports(spec.name):
                raise ConfigError(
                    f"pipeline item {position}: pass '{spec.name}' is not supported by target "
                    f"'{target.name}' (supported: {', '.join(sorted(target.supported_passes))})"
                )
            if fmt not in cls.input_formats:
                raise ConfigError(
                    f"pipeline item {position}: pass '{spec.name}' needs a "
                    f"{' or '.join(cls.input_formats)} model, but {producer} produces {fmt} "
                    "(wrong pass order)"
                )
            instance = cls(config)
            writers = [p.name for p in instances if p.name in TORCH_SIDE_OUTPUTS]
            if instance.changes_function and writers:
                raise ConfigError(
                    f"pipeline item {position}: pass '{spec.name}' changes the model after "
                    f"'{writers[0]}' wrote its side output from it; put '{spec.name}' first"
                )
            fmt, producer = instance.produces(fmt), f"'{spec.name}' before it"
            instances.append(instance)
        if fmt != target.artifact_format:
            raise ConfigError(
                f"pipeline for target '{target.name}' ends with a {fmt} model but the target "
                f"ships {target.artifact_format} (add the lowering pass, e.g. export-onnx)"
            )
        return instances


def canonical_text(passes: list[Pass]) -> str:
    """The resolved pipeline with every option spelled out: one line, stable."""
    parts = []
    for p in passes:
        options = p.config.canonical()
        parts.append(f"{p.name}{{{options}}}" if options else p.name)
    return ",".join(parts)


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, []
    for char in text:
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    if depth != 0:
        raise ConfigError(f"pipeline {text!r}: unbalanced braces")
    return [i for i in items if i.strip()]


def _parse_options(body: str, pass_name: str) -> tuple[tuple[str, Any], ...]:
    options = []
    for token in re.findall(r"[^\s=]+=(?:\[[^\]]*\]|\S+)|\S+", body):
        if "=" not in token:
            raise ConfigError(f"pass '{pass_name}': option {token!r} is not key=value")
        key, raw = token.split("=", 1)
        if any(key == seen for seen, _ in options):
            raise ConfigError(f"pass '{pass_name}': option '{key}' given twice")
        options.append((key, _parse_value(raw)))
    return tuple(sorted(options))


def _parse_value(raw: str) -> Any:
    if raw.startswith("[") and raw.endswith("]"):
        return [_parse_value(v) for v in raw[1:-1].split(",") if v]
    if raw in ("true", "false"):
        return raw == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
