"""End to end through the CLI: a real GTCRN build, the cache, enhance, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from secompile.compiler.app.cli import main
from secompile.compiler.core.artifact import file_sha256
from tests.conftest import GTCRN_DIR, TINY_REF, VBDEMAND, requires_shared

FAST = "fuse-conv-bn,export-onnx,validate{repeats=4 long_repeats=2 batch=2}"
VCTK = GTCRN_DIR / "gtcrn_vctk.pt"


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    """Three real VoiceBank-DEMAND pairs (copied into tmp, never into the repo)."""
    if not VBDEMAND.is_dir():
        pytest.skip(f"shared data not found at {VBDEMAND}")
    root = tmp_path / "eval"
    for sub in ("clean", "noisy"):
        (root / sub).mkdir(parents=True)
        for path in sorted((VBDEMAND / sub).glob("*.wav"))[:3]:
            shutil.copy(path, root / sub / path.name)
    return root


@requires_shared
def test_gtcrn_build_report_manifest_cache_and_enhance(tmp_path: Path, eval_dir: Path) -> None:
    out, cache = tmp_path / "build", tmp_path / "cache"
    args = ["build", "gtcrn", "--weights", VCTK, "--target", "cpu", "--eval", eval_dir,
            "--pipeline", FAST, "--cache-dir", cache, "--out", out]
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    cpu = report["targets"]["cpu"]
    assert report["baseline"]["latency_ms"]["p50"] > 0
    for key in ("speedup", "size_reduction", "throughput_speedup", "memory_reduction"):
        assert cpu[key] > 0, key
    assert abs(cpu["quality_delta"]["si_sdr"]) <= 0.01
    assert abs(cpu["quality_delta"]["pesq"]) <= 0.01
    assert abs(cpu["quality_delta"]["stoi"]) <= 0.001
    assert [p["name"] for p in cpu["passes"]] == ["fuse-conv-bn", "export-onnx", "validate"]
    assert all({"name", "seconds", "modified", "metrics"} <= set(p) for p in cpu["passes"])
    manifest = json.loads((out / "cpu" / "manifest.json").read_text())
    assert manifest["sha256"] == file_sha256(out / "cpu" / "model.onnx")
    assert manifest["model"]["weights_sha256"] == file_sha256(VCTK)
    assert manifest["pipeline"] == cpu["pipeline"]
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert (out / "report.md").read_text().startswith("# secompile report: gtcrn")

    second = _cli(*args[:-1], tmp_path / "again")
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "again" / "report.json").read_text())["targets"]["cpu"]
    assert again["cache_hits"] == ["fuse-conv-bn", "export-onnx", "validate"]
    assert (tmp_path / "again/cpu/model.onnx").read_bytes() == (out / "cpu/model.onnx").read_bytes()
    gates = _cli("compare", tmp_path / "again" / "report.json", out / "report.json")
    assert gates.exit_code == 0, gates.output

    noisy = min((eval_dir / "noisy").glob("*.wav"))
    enhanced = _cli("enhance", out / "cpu" / "model.onnx", noisy, "-o", tmp_path / "enh")
    assert enhanced.exit_code == 0, enhanced.output
    assert sf.info(tmp_path / "enh" / noisy.name).frames == sf.info(noisy).frames


def test_user_factory_model_builds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli("build", TINY_REF, "--pipeline", FAST, "--no-cache", "--out", out,
                  "--calib", _wav_folder(tmp_path / "calib"))
    assert result.exit_code == 0, result.output
    assert (out / "cpu" / "model.onnx").is_file()


def _wav_folder(folder: Path, channels: int = 1, samples: int = 16000, rate: int = 16000,
                data: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    audio = data if data is not None else 0.1 * np.random.default_rng(0).standard_normal(
        (samples, channels))
    sf.write(folder / "a.wav", audio, rate, subtype="FLOAT" if data is not None else "PCM_16")
    return folder


def _paired(root: Path, **kwargs) -> Path:
    _wav_folder(root / "clean")
    _wav_folder(root / "noisy", **kwargs)
    return root


def _bad_checkpoints(tmp: Path) -> dict[str, Path]:
    real = VCTK.read_bytes() if VCTK.is_file() else b""
    (tmp / "corrupt.pt").write_bytes(b"not a checkpoint at all" * 10)
    (tmp / "truncated.pt").write_bytes(real[: len(real) // 2])
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp / "wrong.pt")
    torch.save({"weights": _Evil()}, tmp / "evil.pt")
    return {"corrupt": tmp / "corrupt.pt", "truncated": tmp / "truncated.pt",
            "wrong": tmp / "wrong.pt", "evil": tmp / "evil.pt", "missing": tmp / "nope.pt"}


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/secompile-evil-marker"),))


BAD_CASES = {
    "missing checkpoint": (["gtcrn", "--weights", "{missing}"], "checkpoint not found"),
    "corrupt checkpoint": (["gtcrn", "--weights", "{corrupt}"], "corrupt or truncated"),
    "truncated checkpoint": (["gtcrn", "--weights", "{truncated}"], "corrupt or truncated"),
    "wrong architecture": (["gtcrn", "--weights", "{wrong}"], "does not match architecture"),
    "pickle with code": (["gtcrn", "--weights", "{evil}"], "refusing checkpoint"),
    "unknown pass": (["gtcrn", "--weights", "{vctk}", "--pipeline", "fuse-conv-bn,warp"],
                     "unknown pass 'warp'"),
    "bad pass option": (["gtcrn", "--weights", "{vctk}", "--pipeline", "export-onnx{{opset=3}}"],
                        "opset must be between 13 and 21"),
    "wrong pass order": (["gtcrn", "--weights", "{vctk}", "--pipeline",
                          "export-onnx,fuse-conv-bn"], "wrong pass order"),
    "unknown target": (["gtcrn", "--weights", "{vctk}", "--target", "quantum"],
                       "unknown target 'quantum'"),
    "unknown model": (["resnet"], "unknown model 'resnet'"),
    "unreadable wav": (["gtcrn", "--weights", "{vctk}", "--eval", "{unreadable}"],
                       "cannot read audio file"),
    "stereo wav": (["gtcrn", "--weights", "{vctk}", "--eval", "{stereo}"], "2 channels"),
    "empty wav": (["gtcrn", "--weights", "{vctk}", "--eval", "{empty}"], "is empty"),
    "nan wav": (["gtcrn", "--weights", "{vctk}", "--eval", "{nan}"], "NaN"),
    "wrong rate": (["gtcrn", "--weights", "{vctk}", "--eval", "{rate}"], "8000 Hz"),
}


@requires_shared
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_with_one_line_and_no_artifact(case: str, tmp_path: Path) -> None:
    paths = {k: str(v) for k, v in _bad_checkpoints(tmp_path).items()}
    paths["vctk"] = str(VCTK)
    paths["stereo"] = str(_paired(tmp_path / "stereo", channels=2))
    paths["empty"] = str(_paired(tmp_path / "empty", samples=0))
    paths["rate"] = str(_paired(tmp_path / "rate", rate=8000))
    paths["nan"] = str(_paired(tmp_path / "nan", data=np.full(1600, np.nan, np.float32)))
    unreadable = _paired(tmp_path / "unreadable")
    (unreadable / "noisy" / "a.wav").write_bytes(b"RIFF garbage")
    paths["unreadable"] = str(unreadable)
    args, message = BAD_CASES[case]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["build", *[a.format(**paths) for a in args], "--no-cache", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]
    assert not any(out.rglob("*.onnx")) and not (out / "report.json").exists()
    assert not Path("/tmp/secompile-evil-marker").exists(), "pickled code must never run"


@requires_shared
def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _cli("build", "gtcrn", "--weights", VCTK, "--out", blocker / "sub")
    assert result.exit_code == 2
    assert "is not writable" in result.output and len(result.output.strip().splitlines()) == 1


def test_listing_commands() -> None:
    passes = _cli("passes")
    assert passes.exit_code == 0
    assert all(name in passes.output for name in ("fuse-conv-bn", "export-onnx", "validate"))
    targets = _cli("targets")
    assert "cpu" in targets.output and "available" in targets.output


def test_default_build_is_the_readme_main_job(default_cpu_build: tuple[Path, Path]) -> None:
    """``secompile build --out DIR``: the shipped model, its demo pair, the default pipeline
    (built once per session, from an empty cache, by the ``default_cpu_build`` fixture)."""
    out = default_cpu_build[0]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "default"
    cpu = report["targets"]["cpu"]
    assert [p["name"] for p in cpu["passes"]] == [
        "fuse-conv-bn", "merge-grouped-gru", "export-onnx", "quantize", "validate"]
    assert (out / "gates.xml").is_file()
    assert cpu["quality"]["eval_set"].endswith("demo_audio")
    assert cpu["quality"]["artifact"]["si_sdr"] > cpu["quality"]["noisy"]["si_sdr"] + 2
    assert abs(cpu["quality_delta"]["si_sdr"]) <= 0.01


def test_enhance_refuses_audio_shorter_than_a_frame(tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = _cli("build", TINY_REF, "--pipeline", "fuse-conv-bn,export-onnx", "--no-cache",
                 "--out", out, "--calib", _wav_folder(tmp_path / "calib"))
    assert built.exit_code == 0, built.output
    short = _wav_folder(tmp_path / "short", samples=40) / "a.wav"
    result = _cli("enhance", out, short, "-o", tmp_path / "enh")
    assert result.exit_code == 2
    assert "too short: 40 samples, the model needs at least 65" in result.output
    assert not (tmp_path / "enh" / "a.wav").exists()
    ok = _cli("enhance", out, _wav_folder(tmp_path / "ok") / "a.wav", "-o", tmp_path / "enh")
    assert ok.exit_code == 0 and (tmp_path / "enh" / "a.wav").is_file()


FACTORY = '''
import torch


class Gain(torch.nn.Module):
    sample_rate = 16000

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(1)

    def forward(self, wav):
        return self.bn(self.conv(wav.unsqueeze(1))).squeeze(1) * SCALE


def make():
    torch.manual_seed(0)
    return Gain().eval()
'''


def test_user_model_with_cache_relative_path_and_code_change(tmp_path: Path, monkeypatch) -> None:
    """A FILE.py:factory model builds with the cache on, from a relative path (the memory
    probe reloads it from another folder), and editing its code invalidates the cache."""
    (tmp_path / "mine.py").write_text(FACTORY.replace("SCALE", "1.0"))
    monkeypatch.chdir(tmp_path)
    calib = _wav_folder(tmp_path / "calib")
    args = ["build", "mine.py:make", "--calib", calib, "--cache-dir", tmp_path / "cache",
            "--pipeline", FAST, "--target", "cpu", "--target", "cpu"]
    first = _cli(*args, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    again = json.loads((tmp_path / "a" / "report.json").read_text())
    assert list(again["targets"]) == ["cpu"], "a repeated --target builds once"
    second = _cli(*args, "--out", tmp_path / "b")
    assert "cache hits: fuse-conv-bn, merge-grouped-gru" not in second.output
    assert "cache hits: fuse-conv-bn, export-onnx, validate" in second.output
    (tmp_path / "mine.py").write_text(FACTORY.replace("SCALE", "0.5"))
    third = _cli(*args, "--out", tmp_path / "c")
    assert third.exit_code == 0 and "cache hits" not in third.output


def test_resample_flag_converts_eval_audio_of_another_rate(tmp_path: Path) -> None:
    pairs = _paired(tmp_path / "eval8k", rate=8000, samples=8000)  # the same 1 s at 8 kHz
    refused = _cli("build", TINY_REF, "--eval", pairs, "--no-cache", "--out", tmp_path / "a",
                   "--pipeline", FAST)
    assert refused.exit_code == 2 and "pass --resample to convert it" in refused.output
    done = _cli("build", TINY_REF, "--eval", pairs, "--resample", "--no-cache",
                "--out", tmp_path / "b", "--pipeline", FAST)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["targets"]["cpu"]["quality"]["files"] == 1


@requires_shared
def test_nsnet2_from_the_official_onnx_builds(tmp_path: Path, eval_dir: Path) -> None:
    """NSNet2's log-power features make two correct float32 STFTs differ by ~1e-4 in quiet
    bins; the parity verifier settles it against a float64 run of the torch model."""
    weights = GTCRN_DIR.parent / "nsnet2" / "nsnet2-16k.onnx"
    out = tmp_path / "out"
    result = _cli("build", "nsnet2", "--weights", weights, "--eval", eval_dir, "--pipeline",
                  FAST, "--no-cache", "--out", out)
    assert result.exit_code == 0, result.output
    cpu = json.loads((out / "report.json").read_text())["targets"]["cpu"]
    export = next(p for p in cpu["passes"] if p["name"] == "export-onnx")
    assert export["parity_max_abs"] > export["parity_tolerance"]  # p232_010's quiet bins
    assert export["parity_vs_float64"]["output"] <= export["parity_vs_float64"]["input"]
    assert abs(cpu["quality_delta"]["si_sdr"]) <= 0.01
    assert cpu["quality"]["artifact"]["si_sdr"] > cpu["quality"]["noisy"]["si_sdr"] + 3
