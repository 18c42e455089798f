"""``secompile profile``: per-layer and per-op time shares, FLOP counts checked against
``FlopCounterMode`` and a closed form, the machine peak cache, the Amdahl estimate, the CLI."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from secompile.compiler.analysis.costs import check_flops, count_layer_costs
from secompile.compiler.analysis.profile import (
    MachinePeak,
    ProfileResult,
    machine_peak,
    profile_audio,
    profile_onnx,
    profile_torch,
)
from secompile.compiler.app.cli import main
from secompile.models.registry import load_model
from tests.conftest import SHARED_DATA as SHARED

GTCRN_WEIGHTS = SHARED / "models" / "gtcrn" / "gtcrn_vctk.pt"
NSNET2_WEIGHTS = SHARED / "models" / "nsnet2" / "nsnet2-16k.onnx"
WEIGHTS = {"gtcrn": GTCRN_WEIGHTS, "nsnet2": NSNET2_WEIGHTS}
requires_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                     reason=f"shared data not found at {SHARED}")


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "machine.json"


@pytest.fixture(scope="module")
def peak(cache_file: Path) -> MachinePeak:
    return machine_peak(cache_file)


@pytest.fixture(scope="module")
def profiles(peak: MachinePeak) -> dict[str, ProfileResult]:
    """GTCRN and NSNet2 profiled once each on one second of noise, 1 vs 2 threads."""
    wav = profile_audio(16000, 1.0)
    return {name: profile_torch(load_model(name, path).module, wav, peak, name=name, threads=2)
            for name, path in WEIGHTS.items()}


def test_machine_peak_is_measured_once_then_cached(peak: MachinePeak, cache_file: Path) -> None:
    assert peak.gemm_gflops > 0.5 and peak.bandwidth_gbs > 0.1
    again = machine_peak(cache_file)
    assert again.cached and again.gemm_gflops == peak.gemm_gflops
    assert json.loads(cache_file.read_text())["key"]["cpu"] == peak.cpu


class Mixed(nn.Module):
    """Every layer kind the counter has a formula for, including the awkward options."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=2, dilation=2, groups=2)
        self.deconv = nn.ConvTranspose1d(8, 6, 4, stride=2, groups=2)
        self.conv2d = nn.Conv2d(1, 3, (3, 5), stride=(1, 2), padding=(1, 0))
        self.gru = nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.lstm = nn.LSTM(10, 4)
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.deconv(self.conv(x))  # [2, 6, 42]
        h = h + self.conv2d(h.unsqueeze(1)).mean(1).mean(-1, keepdim=True)
        h, _ = self.gru(h.transpose(1, 2))  # [B, T, 10]
        h, _ = self.lstm(h.transpose(0, 1))  # [T, B, 4]
        return self.act(self.norm(self.fc(h)))


def test_layer_costs_match_flop_counter_on_every_layer_kind() -> None:
    module, x = Mixed().eval(), torch.randn(2, 4, 20)
    costs = count_layer_costs(module, x)
    check = check_flops(module, x, costs)
    # on CPU an LSTM runs as one oneDNN kernel FlopCounterMode cannot see: left out, named
    assert check.excluded == ("lstm",) and check.excluded_flops == costs["lstm"].matmul_flops
    assert check.counted_matmul == check.reference and check.relative_difference == 0.0
    assert "lstm" in check.note and not check.uncounted
    lstm_macs = 42 * 2 * 4 * 4 * (10 + 4)  # steps x batch x gates x hidden x (input + hidden)
    assert costs["lstm"].macs == lstm_macs
    assert all(c.counted for c in costs.values())
    assert costs["norm"].other_flops > 0 and costs["norm"].matmul_flops == 0
    assert costs["fc"].bytes == 4 * (4 * 3 + 3 + 42 * 2 * 4 + 42 * 2 * 3)  # params, in, out


@requires_shared
@pytest.mark.parametrize("name", ["gtcrn", "nsnet2"])
def test_top_layers_pass_half_of_the_time(profiles: dict[str, ProfileResult], name: str) -> None:
    result = profiles[name]
    head = result.bottlenecks()
    assert head[-1].cumulative > 0.5 and len(head) <= 20
    assert math.isclose(sum(r.share for r in result.rows), 1.0, abs_tol=1e-9)
    assert math.isclose(sum(k.share for k in result.by_kind), 1.0, abs_tol=1e-9)
    assert [r.time_ms for r in result.rows] == sorted((r.time_ms for r in result.rows),
                                                      reverse=True)
    # the bottlenecks are layers with counted work and a roofline position
    assert any(r.kind == "GRU" and r.flops and r.attained is not None for r in head)
    table = result.render_table(top=len(head))
    assert all(r.name in table for r in head)
    assert json.loads(json.dumps(result.to_dict()))["bottlenecks"] == [r.name for r in head]


@requires_shared
@pytest.mark.parametrize("name", ["gtcrn", "nsnet2"])
def test_flops_agree_with_flop_counter(profiles: dict[str, ProfileResult], name: str) -> None:
    check = profiles[name].flops
    assert check.reference > 1e7
    assert abs(check.relative_difference) < 0.05
    assert check.counted_total > check.counted_matmul


@requires_shared
def test_nsnet2_flops_match_the_closed_form(profiles: dict[str, ProfileResult]) -> None:
    frames = 16000 // 160 + 1  # centred STFT
    macs = frames * (161 * 400 + 2 * 3 * 400 * (400 + 400) + 400 * 600 + 600 * 600 + 600 * 161)
    assert profiles["nsnet2"].flops.counted_matmul == 2 * macs


@requires_shared
@pytest.mark.parametrize("name", ["gtcrn", "nsnet2"])
def test_amdahl_fraction_is_a_fraction(profiles: dict[str, ProfileResult], name: str) -> None:
    amdahl = profiles[name].amdahl
    assert amdahl.threads == 2 and amdahl.t1_ms > 0 and amdahl.tn_ms > 0
    assert 0.0 <= amdahl.serial_fraction <= 1.0
    assert 1.0 <= amdahl.predicted_speedup(4) <= amdahl.predicted_speedup(8) <= 8.0


@requires_shared
def test_profiling_leaves_no_hooks_behind() -> None:
    module = load_model("gtcrn", GTCRN_WEIGHTS).module
    wav = profile_audio(16000, 0.25)
    peak = MachinePeak(50.0, 10.0, "test", "now")
    profile_torch(module, wav, peak, threads=1, runs=1, repeats=2)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


@requires_shared
def test_onnx_profile_lists_op_types(tmp_path: Path, peak: MachinePeak) -> None:
    module = load_model("gtcrn", GTCRN_WEIGHTS).module.with_stft_impl("conv")
    path = tmp_path / "gtcrn.onnx"
    axes = {0: "batch", 1: "samples"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 16000) * 0.1,), str(path), dynamo=False,
                          opset_version=17, input_names=["noisy"], output_names=["enhanced"],
                          dynamic_axes={"noisy": axes, "enhanced": axes})
    wav = profile_audio(16000, 1.0)
    result = profile_onnx(path, wav, peak, threads=2)
    kinds = {k.kind: k for k in result.by_kind}
    assert {"GRU", "Conv", "ConvTranspose"} <= set(kinds)
    assert math.isclose(sum(k.share for k in result.by_kind), 1.0, abs_tol=1e-9)
    assert math.isclose(sum(r.share for r in result.rows), 1.0, abs_tol=1e-9)
    assert result.bottlenecks()[-1].cumulative > 0.5
    assert 0.0 <= result.amdahl.serial_fraction <= 1.0
    # FLOPs counted from ORT's graph agree with FlopCounterMode on the same (conv-STFT) model
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(torch.from_numpy(wav))
    matmul = sum(kinds[k].flops for k in ("GRU", "Conv", "ConvTranspose", "MatMul"))
    assert abs(matmul / counter.get_total_flops() - 1) < 0.05


@requires_shared
def test_cli_profile_prints_the_table_and_writes_json(tmp_path: Path, cache_file: Path,
                                                       peak: MachinePeak,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "secompile").mkdir(parents=True)
    shutil.copy(cache_file, tmp_path / "xdg" / "secompile" / "machine.json")  # skip the bench
    out = tmp_path / "profile.json"
    result = CliRunner().invoke(main, ["profile", "gtcrn", "--weights", str(GTCRN_WEIGHTS),
                                       "--top", "5", "--json", str(out), "--seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert "profile: gtcrn (torch, per layer)" in result.output
    assert "FlopCounterMode" in result.output and "serial fraction" in result.output
    data = json.loads(out.read_text())
    assert data["audio_seconds"] == 0.5 and data["bottlenecks"]


@pytest.mark.parametrize("ref", ["no-such-model", "missing.onnx"])
def test_cli_profile_bad_reference_exits_2(tmp_path: Path, ref: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(main, ["profile", str(tmp_path / ref) if ".onnx" in ref else ref])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not (tmp_path / "xdg").exists()  # rejected before the machine benchmark


def test_control_flow_nodes_count_only_their_own_time() -> None:
    from secompile.compiler.analysis.profile import _exclusive_us

    scan = {"ts": 100, "dur": 50}
    body = [{"ts": 105, "dur": 10}, {"ts": 120, "dur": 15}]
    outside = {"ts": 160, "dur": 30}
    kernels = [scan, *body, outside]
    assert _exclusive_us(scan, "Scan", kernels) == 25.0
    assert _exclusive_us(scan, "Conv", kernels) == 50.0  # not control flow: as reported
    assert _exclusive_us(outside, "MatMul", kernels) == 30.0
