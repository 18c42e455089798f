"""Fault probes: a 10-minute recording through ``secompile enhance`` and ``validate``.

Run whole, the default model's ONNX Runtime session peaks at 2.1 GB on 5 minutes of audio (4 GB
projected for 10) and the ``pesq`` package crashes its process beyond about 4 minutes; long
audio is enhanced in chunks with context (``compiler.runtime.chunking``) and scored in
segments (``calibration.metrics``). The probes measure the peak RSS of a fresh ``secompile``
process (``os.wait4``'s ``ru_maxrss``) on 1 and on 10 minutes of real recordings, looped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from secompile.calibration.audio import read_audio
from secompile.calibration.metrics import si_sdr
from secompile.compiler.runtime.chunking import ChunkPlan, run_chunked
from secompile.compiler.runtime.runners import OrtRunner
from tests.faults._artifact import built_artifact
from tests.faults.harness import SHARED_AUDIO, CliResult, Observation, Probe

RATE = 16000
# the enhance probe: the 10-minute run's peak may exceed the 1-minute run's by this much
ENHANCE_SLACK_MB = 40.0
# validate holds the evaluation audio itself (noisy, clean and both outputs as float32: 16 B a
# sample) and the metrics make float64 working copies of a pair (up to 48 B): its peak may grow
# by that, never by the model's activations (whole-file ONNX Runtime: ~440 B a sample, 2.1 GB
# at 5 min). Measured growth from 1 to 10 min: 156-366 MiB (glibc's heap varies run to run).
VALIDATE_BYTES_PER_SAMPLE = 64
VALIDATE = "export-onnx,validate{speed=false memory=false streaming=false}"


def _recordings() -> list[np.ndarray]:
    """Real noisy recordings (DNS3 and blind), float32 16 kHz."""
    paths = sorted((SHARED_AUDIO / "dns3" / "noisy").glob("*.wav")) + sorted(
        (SHARED_AUDIO / "blind").glob("*.wav"))
    if not paths:
        pytest.skip(f"shared audio not found at {SHARED_AUDIO}")
    return [read_audio(p, RATE) for p in paths]


def _looped(audio: list[np.ndarray], seconds: float) -> np.ndarray:
    joined = np.concatenate(audio)
    return np.tile(joined, -(-int(seconds * RATE) // len(joined)))[: int(seconds * RATE)]


def _peak_rss(args: list[str | Path]) -> tuple[CliResult, float]:
    """Run ``secompile ARGS`` in a fresh process: its result and peak RSS in MiB
    (``os.wait4`` gives the rusage of exactly that child)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, "-m", "secompile", *map(str, args)],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return CliResult(process.returncode, out.read(), err.read()), usage.ru_maxrss / 1024


def probe_enhance_memory(tmp: Path) -> Observation:
    audio = _recordings()
    peaks, runs = {}, {}
    for minutes in (1, 10):
        path = tmp / f"long_{minutes}min.wav"
        sf.write(path, _looped(audio, 60 * minutes), RATE, subtype="PCM_16")
        result, peak = _peak_rss(["enhance", built_artifact(), path, "-o", tmp / "out"])
        if result.exit_code != 0:
            return Observation(False, f"{minutes} min: {result.summary()}")
        peaks[minutes], runs[minutes] = peak, result
        written = sf.info(str(tmp / "out" / path.name))
        if written.frames != 60 * minutes * RATE:
            return Observation(False, f"{minutes} min: wrote {written.frames} samples")
    ok = peaks[10] <= peaks[1] + ENHANCE_SLACK_MB
    return Observation(ok, f"peak RSS 1 min {peaks[1]:.0f} MiB, 10 min {peaks[10]:.0f} MiB "
                           f"(whole-file ONNX Runtime: 2.1 GB at 5 min)")


def probe_validate_memory(tmp: Path) -> Observation:
    _recordings()  # skips without the shared audio
    clean_paths = sorted((SHARED_AUDIO / "dns3" / "clean").glob("*.wav"))
    clean = [read_audio(p, RATE) for p in clean_paths]
    noisy = [read_audio(SHARED_AUDIO / "dns3" / "noisy" / p.name, RATE) for p in clean_paths]
    peaks, scored = {}, {}
    for minutes in (1, 10):
        root = tmp / f"eval_{minutes}"
        for side, wavs in (("clean", clean), ("noisy", noisy)):
            (root / side).mkdir(parents=True)
            sf.write(root / side / "long.wav", _looped(wavs, 60 * minutes), RATE,
                     subtype="PCM_16")
        result, peak = _peak_rss(["build", "--pipeline", VALIDATE, "--no-cache",
                                        "--no-ray", "--quiet", "--eval", root,
                                        "--out", tmp / f"out_{minutes}"])
        if result.exit_code != 0:
            return Observation(False, f"{minutes} min: {result.summary()}")
        report = json.loads((tmp / f"out_{minutes}" / "report.json").read_text())
        quality = report["targets"]["cpu"]["quality"]["artifact"]
        if not all(np.isfinite(list(quality.values()))):
            return Observation(False, f"{minutes} min: metrics {quality}")
        peaks[minutes], scored[minutes] = peak, quality
    audio_growth = VALIDATE_BYTES_PER_SAMPLE * 9 * 60 * RATE / 2**20
    ok = peaks[10] <= peaks[1] + audio_growth
    return Observation(ok, f"peak RSS 1 min {peaks[1]:.0f} MiB, 10 min {peaks[10]:.0f} MiB "
                           f"(allowed: + {audio_growth:.0f} MiB for the audio held); 10 min "
                           f"SI-SDR {scored[10]['si_sdr']:.2f} dB, PESQ {scored[10]['pesq']:.2f}")


def probe_chunked_equals_whole(tmp: Path) -> Observation:
    del tmp
    wav = _looped(_recordings(), 50)[None, :]
    plan = ChunkPlan.for_model(RATE, min_samples=257)  # the default model's (n_fft 512)
    runner = OrtRunner(built_artifact() / "cpu" / "model.onnx", threads=1)
    whole, chunked = runner(wav)[0], run_chunked(runner, wav, plan)[0]
    max_abs, quality = float(np.max(np.abs(chunked - whole))), si_sdr(chunked, whole)
    windows = len(list(plan.windows(wav.shape[1])))
    ok = max_abs <= CHUNK_MAX_ABS and quality >= CHUNK_MIN_SI_SDR and windows > 1
    return Observation(ok, f"50 s in {windows} chunks vs whole: max abs {max_abs:.2g}, "
                           f"SI-SDR {quality:.1f} dB")


CHUNK_MAX_ABS = 5e-3
CHUNK_MIN_SI_SDR = 50.0

PROBES: list[Probe] = [
    Probe("long audio", "10-minute file through enhance",
          f"works; peak RSS at 10 min within {ENHANCE_SLACK_MB:.0f} MiB of 1 min",
          probe_enhance_memory),
    Probe("long audio", "10-minute eval pair through validate",
          "works, finite metrics; peak grows with the audio held (<= 64 B a sample), not activations", probe_validate_memory),
    Probe("long audio", "chunked output equals whole-file output",
          f"max abs <= {CHUNK_MAX_ABS:g}, SI-SDR >= {CHUNK_MIN_SI_SDR:g} dB",
          probe_chunked_equals_whole),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


def test_chunk_windows_cover_the_signal_once_and_align() -> None:
    plan = ChunkPlan(chunk=1000, past=300, future=50, align=100)
    assert [(w.start, w.stop) for w in plan.windows(1350)] == [(0, 1350)]  # whole
    windows = list(plan.windows(3456))
    kept = np.concatenate([np.arange(w.keep_start, w.keep_stop) for w in windows])
    np.testing.assert_array_equal(kept, np.arange(3456))
    assert [(w.start, w.stop) for w in windows] == [(0, 1350), (1000, 2350), (2000, 3350),
                                                     (2200, 3456)]  # the last moved back
    for w in windows:
        assert w.start % plan.align == 0 and w.stop - w.start <= plan.window
        assert w.start == 0 or w.keep_start - w.start >= plan.past
        assert w.stop == 3456 or w.stop - w.keep_stop >= plan.future


def test_chunked_runner_is_exact_for_a_memoryless_model() -> None:
    """A model without recurrent state gives exactly its whole-signal output in chunks."""
    wav = np.random.default_rng(0).standard_normal((2, 10_000)).astype(np.float32)
    plan = ChunkPlan(chunk=1000, past=200, future=100, align=100)
    double = (lambda batch: 2 * batch)
    np.testing.assert_array_equal(run_chunked(double, wav, plan), 2 * wav)


def test_enhancer_chunks_long_arrays_like_the_cli(tmp_path: Path) -> None:
    """``secompile.load(...).enhance`` and ``enhance_file`` (the CLI's path) agree."""
    import secompile
    from secompile.compiler.runtime.chunking import enhance_file

    wav = _looped(_recordings(), 45)
    enhancer = secompile.load(built_artifact())
    assert enhancer.chunks is not None and len(wav) > enhancer.chunks.whole_limit
    in_memory = enhancer.enhance(wav)
    source = tmp_path / "in.wav"
    sf.write(source, wav, RATE, subtype="FLOAT")
    enhance_file(enhancer._runner, source, tmp_path / "out.wav", enhancer.chunks, RATE)
    on_disk, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    assert np.max(np.abs(on_disk - np.clip(in_memory, -1, 1))) <= 2 ** -15  # PCM16 rounding


def test_block_sums_give_the_whole_clip_metrics() -> None:
    """SI-SDR and SNR of long clips (summed in blocks) equal the one-piece formulas."""
    from secompile.calibration import metrics

    rng = np.random.default_rng(0)
    ref = rng.standard_normal(metrics.BLOCK * 2 + 123).astype(np.float32)
    est = (ref + 0.1 * rng.standard_normal(ref.size) + 0.3).astype(np.float32)
    blocked = metrics.si_sdr(est, ref), metrics.snr_db(est, ref)
    e, r = est - np.mean(est, dtype=np.float64), ref - np.mean(ref, dtype=np.float64)
    target = np.dot(e, r) / np.dot(r, r) * r
    expected_si_sdr = 10 * np.log10(np.dot(target, target) / np.dot(e - target, e - target))
    e, r = est.astype(np.float64), ref.astype(np.float64)
    expected_snr = 10 * np.log10(np.dot(r, r) / np.dot(e - r, e - r))
    assert blocked == pytest.approx((expected_si_sdr, expected_snr), abs=1e-9)
