"""``secompile build-many``: a two-model, two-target fleet serially and on a real Ray cluster,
the shared cache, equality with single builds, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secompile.compiler.core.artifact import file_sha256
from tests.conftest import TINY_REF
from tests.e2e.test_cli import _cli

QUICK = "validate{repeats=2 long_repeats=1 batch=2 memory=false}"
DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_audio"
BUILDS = ("default-cpu", "default-edge", "tiny-cpu", "tiny-edge")


def _fleet(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.toml"
    path.write_text(f"""
[[model]]
name = "default"
model = "default"
targets = ["cpu", "edge"]
pipeline = "fuse-conv-bn,stream,export-onnx,{QUICK}"
cpus = 1

[[model]]
name = "tiny"
model = "{TINY_REF}"
targets = ["cpu", "edge"]
pipeline = "fuse-conv-bn,export-onnx,{QUICK}"
eval = "{DEMO}"
cpus = 1
{extra}""")
    return path


@pytest.fixture(scope="module")
def serial_fleet(tmp_path_factory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("fleet")
    out, cache = root / "out", root / "cache"
    result = _cli("build-many", _fleet(root), "--out", out, "--cache-dir", cache, "--no-ray")
    assert result.exit_code == 0, result.output
    return root, out, result


def test_fleet_builds_every_model_and_target_with_a_summary(serial_fleet) -> None:
    _, out, result = serial_fleet
    summary = json.loads((out / "fleet.json").read_text())
    assert [b["name"] for b in summary["builds"]] == list(BUILDS)
    assert summary["ok"] == 4 and summary["failed"] == 0
    assert summary["execution"]["executor"] == "serial"
    for name in BUILDS:
        target = name.split("-")[1]
        report = json.loads((out / name / "report.json").read_text())
        assert list(report["targets"]) == [target]
        assert (out / name / target / "model.onnx").is_file()
    assert (out / "default-edge" / "edge" / "model_stream.onnx").is_file()
    assert "4 built, 0 failed" in (out / "fleet.md").read_text()
    assert "fleet: 4 built, 0 failed" in result.output


def test_second_run_hits_the_cache_and_matches_a_single_build(serial_fleet, tmp_path) -> None:
    root, out, _ = serial_fleet
    again = tmp_path / "again"
    result = _cli("build-many", root / "fleet.toml", "--out", again, "--cache-dir",
                  root / "cache", "--no-ray")
    assert result.exit_code == 0, result.output
    summary = json.loads((again / "fleet.json").read_text())
    assert all(b["cache_hits"] and len(b["cache_hits"]) == b["passes"]
               for b in summary["builds"])
    single = tmp_path / "single"
    built = _cli("build", TINY_REF, "--target", "cpu", "--eval", DEMO, "--no-cache", "--out",
                 single, "--pipeline", f"fuse-conv-bn,export-onnx,{QUICK}")
    assert built.exit_code == 0, built.output
    assert file_sha256(single / "cpu" / "model.onnx") == file_sha256(
        out / "tiny-cpu" / "cpu" / "model.onnx")


def test_fleet_on_a_ray_cluster_gives_the_same_artifacts(serial_fleet, ray_cluster,
                                                         tmp_path) -> None:
    root, out, _ = serial_fleet
    on_ray = tmp_path / "ray"
    result = _cli("build-many", root / "fleet.toml", "--out", on_ray, "--no-cache", "--ray",
                  ray_cluster.address)
    assert result.exit_code == 0, result.output
    summary = json.loads((on_ray / "fleet.json").read_text())
    assert summary["execution"]["executor"] == "ray" and summary["execution"]["nodes"] == 2
    for name in BUILDS:
        target = name.split("-")[1]
        assert file_sha256(on_ray / name / target / "model.onnx") == file_sha256(
            out / name / target / "model.onnx")


def test_a_failed_build_is_reported_and_the_others_finish(serial_fleet, tmp_path) -> None:
    # the four good builds are served by the serial fleet's cache: what is checked here is
    # that one failure leaves the others finished and itself reported, not how they build
    fleet = _fleet(tmp_path, extra=f"""
[[model]]
name = "broken"
model = "gtcrn"
weights = "{tmp_path / 'missing.pt'}"
targets = ["cpu"]
""")
    out = tmp_path / "out"
    result = _cli("build-many", fleet, "--out", out, "--cache-dir", serial_fleet[0] / "cache",
                  "--no-ray")
    assert result.exit_code == 2
    summary = json.loads((out / "fleet.json").read_text())
    (broken,) = [b for b in summary["builds"] if b["status"] == "failed"]
    assert broken["name"] == "broken-cpu" and "checkpoint not found" in broken["error"]
    assert summary["ok"] == 4
    assert not (out / "broken-cpu" / "cpu").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[[model]]\nmodel = 'default'\ncolour = 'red'\n", "unknown key(s) ['colour']"),
    ("[[model]]\nname = 'x'\n", "'model' is required"),
    ("[[model]]\nmodel = 'default'\ntargets = ['quantum']\n", "unknown target 'quantum'"),
    ("[[model]]\nmodel = 'default'\npipeline = 'warp'\n", "unknown pass 'warp'"),
    ("[[model]]\nmodel = 'default'\n[[model]]\nmodel = 'default'\n", "named twice"),
    ("model = [", "not valid TOML"),
    ("threads = 0\n[[model]]\nmodel = 'default'\n", "'threads' must be an integer >= 1"),
    ("[[model]]\nmodel = 'default'\ncpus = -1\n", "'cpus' must be a number > 0"),
])
def test_bad_fleet_files_are_refused_before_any_build(text, message, tmp_path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(text)
    result = _cli("build-many", fleet, "--out", tmp_path / "out", "--no-ray")
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out" / "fleet.json").exists()


def test_build_validation_on_a_ray_cluster_equals_serial(ray_cluster, tmp_path) -> None:
    pipeline = ("fuse-conv-bn,export-onnx,validate{repeats=2 long_repeats=1 batch=2 "
                "memory=false distribute_min_seconds=0}")
    eval_dir = tmp_path / "eval"
    for sub in ("clean", "noisy"):
        (eval_dir / sub).mkdir(parents=True)
        for i in range(4):
            (eval_dir / sub / f"{i}.wav").write_bytes((DEMO / sub / "demo.wav").read_bytes())
    quality = {}
    for mode in (("--no-ray",), ("--ray", ray_cluster.address)):
        out = tmp_path / mode[0]
        result = _cli("build", TINY_REF, "--eval", eval_dir, "--no-cache", "--out", out,
                      "--pipeline", pipeline, *mode)
        assert result.exit_code == 0, result.output
        quality[mode[0]] = json.loads((out / "report.json").read_text())["targets"]["cpu"][
            "quality"]
    on_ray = quality["--ray"].pop("execution")
    assert on_ray["executor"] == "ray" and on_ray["tasks"] == 2 and on_ray["nodes"] == 2
    assert quality["--no-ray"].pop("execution")["executor"] == "serial"
    assert quality["--ray"] == quality["--no-ray"]


def test_interrupted_fleet_leaves_no_partial_artifact_or_summary(serial_fleet, tmp_path) -> None:
    from secompile.compiler.app.fleet import load_fleet, run_fleet
    from secompile.compiler.core.executor import SerialExecutor

    class InterruptedAfterFirst(SerialExecutor):
        def map(self, fn, items, num_cpus=1, num_gpus=0, return_exceptions=False):
            fn(items[0])
            staged = Path(items[1].request.out) / ".staging-killed"  # a task killed mid-build
            staged.mkdir(parents=True)
            (staged / "model.onnx").write_bytes(b"partial")
            raise KeyboardInterrupt

    out = tmp_path / "out"
    builds = load_fleet(_fleet(tmp_path), out, serial_fleet[0] / "cache")  # first build: hits
    with pytest.raises(KeyboardInterrupt):
        run_fleet(builds, InterruptedAfterFirst(), out)
    assert (out / "default-cpu" / "report.json").is_file()  # finished builds are whole
    assert not list(out.rglob(".staging-*")) and not (out / "fleet.json").exists()
    assert not (out / "default-edge" / "edge").exists()


def test_a_lost_build_task_is_a_failed_build_not_a_lost_fleet(serial_fleet, tmp_path) -> None:
    from secompile.compiler.app.fleet import load_fleet, run_fleet
    from secompile.compiler.core.executor import SerialExecutor

    class LosesTheLast(SerialExecutor):
        def map(self, fn, items, num_cpus=1, num_gpus=0, return_exceptions=False):
            assert return_exceptions
            staged = Path(items[-1].request.out) / ".staging-lost"
            staged.mkdir(parents=True)
            done = [fn(item) for item in items[:1]]
            return done + [RuntimeError("a Ray task was lost (WorkerCrashedError)")] * (
                len(items) - 1)

    out = tmp_path / "out"
    cache = serial_fleet[0] / "cache"  # the one build that runs is served from it
    summary = run_fleet(load_fleet(_fleet(tmp_path), out, cache), LosesTheLast(), out)
    assert summary["ok"] == 1 and summary["failed"] == 3
    assert "WorkerCrashedError" in summary["builds"][-1]["error"]
    assert not list(out.rglob(".staging-*"))
    assert (out / "fleet.json").stat().st_mode & 0o044  # readable like every other output
