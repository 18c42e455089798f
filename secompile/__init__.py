"""secompile: compile speech-enhancement models into fast, validated artifacts."""

from secompile.compiler.core.versions import secompile_version

__version__ = secompile_version()
