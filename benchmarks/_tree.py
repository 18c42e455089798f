"""Import this checkout as ``secompile`` where it is not installed (a device machine, the
INC environment): the same mapping of ``secompile.<package>`` onto the card's top-level
folders that the editable install's finder makes. Where secompile is installed, nothing
changes."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"secompile": ROOT / "secompile", **{
    f"secompile.{name}": ROOT / name
    for name in ("compiler", "passes", "calibration", "targets", "models")}}


class _TreeFinder(importlib.abc.MetaPathFinder):
    """Finds the namespace's packages in this checkout."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        folder = FOLDERS.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


def ensure_importable() -> None:
    """Make ``import secompile.compiler`` work, from an installed copy or from this tree."""
    try:
        import secompile.compiler  # noqa: F401
    except ModuleNotFoundError:
        for name in [m for m in sys.modules if m == "secompile" or m.startswith("secompile.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TreeFinder())
