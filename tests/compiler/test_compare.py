"""secompile compare: regression gates, exit codes, JUnit XML and Markdown output."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from secompile.compiler.app.cli import main
from secompile.compiler.core.errors import ConfigError
from secompile.compiler.reporting.compare import compare_reports, parse_tolerances

REPORT = {
    "targets": {
        "cpu": {
            "speedup": 3.0, "speedup_10s": 2.3, "throughput_speedup": 1.5,
            "memory_reduction": 2.7, "size_bytes": {"baseline": 284000, "artifact": 300000},
            "quality": {"artifact": {"si_sdr": 15.3, "pesq": 2.65, "stoi": 0.83}},
        }
    }
}


def _write(tmp_path: Path, name: str, report: dict) -> Path:
    path = tmp_path / name / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    return path


def _doctored(**changes) -> dict:
    report = copy.deepcopy(REPORT)
    cpu = report["targets"]["cpu"]
    for key, value in changes.items():
        if key in ("si_sdr", "pesq", "stoi"):
            cpu["quality"]["artifact"][key] = value
        elif key == "size":
            cpu["size_bytes"]["artifact"] = value
        else:
            cpu[key] = value
    return report


def test_identical_reports_exit_0(tmp_path: Path) -> None:
    path = _write(tmp_path, "a", REPORT)
    result = CliRunner().invoke(main, ["compare", str(path), str(path)])
    assert result.exit_code == 0, result.output
    assert "REGRESSED" not in result.output and "| cpu | speedup | 3 | 3 |" in result.output


@pytest.mark.parametrize("change, gate", [
    ({"speedup": 2.0}, "speedup"),           # 33% slower than the baseline's ratio
    ({"size": 400000}, "size_bytes"),        # a third larger
    ({"si_sdr": 15.0}, "si_sdr"),            # 0.3 dB of quality lost
    ({"pesq": 2.5}, "pesq"),
])
def test_doctored_baseline_exits_3_naming_the_metric(change, gate, tmp_path: Path) -> None:
    new = _write(tmp_path, "new", _doctored(**change))
    base = _write(tmp_path, "base", REPORT)
    junit, summary = tmp_path / "gates.xml", tmp_path / "summary.md"
    result = CliRunner().invoke(main, ["compare", str(new), str(base), "--junit", str(junit),
                                       "--markdown", str(summary)])
    assert result.exit_code == 3, result.output
    assert f"regression: cpu.{gate}" in result.output
    suite = ElementTree.parse(junit).getroot()
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == [gate] and suite.get("failures") == "1"
    assert summary.read_text().startswith("## secompile compare: 1 regression(s)")


def test_improvements_and_small_noise_pass() -> None:
    better = _doctored(speedup=3.6, si_sdr=15.35, size=290000)
    noise = _doctored(speedup=2.8, si_sdr=15.25)  # within 15% and 0.1 dB
    assert not any(f.failed for f in compare_reports(better, REPORT))
    assert not any(f.failed for f in compare_reports(noise, REPORT))


def test_missing_target_or_metric_is_a_failure() -> None:
    findings = compare_reports({"targets": {}}, REPORT)
    assert all(f.status == "missing" for f in findings)


def test_tolerances_override_and_validate(tmp_path: Path) -> None:
    assert parse_tolerances(("speedup=0.5", "si_sdr=0.5")) == {"speedup": 0.5, "si_sdr": 0.5}
    findings = compare_reports(_doctored(speedup=2.0), REPORT, {"speedup": 0.5})
    assert not any(f.failed for f in findings)
    for bad in ("speed=0.1", "speedup=fast", "speedup=-1"):
        with pytest.raises(ConfigError):
            parse_tolerances((bad,))
    path = _write(tmp_path, "a", REPORT)
    result = CliRunner().invoke(main, ["compare", str(path), str(path), "--tolerance", "x=1"])
    assert result.exit_code == 2 and "unknown tolerance 'x'" in result.output


def test_unreadable_reports_exit_2(tmp_path: Path) -> None:
    good = _write(tmp_path, "a", REPORT)
    (tmp_path / "bad.json").write_text("{}")
    for other, message in ((tmp_path / "none.json", "report not found"),
                           (tmp_path / "bad.json", "not a secompile report.json")):
        result = CliRunner().invoke(main, ["compare", str(good), str(other)])
        assert result.exit_code == 2 and message in result.output
