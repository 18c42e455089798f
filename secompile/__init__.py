"""secompile: compile speech-enhancement models into fast, validated artifacts.

The Python API mirrors the ``secompile`` command::

    import secompile

    result = secompile.build("default", targets=["cpu"], out="build")   # -> BuildResult
    enhancer = secompile.load(result)                                     # -> Enhancer
    enhanced = enhancer.enhance("noisy.wav")
    secompile.profile("build/cpu/model.onnx").render_table()
    secompile.compare("build", "baseline-build").ok

A model is a registry name, ``FILE.py:factory``, a TorchScript file or an ``nn.Module``.
The names below load on first use, so ``import secompile.compiler.core`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from secompile.compiler.core.versions import secompile_version

__version__ = secompile_version()

_API = "secompile.compiler.app.api"
_OPTIMIZER = "secompile.compiler.app.optimizer"
_ERRORS = "secompile.compiler.core.errors"
_EXPORTS = {
    **dict.fromkeys(("BuildResult", "Comparison", "Enhancer", "build", "compare", "demo_wav",
                     "load", "profile"), _API),
    **dict.fromkeys(("STRATEGIES", "Bottleneck", "Optimization", "PerformanceOptimizer",
                     "Validation"), _OPTIMIZER),
    **dict.fromkeys(("ConfigError", "DataError", "ModelError", "PassError", "SecompileError",
                     "TargetError"), _ERRORS),
    "GateError": "secompile.compiler.reporting.gates",
}
__all__ = [  # noqa: RUF022  (grouped as _EXPORTS is)
    "__version__",
    "BuildResult", "Comparison", "Enhancer", "build", "compare", "demo_wav", "load", "profile",
    "STRATEGIES", "Bottleneck", "Optimization", "PerformanceOptimizer", "Validation",
    "ConfigError", "DataError", "ModelError", "PassError", "SecompileError", "TargetError",
    "GateError",
]

if TYPE_CHECKING:
    from secompile.compiler.app.api import (
        BuildResult,
        Comparison,
        Enhancer,
        build,
        compare,
        demo_wav,
        load,
        profile,
    )
    from secompile.compiler.app.optimizer import (
        STRATEGIES,
        Bottleneck,
        Optimization,
        PerformanceOptimizer,
        Validation,
    )


def __getattr__(name: str) -> Any:
    """The public API, imported when first used."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'secompile' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
