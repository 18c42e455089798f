"""The pass abstraction: ``Pass``, its frozen, self-validating ``PassConfig``, ``PassResult``.

A pass is a small class with a kebab-case ``name``, a frozen, self-validating ``Config``
dataclass and one entry point ``run(artifact, ctx) -> PassResult``. It declares which artifact
formats it accepts (``input_formats``) and which it produces (``output_format``); the pipeline
validator uses those to reject a wrong order before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, get_type_hints

from secompile.compiler.core.errors import ConfigError

if TYPE_CHECKING:
    from secompile.compiler.core.artifact import Artifact
    from secompile.compiler.core.context import PassContext

@dataclass(frozen=True)
class PassConfig:
    """Base of pass configs: frozen dataclasses that validate themselves on construction.

    Subclasses declare typed fields with defaults and override :meth:`check` to raise
    ``ValueError`` with a message quoting the bad field and value.
    """

    def __post_init__(self) -> None:
        try:
            self.check()
        except ValueError as exc:
            raise ConfigError(f"{type(self).__qualname__}: {exc}") from None

    def check(self) -> None:
        """Raise ``ValueError`` when a field is out of range."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any], pass_name: str = "") -> PassConfig:
        """Build the config from user options, rejecting unknown keys and wrong types."""
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        where = f"pass '{pass_name}'" if pass_name else cls.__qualname__
        values = {}
        for key, value in options.items():
            name = key.replace("-", "_")
            if name not in fields:
                valid = ", ".join(sorted(fields)) or "none"
                raise ConfigError(f"{where}: unknown option '{key}' (valid options: {valid})")
            values[name] = _coerce(where, key, value, hints[name])
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None

    def as_dict(self) -> dict[str, Any]:
        """The options as plain data."""
        return dataclasses.asdict(self)

    def canonical(self) -> str:
        """Options in canonical text form: ``key=value`` pairs, sorted, space separated."""
        return " ".join(f"{k}={format_option_value(v)}" for k, v in sorted(self.as_dict().items()))


def format_option_value(value: Any) -> str:
    """An option value in pipeline-text form (``true``, ``[1,2]``, ``17``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_option_value(v) for v in value) + "]"
    return str(value)


def _coerce(where: str, key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type hint; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: option '{key}' must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(where, key, v, item) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: option '{key}' is out of range, got {value}") from None
    if hint is float and isinstance(value, float) and math.isnan(value):
        # every comparison with NaN is false: a threshold of nan would pass or fail silently
        raise ConfigError(f"{where}: option '{key}' must be a number, got nan")
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{where}: option '{key}' must be {hint.__name__}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new artifact, whether it changed anything, metrics, files."""

    artifact: Artifact
    modified: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement ``run``.

    A pass never reads environment variables, globals or the working directory: everything
    it needs comes through the :class:`~compiler.context.PassContext`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    input_formats: ClassVar[tuple[str, ...]] = ("torch",)
    output_format: ClassVar[str | None] = None  # None: same format as the input
    summary: ClassVar[str] = ""
    # Numerical parity the verifier instrument enforces between input and output artifacts,
    # read from the config field ``parity_tolerance`` when the config has one.
    checks_parity: ClassVar[bool] = True
    # Whether the pass changes what the model computes (prune, distill): a side output written
    # from the torch model before it (stream, AOTInductor) would no longer match what ships.
    changes_function: ClassVar[bool] = False

    def __init__(self, config: PassConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def run(self, artifact: Artifact, ctx: PassContext) -> PassResult:
        """Transform or inspect ``artifact``; never mutate it in place."""
        raise NotImplementedError

    def cache_inputs(self, ctx: PassContext) -> dict[str, Any]:
        """Extra inputs, beyond the artifact and config, that determine this pass's output."""
        return {}

    def restore(self, source: Artifact, state: dict[str, Any]) -> Any:
        """Rebuild this pass's torch output from its input ``source`` and the output's stored
        ``state_dict``, so the cache can serve it without pickling code; ``None`` (the default)
        when weights alone cannot rebuild it, and the cache then only records the pass."""
        return None

    def reads_calibration(self) -> bool:
        """Whether this pass, as configured, reads the build's calibration audio (without
        ``--calib`` the build then loads the project's own calibration mixtures)."""
        return False

    def requires_cuda(self) -> bool:
        """Whether this pass, as configured, needs a CUDA GPU (checked before a build starts)."""
        return False

    @property
    def parity_tolerance(self) -> float | None:
        """Max abs waveform difference allowed between input and output, or None to skip."""
        return getattr(self.config, "parity_tolerance", None) if self.checks_parity else None

    def produces(self, input_format: str) -> str:
        """Format of the artifact this pass returns for an input of ``input_format``."""
        return self.output_format or input_format
