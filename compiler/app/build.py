"""One build: load the model, validate every target's pipeline, run them, write the outputs.

It writes ``report.json``, ``report.md`` and the self-contained ``report.html`` (charts, the
profile's bottlenecks, and one clip's spectrograms and audio through every artifact).
What it may do to ``out`` is the rule set of :mod:`secompile.compiler.app.out_folder`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secompile.calibration.audio import read_audio
from secompile.calibration.datasets import AudioFolder, PairedFolder, check_disjoint
from secompile.compiler.app.out_folder import (
    GATE_FILES,
    REPORT_FILES,
    STAGING_PREFIX,
    check_destinations,
    commit,
    drop_stale_staging,
    owned_folder,
    writing,
)
from secompile.compiler.core.cache import PassCache
from secompile.compiler.core.context import PassContext
from secompile.compiler.core.errors import ConfigError, OutputError
from secompile.compiler.core.instruments import DumpInstrument
from secompile.compiler.core.manager import PassManager, PipelineRun
from secompile.compiler.core.pipeline import PassSpec, PipelineSpec
from secompile.compiler.core.progress import on_terminal, silent
from secompile.compiler.distributed.executors import make_executor
from secompile.compiler.reporting.gates import (
    GateCheck,
    GateError,
    Gates,
    check_quality,
    failed,
    write_junit,
)
from secompile.compiler.reporting.html import ReportClip, write_html_report
from secompile.compiler.reporting.report import (
    VALIDATORS,
    build_report,
    manifest,
    render_markdown,
    validation_metrics,
    write_json,
)
from secompile.compiler.runtime.parity import default_instruments
from secompile.passes import register_builtin
from secompile.targets import get_target, require_available, require_cuda_passes

PARITY_SECONDS = 4
# Graph rewrites that keep the model's function: --prune and --distill go after them.
REWRITES = ("fuse-conv-bn", "merge-grouped-gru")


@dataclass(frozen=True)
class BuildRequest:
    """Everything ``secompile build`` was asked to do."""

    model: Any  # a reference (str), an nn.Module (the Python API) or None (the default)
    out: Path
    weights: Path | None = None
    targets: tuple[str, ...] = ("cpu",)
    pipeline: str | None = None
    calib: Path | None = None
    eval: Path | None = None
    threads: int = 1
    cache_dir: Path | None = None
    seed: int = 0
    dump_dir: Path | None = None
    resample: bool = False
    stream: bool = False
    prune: float | None = None  # --prune: fraction of MACs to remove
    distill: float | None = None  # --distill: width of the student
    ray: str | None = None  # None/"off": serial; "auto": local Ray if installed; else address
    gates: Gates = field(default_factory=Gates)
    allow_cpu_only: bool = False  # build a target lacking its hardware from its CPU pipeline
    progress: bool = False  # draw progress bars on stderr (the CLI decides: a terminal, not CI)
    # --pass-timeout: seconds each pass (and model loading, the first forward) may take; None:
    # no limit. Main thread only; stops Python-level hangs (compiler.core.limits).
    pass_timeout: float | None = None

    def __post_init__(self) -> None:
        """The ranges the CLI's options enforce, for every other way in (API, fleet)."""
        if not self.targets:
            raise ConfigError("no target to build: name at least one (e.g. cpu)")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"threads must be within [1, 256], got {self.threads}")
        if self.prune is not None and not 0 <= self.prune < 1:
            raise ConfigError(f"prune (fraction of MACs to remove) must be within [0, 1), "
                              f"got {self.prune}")
        if self.distill is not None and not 0 < self.distill < 1:
            raise ConfigError(f"distill (student width) must be within (0, 1), "
                              f"got {self.distill}")
        if self.pass_timeout is not None and not self.pass_timeout > 0:
            raise ConfigError(f"pass timeout must be a positive number of seconds, "
                              f"got {self.pass_timeout}")


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` if needed and prove a file can be written there (``OutputError``)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None


def pipeline_spec(pipeline: str | None, target: Any, stream: bool,
                  cpu_only: bool = False, prune: float | None = None,
                  distill: float | None = None) -> PipelineSpec:
    """The pipeline a build runs for ``target``: ``pipeline`` (text or TOML file) or the
    target's default (its CPU-only one when ``cpu_only``), with the ``stream`` pass added
    before export when ``stream``, ``prune{macs_reduction=prune}`` and
    ``distill{width=distill}`` after the leading graph rewrites when given."""
    register_builtin()  # the passes this application offers, before any name is resolved
    default = target.cpu_only_pipeline if cpu_only else target.default_pipeline
    spec = PipelineSpec.load(pipeline or default)
    if prune is not None:
        spec = spec.adding_early(PassSpec("prune", (("macs_reduction", prune),)), REWRITES)
    if distill is not None:
        spec = spec.adding_early(PassSpec("distill", (("width", distill),)),
                                 (*REWRITES, "prune"))
    if stream:  # the streaming artifact is written from the torch model, before export
        spec = spec.including("stream", before="export-onnx")
    return spec


def _parity_audio(evaluation: PairedFolder | None, calibration: AudioFolder | None,
                  demo: Path, rate: int) -> np.ndarray:
    """A real clip ``[1, <= 4 s]`` for parity checks: evaluation, calibration or demo audio."""
    if evaluation is not None:
        clip = evaluation.load()[0].noisy
    elif calibration is not None:
        clip = calibration.load()[0]
    else:  # the project's own demo clip, resampled to the model's rate
        clip = read_audio(demo, rate, allow_resample=True)
    need = PARITY_SECONDS * rate
    clip = np.tile(clip, -(-need // len(clip)))[:need] if len(clip) < rate else clip[:need]
    return clip[None, :].astype(np.float32)


def _profile_entry(path: Path, clip: np.ndarray, rate: int, cache_dir: Path | None
                   ) -> dict[str, Any]:
    """Where the artifact's time goes (``compiler.analysis.profile``, one thread, 1 s of the parity
    clip): the bottleneck nodes that add up to over half of it, the top rows and op kinds."""
    from secompile.compiler.analysis.profile import machine_peak, profile_onnx

    peak = machine_peak(cache_dir / "machine.json" if cache_dir else None)
    result = profile_onnx(path, clip[:, :rate], peak, sample_rate=rate, threads=1, runs=3,
                          repeats=3).to_dict()
    return {"bottlenecks": result["bottlenecks"], "rows": result["rows"][:10],
            "by_kind": result["by_kind"][:8], "unit": result["unit"],
            "audio_seconds": result["audio_seconds"], "notes": result["notes"]}


def _diagnostic(make: Callable[[], Any], log: Callable[[str], None], what: str) -> Any:
    """``make()``, or ``{"error": ...}`` with a warning: a report's diagnostic section (the
    profile, the listening clip) must never cost a build whose artifacts are good."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001  (any failure of a diagnostic is reported, not fatal)
        log(f"  warning: {what} not added to the report: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _report_clip(evaluation: PairedFolder | None, parity: np.ndarray, rate: int,
                 baseline: Any, runs: dict[str, PipelineRun]) -> ReportClip:
    """The clip the HTML report plays and draws: the first evaluation file (else the parity
    clip), at most 4 s, through the fp32 PyTorch model and each target's artifact."""
    from secompile.compiler.runtime.runners import TorchRunner, make_runner

    if evaluation is not None:
        pair = evaluation.load()[0]
        name, noisy = pair.name, pair.noisy[: 4 * rate]
    else:
        name, noisy = "parity clip", parity[0, : 4 * rate]
    if len(noisy) < baseline.info.min_samples:
        noisy = parity[0, : 4 * rate]
    wav = np.ascontiguousarray(noisy, np.float32)[None, :]
    return ReportClip(name, rate, wav[0], TorchRunner(baseline.module, 1)(wav)[0],
                      {t: make_runner(run.artifact, 1)(wav)[0] for t, run in runs.items()})


def _enforce_gates(checks: list[GateCheck], staging: Path, out: Path,
                   report: dict[str, Any]) -> None:
    """Stage ``gates.xml``; when a gate failed, write it and ``rejected-report.json`` (the
    measurements, to see why) to ``out``, ship no artifact and raise :class:`GateError`
    naming the worst failures."""
    write_junit(checks, staging / "gates.xml")
    bad = failed(checks)
    if bad:
        os.replace(staging / "gates.xml", out / "gates.xml")
        rejected = out / "rejected-report.json"
        write_json(staging / rejected.name, report)
        os.replace(staging / rejected.name, rejected)
        shown = "; ".join(c.describe() for c in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise GateError(f"quality gate failed: {shown}{more}; no artifact was written; "
                        f"JUnit XML in {out / 'gates.xml'}, measurements in {rejected}")


def run_build(request: BuildRequest, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run a build end to end and return the report (also written to ``out``)."""
    from secompile.models.registry import DEMO_DIR, load_checked

    targets = [get_target(name) for name in dict.fromkeys(request.targets)]  # once each
    unvalidated = {t.name: why for t in targets
                   if (why := require_available(t, request.allow_cpu_only)) is not None}
    specs = {t.name: pipeline_spec(request.pipeline, t, request.stream, t.name in unvalidated,
                                   request.prune, request.distill)
             for t in targets}
    cache = (PassCache(request.cache_dir, warn=lambda line: log(f"  warning: {line}"))
             if request.cache_dir else None)

    def listener(record: dict[str, Any]) -> None:
        extra = "cache hit" if record["cache"] == "hit" else f"{record.get('seconds', 0):.2f} s"
        log(f"  {record['name']}: {extra}, modified={record['modified']}")
        metrics = record["metrics"]
        if metrics.get("skipped"):
            log(f"  warning: {record['name']} did not apply: {metrics['skipped']}")
        for key in ("refused", "warning"):
            if metrics.get(key):
                log(f"  warning: {record['name']}: {metrics[key]}")
        if metrics.get("simplifier") == "none":
            log("  warning: no ONNX simplifier installed (onnxsim, onnxslim); "
                "only ONNX Runtime's optimizer ran")

    def instruments(target: str) -> list:
        extra = [DumpInstrument(request.dump_dir / target)] if request.dump_dir else []
        return default_instruments() + extra

    managers = {t.name: PassManager.from_spec(specs[t.name], t, cache=cache, listener=listener,
                                              instruments=instruments(t.name),
                                              pass_timeout=request.pass_timeout)
                for t in targets}
    for target in targets:
        require_cuda_passes(target, managers[target.name].passes)

    # a model that raises, hangs, returns NaN or another length fails here, before any pass
    artifact = load_checked(request.model, request.weights, request.pass_timeout)
    rate = artifact.info.sample_rate
    eval_root = request.eval
    if eval_root is None and (request.model is None or request.model == "default"):
        eval_root = DEMO_DIR
    shortest = artifact.info.min_samples
    audio_rules = {"min_samples": shortest, "allow_resample": request.resample}
    evaluation = PairedFolder.scan(eval_root, rate, **audio_rules) if eval_root else None
    calibration = None
    calib_root = request.calib
    if request.calib:
        calibration = AudioFolder.scan(request.calib, rate, seed=request.seed, **audio_rules)
    elif any(p.reads_calibration() for m in managers.values() for p in m.passes):
        # the project's own calibration mixtures (models/make_demo.py), never evaluation audio
        calib_root = DEMO_DIR / "calib"
        calibration = AudioFolder.scan(calib_root, rate, seed=request.seed,
                                       min_samples=shortest, allow_resample=True)
    for dataset in (evaluation, calibration):
        if dataset is not None:
            dataset.load()  # bad audio fails here, before any pass runs
    if calibration is not None and evaluation is not None:
        check_disjoint(calibration, evaluation)
    parity = _parity_audio(evaluation, calibration, DEMO_DIR / "noisy" / "demo.wav", rate)
    check_writable(request.out)
    gated = any(p.name in VALIDATORS for m in managers.values() for p in m.passes)
    check_destinations(request.out, [*(t.name for t in targets), *REPORT_FILES,
                                     *(GATE_FILES if gated else ())])
    if request.cache_dir:
        check_writable(request.cache_dir, "cache folder")
    log(f"model {artifact.info.name}: {artifact.info.params} parameters, {rate} Hz")

    runs: dict[str, PipelineRun] = {}
    checks: list[GateCheck] = []
    executor = make_executor(request.ray)
    with tempfile.TemporaryDirectory(prefix="secompile-") as work:
        drop_stale_staging(request.out, log)
        with writing(request.out):
            staging = owned_folder(request.out, STAGING_PREFIX)
        try:
            for target in targets:
                log(f"[{target.name}] {managers[target.name].pipeline_text}")
                ctx = PassContext(
                    target=target, workdir=Path(work) / target.name, baseline=artifact,
                    parity_audio=parity, evaluation=evaluation, calibration=calibration,
                    threads=request.threads, seed=request.seed, executor=executor,
                    progress=on_terminal() if request.progress else silent,
                    checkpoints=request.cache_dir / "checkpoints" if request.cache_dir else None,
                )
                run = managers[target.name].run(artifact, ctx)
                runs[target.name] = run
                folder = staging / target.name
                with writing(request.out):
                    folder.mkdir()
                    final = folder / f"model{run.artifact.path.suffix}"
                    shutil.copyfile(run.artifact.path, final)
                    for side_output in (f for result in run.results for f in result.files):
                        shutil.copyfile(side_output, folder / side_output.name)
                    write_json(folder / "manifest.json", manifest(
                        artifact.info, target, run, final, unvalidated.get(target.name)))
                if any(p.name in VALIDATORS for p in managers[target.name].passes):
                    checks += check_quality(target.name, validation_metrics(run).get("quality"),
                                            request.gates)
            settings = {
                "threads": request.threads, "seed": request.seed,
                "eval": str(eval_root) if eval_root else None,
                "calib": str(calib_root) if calib_root else None,
                "cache": str(request.cache_dir) if request.cache_dir else None,
                "execution": executor.settings(),
            }
            report = build_report(artifact.info, runs, settings, unvalidated)
            report["gates"] = {"limits": request.gates.limits(),
                               "checks": {t: [c.as_dict() for c in checks if c.target == t]
                                          for t in runs} if checks else None}
            if checks:
                with writing(request.out):
                    _enforce_gates(checks, staging, request.out, report)
            for target in targets:  # timed CPU builds: where the time goes
                name, run = target.name, runs[target.name]
                if (run.artifact.format == "onnx" and name not in unvalidated
                        and "CPUExecutionProvider" in target.execution_providers
                        and run.metrics_of("validate").get("latency_ms")):
                    report["targets"][name]["profile"] = _diagnostic(
                        lambda r=run: _profile_entry(r.artifact.path, parity, rate,
                                                     request.cache_dir), log, "profile")
            clip = _diagnostic(lambda: _report_clip(evaluation, parity, rate, artifact, runs),
                               log, "report.html clip")
            with writing(request.out):
                write_json(staging / "report.json", report)
                (staging / "report.md").write_text(render_markdown(report))
                write_html_report(report, staging / "report.html",
                                  None if isinstance(clip, dict) else clip)
                commit(staging, request.out)
        finally:
            executor.close()
            shutil.rmtree(staging, ignore_errors=True)
    return report
