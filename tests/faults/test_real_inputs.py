"""Real recordings nobody here tuned for: every shared calibration folder (real recordings of
mixed lengths) calibrates INT8, and the NSNet2 build a new user tried first ships INT8 with its
gates passed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secompile.calibration.datasets import AudioFolder
from secompile.compiler.core.context import PassContext
from secompile.passes.export_onnx import ExportOnnx
from secompile.passes.quantize import Quantize, QuantizeConfig
from secompile.targets import get_target
from tests.conftest import noise_audio, tiny_artifact
from tests.faults.harness import SHARED_AUDIO, SHARED_MODELS, Observation, Probe, secompile

CALIBRATION_FOLDERS = {
    "blind": SHARED_AUDIO / "blind",
    "snr_sweep": SHARED_AUDIO / "snr_sweep",
    "dns3-noisy": SHARED_AUDIO / "dns3" / "noisy",
    "vbdemand-noisy": SHARED_AUDIO / "vbdemand" / "noisy",
}


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")


def _calibrates_on(folder: Path) -> Probe:
    def run(tmp: Path) -> Observation:
        _need(folder)
        tiny = tiny_artifact()
        calibration = AudioFolder.scan(folder, 16000)
        lengths = sorted({len(a) for a in calibration.load()})

        def ctx(index: int) -> PassContext:
            return PassContext(target=get_target("cpu"), workdir=tmp / "work", baseline=tiny,
                               parity_audio=noise_audio(), threads=1,
                               calibration=calibration).with_pass_dir(index, "probe")

        onnx_art = ExportOnnx().run(tiny, ctx(0)).artifact
        config = QuantizeConfig(method="percentile", min_speedup=0.0, min_fidelity_db=0.0,
                                timing_repeats=3)  # percentile: the histogram calibrator
        result = Quantize(config).run(onnx_art, ctx(1))
        calibrated = result.metrics.get("calibration", {})
        seen = (f"{len(lengths)} file lengths {lengths[0] / 16000:.1f}-{lengths[-1] / 16000:.1f}"
                f" s -> {calibrated.get('clips')} clips, shipped {result.metrics.get('shipped')}")
        return Observation(result.metrics.get("shipped") == "int8", seen)

    return Probe("real input", f"calibrate on {folder.parent.name}/{folder.name}",
                 "percentile calibration over mixed lengths, INT8 plan built", run)


def _nsnet2_blind(tmp: Path) -> Observation:
    weights = SHARED_MODELS / "nsnet2" / "nsnet2-16k.onnx"
    _need(weights)
    out = tmp / "OUT"
    done = secompile(["build", "nsnet2", "--weights", weights, "--target", "cpu",
                      "--calib", SHARED_AUDIO / "blind", "--eval", SHARED_AUDIO / "vbdemand",
                      "--out", out, "--no-cache"])
    if done.exit_code != 0:
        return Observation(False, done.summary())
    report = json.loads((out / "report.json").read_text())
    cpu = report["targets"]["cpu"]
    checks = report["gates"]["checks"]["cpu"]
    passed = all(c["status"] == "passed" for c in checks)
    shipped = next(p for p in cpu["passes"] if p["name"] == "quantize")["metrics"]["shipped"]
    seen = (f"exit 0: shipped {shipped}, {sum(c['status'] == 'passed' for c in checks)}/"
            f"{len(checks)} gates passed, size {cpu['size_reduction']:.2f}x, "
            f"dSI-SDR {cpu['quality_delta']['si_sdr']:+.3f} dB")
    return Observation(shipped == "int8" and passed, seen)


PROBES = [
    *(_calibrates_on(folder) for folder in CALIBRATION_FOLDERS.values()),
    Probe("real input", "NSNet2 build calibrated on blind/, evaluated on vbdemand/",
          "exit 0, INT8 shipped, every gate passed", _nsnet2_blind),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed
