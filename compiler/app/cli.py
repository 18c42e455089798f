"""The ``secompile`` command line (click).

Exit codes: 0 success, 2 user error (one line on stderr, no traceback), 1 internal failure,
3 a quality gate (build) or regression gate (compare) failed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from secompile.compiler.app.api import default_cache_dir
from secompile.compiler.core.errors import ModelError, SecompileError
from secompile.compiler.core.progress import Progress
from secompile.compiler.core.progress import wanted as progress_wanted


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn secompile errors into one stderr line and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except SecompileError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was left (finished builds of a "
                       "fleet are kept)", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
                       err=True)
            sys.exit(1)

    return wrapper


@click.group()
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="secompile", message="secompile %(version)s")
def main(debug: bool) -> None:
    """secompile: compile speech-enhancement models into fast, validated artifacts."""


def _target_names() -> list[str]:
    from secompile.targets import TARGETS

    return sorted(TARGETS)


@main.command()
@click.argument("model", required=False)
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint (state_dict).")
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help=f"Target to build (repeatable; known: {', '.join(_target_names())}).")
@click.option("--pipeline", help="Pipeline TOML file or text, e.g. 'fuse-conv-bn,export-onnx'.")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Folder of noisy calibration wavs for quantize (default: the project's own "
                   "synthetic mixtures); never the --eval files.")
@click.option("--eval", "eval_dir", type=click.Path(path_type=Path),
              help="Folder with clean/ and noisy/ paired wavs for quality metrics.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (report.json, report.md, <target>/...).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Intra-op threads for both the baseline and the artifact.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Pass cache folder.")
@click.option("--no-cache", is_flag=True, help="Run every pass, reuse nothing.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--dump-dir", type=click.Path(path_type=Path),
              help="Write every pass's output here (ONNX files, torch state_dicts).")
@click.option("--resample", is_flag=True,
              help="Resample --eval/--calib audio of another rate to the model's rate.")
@click.option("--stream", is_flag=True,
              help="Also write <target>/model_stream.onnx, a hop-by-hop artifact with explicit "
                   "state, proven equivalent to the offline model (default for edge).")
@click.option("--prune", type=click.FloatRange(0, 1, max_open=True), metavar="FRACTION",
              help="Add structured pruning that removes this fraction of the counted MACs, "
                   "fine-tuned by distillation from the original (pass 'prune', default for "
                   "edge); refused when it loses more quality than its limits.")
@click.option("--distill", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              metavar="WIDTH",
              help="Replace the model by a student with this fraction of its channels, "
                   "trained by distillation (pass 'distill').")
@click.option("--ray", "ray", default="auto", show_default=True, metavar="auto|ADDRESS",
              help="Score evaluation files on Ray: 'auto' starts a local Ray when Ray is "
                   "installed and the evaluation set is large enough; ADDRESS joins a cluster.")
@click.option("--no-ray", is_flag=True, help="Run everything in this process.")
@click.option("--max-si-sdr-drop", default=0.2, show_default=True, type=click.FloatRange(0),
              help="Largest SI-SDR loss (dB) against the fp32 model allowed in any input-SNR "
                   "bucket of --eval; beyond it the build exits 3 and ships nothing.")
@click.option("--max-pesq-drop", default=0.05, show_default=True, type=click.FloatRange(0),
              help="Largest PESQ-WB loss allowed in any input-SNR bucket (exit 3 beyond it).")
@click.option("--allow-cpu-only-artifacts", "allow_cpu_only", is_flag=True,
              help="Build a target whose hardware this machine lacks (gpu without a CUDA GPU) "
                   "from what the CPU can check (the FP16 ONNX), marked unvalidated.")
@click.option("--pass-timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Stop a pass (and model loading, the model's first forward) that runs "
                   "longer than this: a named error, no artifact, no cache entry "
                   "[default: no limit].")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@_guarded
def build(model: str | None, weights: Path | None, targets: tuple[str, ...],
          pipeline: str | None, calib: Path | None, eval_dir: Path | None, out: Path,
          threads: int, cache_dir: Path | None, no_cache: bool, seed: int, dump_dir: Path | None,
          resample: bool, stream: bool, prune: float | None, distill: float | None, ray: str,
          no_ray: bool, max_si_sdr_drop: float, max_pesq_drop: float, allow_cpu_only: bool,
          pass_timeout: float | None, quiet: bool) -> None:
    """Compile MODEL (a registry name, FILE.py:factory or TorchScript; default: the shipped
    default model) for each target and write artifacts, manifests and the report to --out."""
    from secompile.compiler.app.build import BuildRequest, run_build
    from secompile.compiler.reporting.gates import Gates

    request = BuildRequest(
        model=model, out=out, weights=weights, targets=targets or ("cpu",), pipeline=pipeline,
        calib=calib, eval=eval_dir, threads=threads, seed=seed, dump_dir=dump_dir,
        resample=resample, stream=stream, prune=prune, distill=distill,
        ray=None if no_ray else ray,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        gates=Gates(max_si_sdr_drop, max_pesq_drop), allow_cpu_only=allow_cpu_only,
        pass_timeout=pass_timeout,
        progress=not quiet and progress_wanted(sys.stderr, dict(os.environ)),
    )
    log = (lambda _: None) if quiet else (lambda line: click.echo(line, err=True))
    report = run_build(request, log)
    for name, t in report["targets"].items():
        delta = t["quality_delta"] or {}
        parts = [f"{name}: {out / t['artifact']}"]
        if t["speedup"] is not None:
            parts.append(f"speedup {t['speedup']:.2f}x, size {t['size_reduction']:.2f}x, "
                         f"throughput {t['throughput_speedup']:.2f}x")
        if delta:
            parts.append(f"dSI-SDR {delta['si_sdr']:+.4f} dB, dPESQ {delta['pesq']:+.4f}, "
                         f"dESTOI {delta['stoi']:+.5f}")
        streaming = t.get("streaming")
        if streaming:
            latency = streaming["latency"]
            timed = (f"{latency['per_hop_ms']['p50']:.3f} ms per hop p50, " if latency else "")
            parts.append(f"stream: {out / name / streaming['file']} (hop {streaming['hop']}, "
                         f"{timed}max abs vs offline {streaming['equivalence']['max_abs']:.2g})")
        if t["validation"]["status"] == "unvalidated":
            parts.append("UNVALIDATED: built without the target's hardware")
        if t["cache_hits"]:
            parts.append(f"cache hits: {', '.join(t['cache_hits'])}")
        click.echo("; ".join(parts))
    click.echo(f"report: {out / 'report.md'}")


@main.command("build-many")
@click.argument("fleet", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder: one <name>-<target>/ build each, fleet.json, fleet.md.")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Pass cache shared by every build (default: the fleet file's, else "
                   "~/.cache/secompile).")
@click.option("--no-cache", is_flag=True, help="Run every pass of every build.")
@click.option("--ray", "ray", default="auto", show_default=True, metavar="auto|ADDRESS",
              help="Run the builds as Ray tasks: 'auto' starts a local Ray when Ray is "
                   "installed; ADDRESS joins a cluster.")
@click.option("--no-ray", is_flag=True, help="Run the builds one after another here.")
@_guarded
def build_many(fleet: Path, out: Path, cache_dir: Path | None, no_cache: bool, ray: str,
               no_ray: bool) -> None:
    """Build every model x target of FLEET (a TOML file), sharing one pass cache."""
    from secompile.compiler.app.build import check_writable
    from secompile.compiler.app.fleet import load_fleet, run_fleet, with_cache
    from secompile.compiler.distributed.executors import make_executor

    out = out.resolve()  # builds may run in Ray workers with another working directory
    builds = load_fleet(fleet, out, cache_dir.resolve() if cache_dir else None)
    if no_cache:
        builds = with_cache(builds, None)
    elif all(b.request.cache_dir is None for b in builds):
        builds = with_cache(builds, default_cache_dir())
    check_writable(out)
    executor = make_executor(None if no_ray else ray)
    try:
        summary = run_fleet(builds, executor, out)
    finally:
        executor.close()
    for outcome in summary["builds"]:
        detail = (f"speedup {outcome['speedup']}, cache hits {len(outcome['cache_hits'])}"
                  if outcome["status"] == "ok" else outcome["error"])
        click.echo(f"{outcome['name']}: {outcome['status']} ({detail}) -> {outcome['out']}")
    click.echo(f"fleet: {summary['ok']} built, {summary['failed']} failed; "
               f"summary: {out / 'fleet.md'}")
    if summary["failed"]:
        sys.exit(max(o.get("exit_code", 1) for o in summary["builds"]))


def _runner_for(ref: str, weights: Path | None, threads: int, verify: bool
                ) -> tuple[Any, int, int]:
    """A runner, its sample rate and its shortest accepted input, for an ONNX file, a build
    folder or a model reference (a streaming artifact needs ``--stream``)."""
    from secompile.compiler.app.api import model_runner
    from secompile.compiler.core.artifact import find_artifact
    from secompile.compiler.runtime.streaming import is_stream_artifact

    path = find_artifact(ref)
    if path is not None and is_stream_artifact(path):
        raise ModelError(f"{path} is a streaming artifact: run it with --stream")
    runner, rate, shortest, _ = model_runner(ref, weights, threads, verify)
    return runner, rate, shortest


def _stream_runner_for(ref: str, weights: Path | None, threads: int, verify: bool
                       ) -> tuple[Any, int, int]:
    """A streaming runner (hop by hop, output aligned by the declared delay) for a
    ``model_stream.onnx`` file or a build folder holding one."""
    from secompile.compiler.core.artifact import find_artifact, verify_artifact
    from secompile.compiler.runtime.streaming import STREAM_FILE, StreamSession

    if weights is not None:
        raise ModelError("--weights does not apply to --stream (give a streaming artifact)")
    path = find_artifact(ref, STREAM_FILE)
    if path is None:
        raise ModelError(f"{ref} is not a streaming artifact ({STREAM_FILE}) or a build folder "
                         "holding one (build with --stream or --target edge)")
    if verify:
        verify_artifact(path)
    session = StreamSession(path, threads)
    return (lambda batch: session.enhance(batch[0])[None, :]), session.sample_rate, 1


@main.command()
@click.argument("artifact")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the enhanced wavs (same file names).")
@click.option("--stream", is_flag=True,
              help="Run the streaming artifact (model_stream.onnx) hop by hop, as a live "
                   "application would; the output is aligned by its declared delay.")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint for a model name.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256))
@click.option("--resample", is_flag=True, help="Resample inputs of another rate.")
@click.option("--no-verify", is_flag=True,
              help="Run an artifact whose bytes no longer match the sha256 in the manifest.json "
                   "beside it (refused by default).")
@_guarded
def enhance(artifact: str, inputs: tuple[Path, ...], out: Path, stream: bool,
            weights: Path | None, threads: int, resample: bool, no_verify: bool) -> None:
    """Enhance IN.wav files with ARTIFACT (an .onnx file, a build folder or a model).

    Every input is checked before anything is written. Long recordings run in chunks with
    context, read and written one window at a time (``compiler.runtime.chunking``), so memory
    does not grow with the length; ``--stream`` runs hop by hop."""
    from secompile.calibration.audio import check_audio, read_audio, write_audio
    from secompile.compiler.app.build import check_writable
    from secompile.compiler.core.errors import ConfigError
    from secompile.compiler.runtime.chunking import ChunkPlan, enhance_file

    make = _stream_runner_for if stream else _runner_for
    runner, rate, shortest = make(artifact, weights, threads, not no_verify)
    for path in inputs:  # every input checked before anything is written
        check_audio(path, rate, allow_resample=resample, min_samples=shortest)
    clashes = sorted({p.name for p in inputs if [q.name for q in inputs].count(p.name) > 1})
    if clashes:
        raise ConfigError(f"two inputs share the file name {clashes[0]}: their outputs would "
                          f"overwrite each other in {out}")
    check_writable(out)
    plan = ChunkPlan.for_model(rate, shortest)
    for path in inputs:
        with tempfile.NamedTemporaryFile(dir=out, suffix=".wav", delete=False) as tmp:
            partial = Path(tmp.name)
        try:
            if stream or _header_rate(path) != rate:  # hop by hop, or resampled: whole file
                wav = read_audio(path, rate, allow_resample=resample, min_samples=shortest)
                write_audio(partial, runner(wav[None, :])[0], rate)
            else:
                enhance_file(runner, path, partial, plan, rate)
            os.replace(partial, out / path.name)
        finally:
            partial.unlink(missing_ok=True)
        click.echo(str(out / path.name))


def _header_rate(path: Path) -> int:
    """The sample rate in an audio file's header."""
    import soundfile as sf

    return sf.info(str(path)).samplerate


@main.command()
@click.argument("new", type=click.Path(path_type=Path))
@click.argument("baseline", type=click.Path(path_type=Path))
@click.option("--tolerance", "tolerances", multiple=True, metavar="METRIC=VALUE",
              help="Override a gate's tolerance (repeatable), e.g. speedup=0.2 si_sdr=0.05.")
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML of the gates.")
@click.option("--markdown", type=click.Path(path_type=Path),
              help="Write a Markdown summary (e.g. to $GITHUB_STEP_SUMMARY).")
@_guarded
def compare(new: Path, baseline: Path, tolerances: tuple[str, ...], junit: Path | None,
            markdown: Path | None) -> None:
    """Compare NEW with BASELINE (build folders or their report.json files); exit 3 on a
    regression."""
    from secompile.compiler.app.api import compare as compare_builds

    comparison = compare_builds(new, baseline, tolerances)
    click.echo(comparison.table(), nl=False)
    if junit:
        comparison.write_junit(junit)
    if markdown:
        markdown.write_text(comparison.markdown())
    if comparison.failed:
        names = ", ".join(f"{f.target}.{f.gate}" for f in comparison.failed)
        click.echo(f"regression: {names}", err=True)
        sys.exit(3)


@main.command("profile")
@click.argument("model_or_artifact")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint for a model name.")
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(0.05, 600),
              help="Length of the profiled input.")
@click.option("--audio", type=click.Path(path_type=Path),
              help="Profile on this wav (its first --seconds) instead of deterministic noise.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Rows in the table.")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Write the full profile as JSON.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Thread count compared with 1 thread for the Amdahl estimate.")
@_guarded
def profile_cmd(model_or_artifact: str, weights: Path | None, seconds: float,
                audio: Path | None, top: int, json_out: Path | None, threads: int) -> None:
    """Where the time goes: per-layer time (a model: registry name, FILE.py:factory or
    TorchScript) or per-op time (an .onnx artifact or build folder), FLOPs, roofline and
    thread scaling."""
    from secompile.compiler.app.api import profile
    from secompile.compiler.core.errors import OutputError

    result = profile(model_or_artifact, weights=weights, seconds=seconds, audio=audio,
                     threads=threads)
    click.echo(result.render_table(top), nl=False)
    if json_out:
        try:
            json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {json_out}: {exc.strerror or exc}") from None


@main.command("bench")
@click.argument("artifact")
@click.option("--model", help="The torch model to compare with (registry name, FILE.py:factory "
                              "or TorchScript); default: model.source of the build's manifest "
                              "or report.json beside the artifact.")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint for --model.")
@click.option("--slo-ms", default=100.0, show_default=True, type=click.FloatRange(min=0.1),
              help="p99 latency objective for the requests/s comparison. 100 ms is 10% of a "
                   "1 s request: a chunked service stays well inside the ~150 ms one-way "
                   "delay budget for speech (ITU-T G.114).")
@click.option("--budget-seconds", default=60.0, show_default=True,
              type=click.FloatRange(min=1.0),
              help="Time for the searches of both sides (40% each). The interleaved "
                   "confirmation re-runs (200 requests per side per round), model loading, "
                   "batch-1 timing and the memory probes add to it, and so may a side that has "
                   "not met the SLO yet (up to 3x its share: 0 requests/s is never a budget "
                   "artefact) or a backed-off confirmation.")
@click.option("--cores", type=click.IntRange(1, 256),
              help="Cores the server may use: workers x threads per worker never exceed it "
                   "[default: the CPUs this process may run on].")
@click.option("--request-seconds", default=1.0, show_default=True,
              type=click.FloatRange(0.05, 60), help="Length of each request's audio.")
@click.option("--audio", type=click.Path(path_type=Path),
              help="Requests are this wav, looped (default: the project's noisy demo clip).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Intra-op threads for the batch-1 latency and the memory probe (as build).")
@click.option("--repeats", default=30, show_default=True, type=click.IntRange(1, 10000),
              help="Batch-1 latency runs per side.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Largest dynamic batch searched (powers of two up to it).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0),
              help="How long a worker waits to fill a batch [default: 10% of the SLO].")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Write every measurement (trials included) as JSON.")
@click.option("--verbose", is_flag=True, help="One line per trial on stderr.")
@_guarded
def bench_cmd(artifact: str, model: str | None, weights: Path | None, slo_ms: float,
              budget_seconds: float, cores: int | None, request_seconds: float,
              audio: Path | None, threads: int, repeats: int, max_batch: int,
              max_wait_ms: float | None, json_out: Path | None, verbose: bool) -> None:
    """Serve ARTIFACT (an .onnx file or build folder) and the torch eager model it was built
    from side by side: batch-1 latency p50/p90/p99 and real-time factor, the serving
    configuration with the most requests/s at p99 <= --slo-ms (found by measured search over
    thread splits and dynamic batch sizes under Poisson load), and peak RSS."""
    from secompile.compiler.app.bench import (
        BenchOptions,
        baseline_source,
        bench_artifact,
        render_table,
    )
    from secompile.compiler.core.artifact import find_artifact
    from secompile.compiler.core.errors import OutputError
    from secompile.compiler.runtime.timing import available_cpus

    path = find_artifact(artifact)
    if path is None:
        raise ModelError(f"{artifact} is not an ONNX artifact or a build folder (bench compares "
                         "an artifact with the model it was built from)")
    source = baseline_source(path, model, weights)
    batches = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch)
    options = BenchOptions(slo_ms=slo_ms, budget_s=budget_seconds,
                           cores=cores or available_cpus(), request_seconds=request_seconds,
                           threads=threads, repeats=repeats, batches=batches,
                           max_wait_ms=max_wait_ms)
    if verbose:
        result = bench_artifact(path, source, options, audio,
                                lambda line: click.echo(line, err=True))
    else:  # on a terminal a bar of the trial budget; in CI logs and pipes nothing
        bar = Progress(round(budget_seconds), "bench: load trials (s of budget)",
                       enabled=progress_wanted(sys.stderr, dict(os.environ)))
        started = time.perf_counter()

        def tick(_: str) -> None:
            bar.update(max(0, min(round(time.perf_counter() - started), bar.total) - bar.done))

        with bar:
            result = bench_artifact(path, source, options, audio, tick)
    click.echo(render_table(result), nl=False)
    if json_out:
        try:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {json_out}: {exc.strerror or exc}") from None


@main.command("passes")
def list_passes() -> None:
    """List the registered passes and their options."""
    from secompile.compiler.core.registry import get_pass, pass_names
    from secompile.passes import register_builtin

    register_builtin()
    for name in pass_names():
        cls = get_pass(name)
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config))
        click.echo(f"{name:<14} {cls.summary}")
        click.echo(f"{'':<14} in: {'/'.join(cls.input_formats)}  options: {options or 'none'}")


@main.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the machine and targets as JSON.")
def list_targets(as_json: bool) -> None:
    """What this machine has (CPU features, CUDA devices, MPS/XPU, TensorRT, ONNX Runtime
    providers) and which targets it can build and run, with the reason for the others."""
    from secompile.targets import TARGETS
    from secompile.targets.hardware import describe, detect

    hw = detect()
    if as_json:
        click.echo(json.dumps({"machine": hw.as_dict(), "targets": {
            name: {"available": t.unavailable_reason() is None,
                   "why_not": t.unavailable_reason(), "default_pipeline": t.default_pipeline,
                   "cpu_only_pipeline": t.cpu_only_pipeline}
            for name, t in sorted(TARGETS.items())}}, indent=2))
        return
    click.echo("machine:")
    for line in describe(hw):
        click.echo(f"  {line}")
    click.echo("targets:")
    for name, target in sorted(TARGETS.items()):
        reason = target.unavailable_reason()
        status = "available" if reason is None else f"unavailable: {reason}"
        click.echo(f"  {name:<6} {target.description}; {status}")
        click.echo(f"  {'':<6} default pipeline: {target.default_pipeline}")
        if reason is not None and target.cpu_only_pipeline:
            click.echo(f"  {'':<6} with --allow-cpu-only-artifacts: "
                       f"{target.cpu_only_pipeline} (unvalidated)")


@main.command("models")
def list_models() -> None:
    """List the registered models."""
    from secompile.models.registry import describe_models

    for name, description in describe_models():
        click.echo(f"{name:<8} {description}")


