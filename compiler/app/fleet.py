"""``secompile build-many FLEET.toml``: many models x targets, each build a task.

A fleet file lists models; every (model, target) pair becomes one build, run as the single
``secompile build`` runs it and written to ``OUT/<name>-<target>/``. Builds run as Ray tasks
(each asking for ``cpus`` cores, and a GPU for a target whose execution providers need one)
or serially, share one pass cache, and a failed build is reported without stopping the
others. ``OUT/fleet.json`` and
``OUT/fleet.md`` summarize them; they are written last, through a temporary file.

Fleet file::

    cache_dir = "~/.cache/secompile"   # optional; --cache-dir / --no-cache override it
    threads = 1                        # optional, every build

    [[model]]
    name = "gtcrn-vctk"                # optional: defaults to the model reference
    model = "gtcrn"
    weights = "models/gtcrn_vctk.pt"   # relative paths are relative to the fleet file
    targets = ["cpu", "edge"]
    eval = "audio/vbdemand"            # optional: calib, pipeline, stream, resample too
    cpus = 2                           # optional: cores each build of this model reserves
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from secompile.compiler.app.build import BuildRequest, pipeline_spec
from secompile.compiler.core.errors import ConfigError, SecompileError

_MODEL_KEYS = {"name", "model", "weights", "targets", "eval", "calib", "pipeline", "stream",
               "resample", "cpus", "seed"}
_TOP_KEYS = {"model", "cache_dir", "threads"}
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Validation times the artifact against PyTorch: a build that shares its cores with another
# measures the other build too. Two cores per build keeps the builds on a 2-core machine apart.
DEFAULT_CPUS = 2


@dataclass(frozen=True)
class FleetBuild:
    """One (model, target) build of a fleet and the resources it reserves."""

    name: str
    request: BuildRequest
    cpus: float
    gpus: float


def _path(base: Path, value: Any, key: str, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_fleet(path: Path, out: Path, cache_dir: Path | None) -> list[FleetBuild]:
    """Parse and check a fleet file (``ConfigError`` quoting the entry and key); every
    target and pipeline is validated before any build starts."""
    from secompile.targets import get_target

    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"fleet file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fleet file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"fleet file {path}: unknown key(s) {sorted(unknown)} "
                          f"(valid: {sorted(_TOP_KEYS)})")
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"fleet file {path}: expected one or more [[model]] tables")
    base = Path(path).resolve().parent
    threads = data.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"fleet file {path}: 'threads' must be an integer >= 1, got "
                          f"{threads!r}")
    if cache_dir is None and "cache_dir" in data:
        cache_dir = _path(base, data["cache_dir"], "cache_dir", str(path))
    builds: list[FleetBuild] = []
    for index, entry in enumerate(models, 1):
        where = f"fleet file {path}, [[model]] number {index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a [[model]] table, got {entry!r}")
        _check_types(entry, where)
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} "
                              f"(valid: {sorted(_MODEL_KEYS)})")
        if "model" not in entry:
            raise ConfigError(f"{where}: 'model' is required")
        name = entry["name"] if "name" in entry else Path(entry["model"].split(":")[0]).stem
        _check_name(name, where)
        cpus = entry.get("cpus", DEFAULT_CPUS)  # types are checked above
        if cpus <= 0:
            raise ConfigError(f"{where}: 'cpus' must be a number > 0, got {cpus!r}")
        targets = entry.get("targets", ["cpu"])
        if not targets:
            raise ConfigError(f"{where}: 'targets' must be a non-empty list")
        model = entry["model"]
        if model.endswith((".py", ".pt", ".ts")) or ".py:" in model:
            model = str(_path(base, model, "model", where))
        pipeline_text = entry.get("pipeline")
        if pipeline_text and pipeline_text.strip().endswith(".toml"):
            pipeline_text = str(_path(base, pipeline_text.strip(), "pipeline", where))
        for target_name in targets:
            target = get_target(target_name)
            build_out = _inside(out, f"{name}-{target_name}", where)
            pipeline_spec(pipeline_text, target, entry.get("stream", False)).resolve(target)
            request = BuildRequest(
                model=model, out=build_out,
                weights=_path(base, entry.get("weights"), "weights", where),
                targets=(target_name,), pipeline=pipeline_text,
                calib=_path(base, entry.get("calib"), "calib", where),
                eval=_path(base, entry.get("eval"), "eval", where),
                threads=threads, cache_dir=cache_dir, seed=entry.get("seed", 0),
                resample=entry.get("resample", False), stream=entry.get("stream", False),
                ray=None,
            )
            on_gpu = any(p in _GPU_PROVIDERS for p in target.execution_providers)
            builds.append(FleetBuild(f"{name}-{target_name}", request, float(cpus),
                                     1.0 if on_gpu else 0.0))
    names = [b.name for b in builds]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"fleet file {path}: builds named twice: {duplicated} (give each "
                          "[[model]] a distinct name)")
    return builds


def _check_name(name: str, where: str) -> None:
    """A build's name becomes a folder of ``--out``: one plain path component, so no name
    (``../x``, ``a/b``, ``/abs``, ``..``, empty, NUL) can write outside it."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r} cannot name a folder in --out: use "
                          f"letters, digits, '.', '_', '-', starting with a letter or digit "
                          f"(no '/', '..', NUL or empty name)")


def _inside(out: Path, folder: str, where: str) -> Path:
    """``out/folder``, checked to resolve to a direct child of ``out`` (``ConfigError``)."""
    path = out / folder
    root = Path(os.path.abspath(out)).resolve()
    if Path(os.path.abspath(path)).resolve().parent != root:
        raise ConfigError(f"{where}: build folder {folder!r} would be written outside --out "
                          f"{out}")
    return path


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "model": (str,), "weights": (str,), "eval": (str,), "calib": (str,),
    "pipeline": (str,), "stream": (bool,), "resample": (bool,), "seed": (int,),
    "cpus": (int, float), "targets": (list,),
}


def _check_types(entry: dict[str, Any], where: str) -> None:
    for key, value in entry.items():
        kinds = _TYPES.get(key)
        if kinds is None:
            continue
        bad_bool = isinstance(value, bool) and bool not in kinds
        if not isinstance(value, kinds) or bad_bool:
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{where}: '{key}' must be {names}, got {value!r}")
    if any(not isinstance(t, str) for t in entry.get("targets", [])):
        raise ConfigError(f"{where}: 'targets' must be a list of target names")


def _identity(build: FleetBuild) -> dict[str, Any]:
    """What every outcome of ``build`` starts with, whatever happened to it."""
    return {"name": build.name, "model": build.request.model,
            "target": build.request.targets[0], "out": str(build.request.out)}


def run_fleet_build(build: FleetBuild) -> dict[str, Any]:
    """Run one build (a Ray task body, or in process); never raises for a failed build: the
    outcome says what failed."""
    from secompile.compiler.app.build import run_build

    start = time.perf_counter()
    outcome = {**_identity(build), "pid": os.getpid(), "host": os.uname().nodename}
    try:
        report = run_build(build.request)
    except SecompileError as exc:
        outcome.update(status="failed", error=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # noqa: BLE001  (one broken build must not stop the fleet)
        outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}", exit_code=1)
    else:
        entry = report["targets"][build.request.targets[0]]
        outcome.update(status="ok", speedup=entry["speedup"],
                       size_reduction=entry["size_reduction"],
                       quality_delta=entry["quality_delta"], cache_hits=entry["cache_hits"],
                       passes=len(entry["passes"]))
    outcome["seconds"] = round(time.perf_counter() - start, 2)
    return outcome


def run_fleet(builds: list[FleetBuild], executor: Any, out: Path) -> dict[str, Any]:
    """Run every build on ``executor`` and write ``OUT/fleet.json`` and ``OUT/fleet.md``."""
    start = time.perf_counter()
    most = executor.largest_node_cpus()  # a task asking for more than any node has never runs
    try:
        results = executor.map(run_fleet_build, builds,
                               num_cpus=[min(b.cpus, most) for b in builds],
                               num_gpus=[b.gpus for b in builds], return_exceptions=True)
    except KeyboardInterrupt:
        for build in builds:
            _drop_staging(build)
        raise
    outcomes = []
    for build, result in zip(builds, results, strict=True):
        if isinstance(result, Exception):  # the task itself was lost (its worker died)
            _drop_staging(build)
            result = {**_identity(build), "status": "failed", "error": str(result),
                      "exit_code": 1, "seconds": None}
        outcomes.append(result)
    summary = {
        "builds": outcomes,
        "ok": sum(o["status"] == "ok" for o in outcomes),
        "failed": sum(o["status"] != "ok" for o in outcomes),
        "seconds": round(time.perf_counter() - start, 2),
        "execution": executor.describe(),
    }
    _write_atomically(out / "fleet.json", json.dumps(summary, indent=2, default=str) + "\n")
    _write_atomically(out / "fleet.md", render_fleet(summary))
    return summary


def _drop_staging(build: FleetBuild) -> None:
    """Remove what a killed build left half-written (builds stage outputs, then rename)."""
    for staged in Path(build.request.out).glob(".staging-*"):
        shutil.rmtree(staged, ignore_errors=True)


def render_fleet(summary: dict[str, Any]) -> str:
    """The fleet summary as Markdown."""
    lines = [(f"# secompile fleet: {summary['ok']} built, {summary['failed']} failed, "
             f"{summary['seconds']} s on {summary['execution']['executor']}"), "",
             "| build | status | speedup | size × | ΔSI-SDR dB | cache hits | seconds |",
             "|---|---|---|---|---|---|---|"]
    for o in summary["builds"]:
        if o["status"] == "ok":
            delta = (o["quality_delta"] or {}).get("si_sdr")
            lines.append(f"| {o['name']} | ok | {_num(o['speedup'])} | "
                         f"{_num(o['size_reduction'])} | {_num(delta, '+.4f')} | "
                         f"{len(o['cache_hits'])}/{o['passes']} | {o['seconds']} |")
        else:
            lines.append(f"| {o['name']} | failed: {o['error']} | | | | | {o['seconds']} |")
    return "\n".join(lines) + "\n"


def _num(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else f"{value:{spec}}"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                     prefix=f".{path.name}-") as handle:
        handle.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, 0o666 & ~umask)  # a temporary file is private; the summary is not
    os.replace(handle.name, path)


def with_cache(builds: list[FleetBuild], cache_dir: Path | None) -> list[FleetBuild]:
    """The builds with their pass cache set to ``cache_dir`` (``None``: no cache)."""
    return [replace(b, request=replace(b.request, cache_dir=cache_dir)) for b in builds]
