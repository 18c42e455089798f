"""Pruning and distillation end to end through the CLI: the report and report.md sections, the
cache serving the pruned weights, the refusal, and the flags' errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from secompile.compiler.app.cli import main
from secompile.compiler.core.artifact import file_sha256
from tests.conftest import TINY_REF, speechlike

VALIDATE = "validate{repeats=4 long_repeats=2 batch=2 memory=false}"
# Fine-tuning reads the generated --calib folder, so these tests need no espeak-ng.
TRAIN = "data=calibration steps=12 eval_every=4 segment_seconds=0.5 batch_size=4 train_threads=1"
LOOSE = ["--max-si-sdr-drop", "100", "--max-pesq-drop", "10"]


def _cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> tuple[Path, Path]:
    """A calibration folder of noisy clips and an evaluation folder of clean/noisy pairs at
    three input SNRs, all generated."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    calib = root / "calib"
    calib.mkdir()
    for i in range(3):
        clean = speechlike(2.0, i)
        sf.write(calib / f"c{i}.wav", clean + 0.02 * rng.standard_normal(clean.size), 16000)
    evaluation = root / "eval"
    for sub in ("clean", "noisy"):
        (evaluation / sub).mkdir(parents=True)
    for i, snr in enumerate((0, 10, 25)):
        clean = speechlike(1.5, 10 + i)
        noise = rng.standard_normal(clean.size).astype(np.float32)
        noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr / 10))
        sf.write(evaluation / "clean" / f"p{i}.wav", clean, 16000)
        sf.write(evaluation / "noisy" / f"p{i}.wav", clean + noise, 16000)
    return calib, evaluation


def test_prune_build_reports_shrinks_and_is_served_from_the_cache(tmp_path, audio) -> None:
    calib, evaluation = audio
    pipeline = (f"prune{{ratio=0.5 round_to=1 {TRAIN} max_pesq_loss=10 max_si_sdr_loss=100}},"
                f"export-onnx,{VALIDATE}")
    out, cache = tmp_path / "build", tmp_path / "cache"
    args = ["build", TINY_REF, "--target", "cpu", "--pipeline", pipeline, "--calib", calib,
            "--eval", evaluation, "--cache-dir", cache, "--out", out, *LOOSE]
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    cpu = json.loads((out / "report.json").read_text())["targets"]["cpu"]
    pruned = cpu["shrink"]["prune"]
    assert pruned["modified"] and not pruned["refused"]
    assert pruned["params"]["after"] < pruned["params"]["before"]
    assert pruned["macs_per_second"]["reduction"] > 0.4
    assert pruned["fine_tune"]["steps"] == 12
    assert set(pruned["bucket_deltas"]) and all("si_sdr" in b
                                                for b in pruned["bucket_deltas"].values())
    assert [g["after"] for g in pruned["groups"]] == [4, 2]
    markdown = (out / "report.md").read_text()
    assert "Pruning (`prune`): parameters" in markdown and "| input SNR |" in markdown
    assert not list((cache / "checkpoints").glob("*.pt"))  # removed once the pass finished

    again = _cli(*[a if a != out else tmp_path / "again" for a in args])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "again" / "report.json").read_text())["targets"]["cpu"]
    assert {p["name"]: p["cache"] for p in second["passes"]}["prune"] == "hit"
    assert file_sha256(tmp_path / "again" / "cpu" / "model.onnx") == \
        file_sha256(out / "cpu" / "model.onnx")


def test_a_pruning_that_loses_too_much_is_refused(tmp_path, audio) -> None:
    calib, evaluation = audio
    pipeline = (f"prune{{ratio=0.75 round_to=1 steps=0 max_pesq_loss=0 max_si_sdr_loss=0}},"
                f"export-onnx,{VALIDATE}")
    out = tmp_path / "build"
    result = _cli("build", TINY_REF, "--pipeline", pipeline, "--calib", calib, "--eval",
                  evaluation, "--no-cache", "--out", out, *LOOSE)
    assert result.exit_code == 0, result.output
    assert "warning: prune:" in result.output and "the unpruned model goes on" in result.output
    cpu = json.loads((out / "report.json").read_text())["targets"]["cpu"]
    assert cpu["shrink"]["prune"]["refused"] and not cpu["shrink"]["prune"]["modified"]
    assert "**Refused:**" in (out / "report.md").read_text()
    # the shipped artifact is the unpruned model: it matches the baseline
    assert abs(cpu["quality_delta"]["si_sdr"]) < 0.01


def test_distill_build_reports_the_student_per_snr_bucket(tmp_path, audio) -> None:
    calib, evaluation = audio
    pipeline = f"distill{{width=0.5 {TRAIN}}},export-onnx,{VALIDATE}"
    out = tmp_path / "build"
    result = _cli("build", TINY_REF, "--pipeline", pipeline, "--calib", calib, "--eval",
                  evaluation, "--no-cache", "--out", out, *LOOSE)
    assert result.exit_code == 0, result.output
    student = json.loads((out / "report.json").read_text())["targets"]["cpu"]["shrink"]["distill"]
    macs = student["macs_per_second"]
    assert macs["before"] / macs["after"] >= 2
    assert len(student["bucket_deltas"]) >= 2
    assert "Distillation (`distill`)" in (out / "report.md").read_text()


def test_flag_errors_name_the_problem(tmp_path) -> None:
    out = tmp_path / "build"
    twice = _cli("build", "--target", "edge", "--prune", "0.5", "--out", out)
    assert twice.exit_code == 2 and "already has 'prune'" in twice.output
    bad = _cli("build", "--prune", "1.5", "--out", out)
    assert bad.exit_code == 2 and "--prune" in bad.output
    espeak_free = _cli("build", "--pipeline", "prune{ratio=0.5 data=/no/such/folder},export-onnx",
                       "--out", out)
    assert espeak_free.exit_code == 2 and "/no/such/folder" in espeak_free.output
    assert not out.exists() or not any(out.iterdir())


def test_the_stream_of_a_pruned_model_is_proven_against_the_pruned_model(tmp_path) -> None:
    # validate proves model_stream.onnx against the model it was written from (the pruned
    # one), also when the cache serves every pass before validate and prune is only rebuilt
    # from its stored weights
    pipeline = ("fuse-conv-bn,prune{ratio=0.5 steps=0 max_pesq_loss=10 max_si_sdr_loss=100},"
                "stream,export-onnx")
    cache = tmp_path / "cache"
    for repeats in (4, 5):
        out = tmp_path / f"build{repeats}"
        result = _cli("build", "--pipeline", f"{pipeline},validate{{repeats={repeats} "
                      "long_repeats=2 batch=2 memory=false}", "--cache-dir", cache, "--out", out,
                      *LOOSE)
        assert result.exit_code == 0, result.output
        cpu = json.loads((out / "report.json").read_text())["targets"]["cpu"]
        assert cpu["shrink"]["prune"]["modified"]
        assert cpu["streaming"]["equivalence"]["max_abs"] < 1e-4
        # the shipped artifact is the pruned model, measurably different from the original
        assert abs(cpu["quality_delta"]["si_sdr"]) > 1e-3
    # the cheap rewrite before prune runs again so prune's weights have the model they fit
    assert {p["name"]: p["cache"] for p in cpu["passes"]} == {
        "fuse-conv-bn": "miss", "prune": "hit", "stream": "hit", "export-onnx": "hit",
        "validate": "miss"}
