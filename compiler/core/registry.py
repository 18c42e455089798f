"""The pass registry: kebab-case names to pass classes.

The core knows no pass by name. Whoever assembles an application registers the passes it
offers: ``secompile.passes.register_builtin()`` adds the built-in ones (the build, the CLI and
the Python API call it) and :func:`register_pass` adds a user's own pass class. A failed
lookup lists the registered names, or says how to register the built-ins when there are none.
"""

from __future__ import annotations

import re

from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.pass_base import Pass

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Add ``cls`` to the registry under its kebab-case ``name`` (usable as a decorator);
    registering the same class again is a no-op, another class under a taken name an error."""
    if not _KEBAB.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} is not kebab-case")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def pass_names() -> list[str]:
    """Names of every registered pass, sorted."""
    return sorted(_REGISTRY)


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; a ``ConfigError`` lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        if not _REGISTRY:
            raise ConfigError(
                f"unknown pass '{name}': no passes are registered "
                "(call secompile.passes.register_builtin() first)"
            ) from None
        raise ConfigError(
            f"unknown pass '{name}' (valid passes: {', '.join(sorted(_REGISTRY))})"
        ) from None
