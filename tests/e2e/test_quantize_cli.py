"""INT8 builds through the CLI: quality gates (exit 3, JUnit XML), calibration/evaluation
overlap, the never-slower fallback, the edge target's .ort output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from secompile.compiler.app.cli import main
from secompile.models.registry import DEMO_DIR

INT8 = ("fuse-conv-bn,export-onnx,quantize{min_speedup=0.0 timing_repeats=3},"
        "validate{repeats=4 long_repeats=2 batch=2 memory=false}")


def _cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _quiet_calibration(folder: Path) -> Path:
    """Calibration audio 40 dB quieter than the evaluation audio: activation ranges that do not
    cover it, the kind of mismatch the gates exist to catch."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        sf.write(folder / f"quiet_{index}.wav", 0.001 * rng.standard_normal(48000), 16000,
                 subtype="PCM_16")
    return folder


def test_a_failed_quality_gate_exits_3_ships_nothing_and_writes_junit(tmp_path: Path) -> None:
    out = tmp_path / "build"
    result = _cli("build", "--pipeline", INT8, "--no-cache", "--out", out, "--calib",
                  _quiet_calibration(tmp_path / "quiet"), "--max-si-sdr-drop", "0.01")
    assert result.exit_code == 3, result.output
    assert "quality gate failed" in result.output and "si_sdr" in result.output
    assert "SNR bucket" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["gates.xml", "rejected-report.json"]
    suite = ElementTree.parse(out / "gates.xml").getroot()
    failures = [case.get("name") for case in suite if case.find("failure") is not None]
    assert "si_sdr[all]" in failures
    assert {case.get("name") for case in suite} >= {"si_sdr[all]", "pesq[all]"}
    rejected = json.loads((out / "rejected-report.json").read_text())
    assert any(c["status"] == "failed" for c in rejected["gates"]["checks"]["cpu"])


def test_int8_build_passes_default_gates_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "build"
    result = _cli("build", "--pipeline", INT8, "--no-cache", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["gates"]["limits"] == {"si_sdr": 0.2, "pesq": 0.05}
    checks = report["gates"]["checks"]["cpu"]
    assert {c["status"] for c in checks} <= {"passed", "skipped"}
    assert ElementTree.parse(out / "gates.xml").getroot().get("failures") == "0"
    quantize = next(p for p in report["targets"]["cpu"]["passes"] if p["name"] == "quantize")
    assert quantize["metrics"]["shipped"] == "int8"  # min_speedup=0: size first
    assert quantize["metrics"]["calibration"]["clips"] >= 4
    assert report["settings"]["calib"].endswith("calib")  # the project's own calibration set


def test_calibration_that_overlaps_evaluation_is_refused(tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(DEMO_DIR / "noisy" / "demo.wav", calib / "renamed.wav")  # same bytes
    out = tmp_path / "build"
    result = _cli("build", "--pipeline", INT8, "--no-cache", "--out", out, "--calib", calib)
    assert result.exit_code == 2, result.output
    assert "overlap" in result.output and "renamed.wav" in result.output
    assert not (out / "report.json").exists() and not (out / "cpu").exists()
