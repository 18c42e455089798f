"""A report's diagnostic sections (the profile, the listening clip) never cost a good build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import secompile.compiler.app.build as build_module
from secompile.compiler.app.build import BuildRequest, run_build

PIPELINE = "fuse-conv-bn,export-onnx,validate{repeats=2 long_repeats=1 batch=2 memory=false}"


def test_failing_diagnostics_are_reported_not_fatal(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("profiler exploded")

    monkeypatch.setattr(build_module, "_profile_entry", broken)
    monkeypatch.setattr(build_module, "_report_clip", broken)
    lines: list[str] = []
    run_build(BuildRequest(model=None, out=tmp_path, pipeline=PIPELINE, ray=None), lines.append)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["cpu"]["profile"] == {"error": "RuntimeError: profiler exploded"}
    assert (tmp_path / "cpu" / "model.onnx").is_file()
    page = (tmp_path / "report.html").read_text()
    assert "Summary" in page and "data:audio/wav" not in page  # no clip, still a page
    assert any("profile not added to the report" in line for line in lines)


def test_profile_only_for_timed_builds(tmp_path: Path) -> None:
    untimed = "fuse-conv-bn,export-onnx,validate{speed=false memory=false}"
    report = run_build(BuildRequest(model=None, out=tmp_path, pipeline=untimed, ray=None))
    assert "profile" not in report["targets"]["cpu"]
    assert (tmp_path / "report.html").is_file()
