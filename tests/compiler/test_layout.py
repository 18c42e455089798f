"""The package's shape: one ``secompile`` namespace that a user's own ``models/`` or
``compiler/`` package cannot shadow, a core that imports nothing else of the project, and
passes that never import each other."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAST = "fuse-conv-bn,export-onnx"


@pytest.fixture()
def user_repo(tmp_path: Path) -> Path:
    """A research repo with its own ``models``, ``compiler`` and ``passes`` packages."""
    for name in ("models", "compiler", "passes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'user {name}'\n")
    return tmp_path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_cli_and_api_work_beside_a_users_models_package(user_repo: Path) -> None:
    script = (
        "import json, models, compiler, passes\n"
        "import secompile\n"
        f"result = secompile.build(out='api-out', pipeline={FAST!r}, cache_dir=False)\n"
        "import models as again\n"
        "print(json.dumps({'user': [models.WHO, compiler.WHO, passes.WHO, again.WHO],\n"
        "                  'ours': secompile.compiler.__file__,\n"
        "                  'artifact': str(result.artifacts['cpu'])}))\n"
    )
    seen = json.loads(_run([sys.executable, "-c", script], user_repo).stdout.splitlines()[-1])
    assert seen["user"] == ["user models", "user compiler", "user passes", "user models"]
    assert Path(seen["ours"]).resolve().parent == (REPO / "compiler").resolve()
    assert (user_repo / seen["artifact"]).is_file()

    version = _run([sys.executable, "-m", "secompile", "--version"], user_repo).stdout
    assert version.strip().startswith("secompile ")
    _run([sys.executable, "-m", "secompile", "build", "--pipeline", FAST, "--out", "cli-out",
          "--no-cache", "--quiet"], user_repo)
    assert (user_repo / "cli-out" / "cpu" / "model.onnx").is_file()
    listed = _run([sys.executable, "-m", "secompile", "models"], user_repo).stdout
    assert "gtcrn" in listed


def test_core_imports_nothing_else_of_the_project() -> None:
    core = sorted(p.stem for p in (REPO / "compiler" / "core").glob("*.py"))
    script = (
        "import sys\n"
        + "".join(f"import secompile.compiler.core.{name}\n" for name in core)
        + "print('\\n'.join(m for m in sys.modules if m.startswith('secompile.')))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout.split()
    outside = [m for m in loaded if m not in ("secompile", "secompile.compiler")
               and not m.startswith("secompile.compiler.core")]
    assert outside == [], f"compiler.core pulled in {outside}"
    for path in (REPO / "compiler" / "core").glob("*.py"):
        for node in _runtime_imports(path):
            assert node.startswith("secompile.compiler.core") or not node.startswith(
                "secompile."), f"{path.name} imports {node} outside a type-checking block"


def test_no_pass_imports_another_pass() -> None:
    names = {p.stem for p in (REPO / "passes").glob("*.py") if p.stem != "__init__"}
    for path in (REPO / "passes").glob("*.py"):
        if path.stem == "__init__":
            continue
        for module in _runtime_imports(path, include_type_checking=True):
            other = module.removeprefix("secompile.passes.")
            assert not (module.startswith("secompile.passes.") and other in names
                        and other != path.stem), f"passes/{path.name} imports {module}"


def _runtime_imports(path: Path, include_type_checking: bool = False) -> list[str]:
    """Modules ``path`` imports, skipping ``if TYPE_CHECKING:`` blocks unless asked."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if not include_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found
