"""``secompile build-many FLEET.toml``: many models x targets, each build a task.

A fleet file lists models; every (model, target) pair becomes one build, run as the single
``secompile build`` runs it and written to ``OUT/<name>-<target>/``. Builds run as Ray tasks
(each asking for ``cpus`` cores, and a GPU for the ``gpu`` target) or serially, share one pass
cache, and a failed build is reported without stopping the others. ``OUT/fleet.json`` and
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

from compiler.build import BuildRequest
from compiler.errors import ConfigError, SecompileError

_MODEL_KEYS = {"name", "model", "weights", "targets", "eval", "calib", "pipeline", "stream",
               "resample", "cpus", "seed"}
_TOP_KEYS = {"model", "cache_dir", "threads"}
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
    from compiler.pipeline import PipelineSpec
    from targets import get_target

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
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} "
                              f"(valid: {sorted(_MODEL_KEYS)})")
        if "model" not in entry:
            raise ConfigError(f"{where}: 'model' is required")
        name = str(entry.get("name") or Path(str(entry["model"]).split(":")[0]).stem)
        if not _NAME.match(name):
            raise ConfigError(f"{where}: name {name!r} must be letters, digits, '.', '_', '-'")
        cpus = entry.get("cpus", DEFAULT_CPUS)
        if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or cpus <= 0:
            raise ConfigError(f"{where}: 'cpus' must be a number > 0, got {cpus!r}")
        targets = entry.get("targets", ["cpu"])
        if not isinstance(targets, list) or not targets:
            raise ConfigError(f"{where}: 'targets' must be a non-empty list")
        model = entry["model"]
        if isinstance(model, str) and (model.endswith((".py", ".pt", ".ts")) or ".py:" in model):
            model = str(_path(base, model, "model", where))
        for target_name in targets:
            target = get_target(target_name)
            pipeline = entry.get("pipeline") or target.default_pipeline
            PipelineSpec.load(pipeline).resolve(target)
            request = BuildRequest(
                model=model, out=out / f"{name}-{target_name}",
                weights=_path(base, entry.get("weights"), "weights", where),
                targets=(target_name,), pipeline=entry.get("pipeline"),
                calib=_path(base, entry.get("calib"), "calib", where),
                eval=_path(base, entry.get("eval"), "eval", where),
                threads=threads, cache_dir=cache_dir, seed=int(entry.get("seed", 0)),
                resample=bool(entry.get("resample", False)),
                stream=bool(entry.get("stream", False)), ray=None,
            )
            builds.append(FleetBuild(f"{name}-{target_name}", request, float(cpus),
                                     1.0 if target_name == "gpu" else 0.0))
    names = [b.name for b in builds]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"fleet file {path}: builds named twice: {duplicated} (give each "
                          "[[model]] a distinct name)")
    return builds


def run_fleet_build(build: FleetBuild) -> dict[str, Any]:
    """Run one build (a Ray task body, or in process); never raises for a failed build: the
    outcome says what failed."""
    from compiler.build import run_build

    start = time.perf_counter()
    outcome: dict[str, Any] = {"name": build.name, "model": build.request.model,
                               "target": build.request.targets[0],
                               "out": str(build.request.out), "pid": os.getpid(),
                               "host": os.uname().nodename}
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
        outcomes = executor.map(run_fleet_build, builds,
                                num_cpus=[min(b.cpus, most) for b in builds],
                                num_gpus=[b.gpus for b in builds])
    except KeyboardInterrupt:
        for build in builds:  # builds stage their outputs; drop what a killed task left
            for staged in Path(build.request.out).glob(".staging-*"):
                shutil.rmtree(staged, ignore_errors=True)
        raise
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
    os.replace(handle.name, path)


def with_cache(builds: list[FleetBuild], cache_dir: Path | None) -> list[FleetBuild]:
    """The builds with their pass cache set to ``cache_dir`` (``None``: no cache)."""
    return [replace(b, request=replace(b.request, cache_dir=cache_dir)) for b in builds]
