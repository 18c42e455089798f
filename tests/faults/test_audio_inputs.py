"""Fault probes: the audio users bring to ``--eval``, ``--calib`` and ``secompile enhance``.

Every bad input must end in one ``error:`` line naming the file and the problem (exit 2, no
traceback, no artifact or output written); silence, mixed lengths and unicode paths must work.
The many small variants are also checked in process (``read_audio``, the datasets, the
metrics), where they cost nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from secompile.calibration.audio import check_audio, read_audio
from secompile.calibration.datasets import PairedFolder
from secompile.calibration.metrics import (
    PESQ_WB_FLOOR,
    SEGMENT_SECONDS,
    estoi,
    pesq_wb,
    quality,
    segments,
)
from secompile.compiler.core.errors import DataError
from secompile.compiler.distributed.scoring import score_pair, summarize
from tests.faults._artifact import built_artifact
from tests.faults.harness import (
    SHARED_AUDIO,
    CliResult,
    Observation,
    Probe,
    files_under,
    in_process,
    named_error,
    secompile,
)

RATE = 16000
VALIDATE = "export-onnx,validate{speed=false memory=false streaming=false}"


def _shared() -> None:
    if not (SHARED_AUDIO / "vbdemand").is_dir():
        pytest.skip(f"shared audio not found at {SHARED_AUDIO}")


def _speech(index: int = 0, side: str = "noisy") -> np.ndarray:
    """A real VoiceBank-DEMAND file (float32, 16 kHz)."""
    _shared()
    path = sorted((SHARED_AUDIO / "vbdemand" / side).glob("*.wav"))[index]
    return read_audio(path, RATE)


def _write(path: Path, wav: np.ndarray, rate: int = RATE, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, rate, subtype=subtype)
    return path


def _eval_dir(root: Path, pairs: int = 2) -> Path:
    """``root/clean`` + ``root/noisy`` holding ``pairs`` real VoiceBank-DEMAND pairs."""
    _shared()
    for side in ("clean", "noisy"):
        (root / side).mkdir(parents=True, exist_ok=True)
        for path in sorted((SHARED_AUDIO / "vbdemand" / side).glob("*.wav"))[:pairs]:
            shutil.copy(path, root / side / path.name)
    return root


def _build(tmp: Path, *args: str | Path, pipeline: str = "export-onnx",
           quiet: bool = True) -> tuple[CliResult, Path]:
    out = tmp / "out"
    return in_process(["build", "--pipeline", pipeline, "--no-cache", "--no-ray",
                 *(["--quiet"] if quiet else []), "--out", out, *args]), out


def _refused(result: CliResult, out: Path, *needles: str) -> Observation:
    """``named_error`` plus: nothing was written to ``out``."""
    seen = named_error(result, *needles)
    left = files_under(out) if out.exists() else set()
    if left:
        return Observation(False, f"{seen.observed}; but wrote {sorted(left)[:3]}")
    return seen


def _enhance(tmp: Path, *inputs: Path, shell: bool = False) -> tuple[CliResult, Path]:
    out = tmp / "enhanced"
    run = secompile if shell else in_process
    return run(["enhance", built_artifact(), *inputs, "-o", out]), out


# --- the probes -------------------------------------------------------------------------------


def probe_wrong_rate(tmp: Path) -> Observation:
    path = _write(tmp / "call_8k.wav", _speech()[: RATE * 2: 2], rate=8000)
    result, out = _enhance(tmp, path)
    return _refused(result, out, str(path), "8000 Hz", "--resample")


def probe_stereo(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "eval")
    name = min((root / "noisy").iterdir()).name
    wav = read_audio(root / "noisy" / name, RATE)
    _write(root / "noisy" / name, np.stack([wav, wav], axis=1))
    result, out = _build(tmp, "--eval", root)
    return _refused(result, out, str(root / "noisy" / name), "2 channels")


def probe_empty_file(tmp: Path) -> Observation:
    calib = tmp / "calib"
    _write(calib / "a.wav", _speech()[: RATE])
    empty = _write(calib / "b_empty.wav", np.zeros(0, np.float32))
    result, out = _build(tmp, "--calib", calib, pipeline="export-onnx,quantize")
    return _refused(result, out, str(empty), "empty")


def probe_nan(tmp: Path) -> Observation:
    wav = _speech()
    wav[1000] = np.nan
    wav[2000] = np.inf
    path = _write(tmp / "bad.wav", wav)
    good = _write(tmp / "good.wav", _speech(1))
    result, out = _enhance(tmp, good, path, shell=True)  # nor may the good file be written
    return _refused(result, out, str(path), "NaN or infinite")


def probe_silence(tmp: Path) -> Observation:
    silent = _write(tmp / "silence.wav", np.zeros(3 * RATE, np.float32), subtype="PCM_16")
    result, out = _enhance(tmp, silent)
    if result.exit_code != 0:
        return Observation(False, result.summary())
    wav, _ = sf.read(out / "silence.wav", dtype="float32")
    ok = len(wav) == 3 * RATE and bool(np.all(np.isfinite(wav)))
    return Observation(ok, f"exit 0: enhanced {len(wav)} samples, peak {np.abs(wav).max():.2g}")


def probe_silent_pair(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "eval")
    for side in ("clean", "noisy"):
        _write(root / side / "zz_silence.wav", np.zeros(3 * RATE, np.float32), subtype="PCM_16")
    result, out = _build(tmp, "--eval", root, pipeline=VALIDATE, quiet=False)
    if result.exit_code != 0:
        return Observation(False, result.summary())
    import json

    quality_ = json.loads((out / "report.json").read_text())["targets"]["cpu"]["quality"]
    numbers = [v for side in ("noisy", "baseline", "artifact") for v in quality_[side].values()]
    skipped = [r["file"] for r in quality_["skipped_files"]]
    ok = (quality_["files"] == 2 and skipped == ["zz_silence.wav"]
          and all(np.isfinite(numbers)) and "zz_silence.wav" in result.stderr)
    return Observation(ok, f"exit 0: scored {quality_['files']} pairs, skipped {skipped} "
                           f"(silent reference), artifact SI-SDR "
                           f"{quality_['artifact']['si_sdr']:.2f} dB")


def probe_one_ms(tmp: Path) -> Observation:
    path = _write(tmp / "blip.wav", _speech()[: RATE // 1000])
    result, out = _enhance(tmp, path)
    return _refused(result, out, str(path), "too short", "16 samples")


def probe_not_wav(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "eval")
    name = min((root / "clean").iterdir()).name
    (root / "clean" / name).write_bytes(b"%PDF-1.4 not audio at all\n" * 40)
    result, out = _build(tmp, "--eval", root)
    return _refused(result, out, str(root / "clean" / name), "cannot read audio file")


def probe_lengths_differ(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "eval")
    name = min((root / "clean").iterdir()).name
    wav = read_audio(root / "clean" / name, RATE)
    _write(root / "clean" / name, wav[: len(wav) // 2])
    result, out = _build(tmp, "--eval", root)
    return _refused(result, out, str(root / "clean" / name), str(root / "noisy" / name),
                    "differ in length")


def probe_names_differ(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "eval")
    first = min((root / "clean").iterdir())
    first.rename(first.with_name("renamed_" + first.name))
    result, out = _build(tmp, "--eval", root)
    return _refused(result, out, "renamed_" + first.name, "no file of the same name")


def probe_clean_missing(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "eval", pairs=3)
    gone = sorted((root / "clean").iterdir())[1]
    gone.unlink()
    result, out = _build(tmp, "--eval", root)
    return _refused(result, out, str(root / "noisy" / gone.name), str(root / "clean"))


def probe_empty_folder(tmp: Path) -> Observation:
    (tmp / "calib").mkdir()
    result, out = _build(tmp, "--calib", tmp / "calib", pipeline="export-onnx,quantize")
    return _refused(result, out, str(tmp / "calib"), "no .wav")


def probe_unicode_paths(tmp: Path) -> Observation:
    root = _eval_dir(tmp / "évaluation set ü 声")
    noisy = min((root / "noisy").iterdir())
    talk = shutil.copy(noisy, root.parent / "entrée bruitée é.wav")
    result = secompile(["build", "--pipeline", VALIDATE, "--no-cache", "--no-ray", "--quiet",
                        "--eval", root, "--out", tmp / "out ü"])
    out = tmp / "out ü"
    if result.exit_code != 0:
        return Observation(False, f"build: {result.summary()}")
    enhanced = tmp / "sortie é 出力"
    done = secompile(["enhance", out / "cpu" / "model.onnx", talk, "-o", enhanced])
    ok = done.exit_code == 0 and (enhanced / Path(talk).name).is_file()
    return Observation(ok, f"exit {result.exit_code}: build with --eval '{root.name}/'; "
                           f"enhance exit {done.exit_code}: wrote '{enhanced.name}/"
                           f"{Path(talk).name}'")


def probe_mixed_lengths(tmp: Path) -> Observation:
    calib = tmp / "calib"
    blind = sorted((SHARED_AUDIO / "blind").glob("*.wav"))
    if not blind:
        pytest.skip(f"shared audio not found at {SHARED_AUDIO}")
    for seconds, path in zip((1.3, 2.7, 7.9), blind, strict=False):  # around the 4 s window
        _write(calib / path.name, read_audio(path, RATE)[: int(seconds * RATE)])
    result, out = _build(tmp, "--calib", calib, pipeline=(
        "export-onnx,quantize{calibration_clips=6 timing_repeats=3}"))
    ok = result.exit_code == 0 and (out / "cpu" / "model.onnx").is_file()
    return Observation(ok, f"exit {result.exit_code}: quantize calibrated on 1.3 s, 2.7 s and "
                           f"7.9 s recordings" + ("" if ok else f"; {result.summary()}"))


PROBES: list[Probe] = [
    Probe("audio", "wrong sample rate", "exit 2, names the file: 8000 Hz, --resample",
          probe_wrong_rate),
    Probe("audio", "stereo eval file", "exit 2, names the file: 2 channels", probe_stereo),
    Probe("audio", "empty calib file", "exit 2, names the file: empty", probe_empty_file),
    Probe("audio", "NaN and inf samples", "exit 2, names the file, nothing enhanced",
          probe_nan),
    Probe("audio", "all-zero silence to enhance", "works: silent, finite output",
          probe_silence),
    Probe("audio", "silent pair in eval", "works: pair skipped from metrics with a note, "
          "no NaN", probe_silent_pair),
    Probe("audio", "1 ms file", "exit 2, names the file: too short", probe_one_ms),
    Probe("audio", "non-wav renamed .wav", "exit 2, names the file: cannot read",
          probe_not_wav),
    Probe("audio", "clean and noisy lengths differ", "exit 2, names both files",
          probe_lengths_differ),
    Probe("audio", "eval names do not match", "exit 2, names the unmatched file",
          probe_names_differ),
    Probe("audio", "clean file missing", "exit 2, names the noisy file without reference",
          probe_clean_missing),
    Probe("audio", "empty calib folder", "exit 2, names the folder", probe_empty_folder),
    Probe("audio", "unicode and spaces in paths", "works: build --eval and enhance",
          probe_unicode_paths),
    Probe("audio", "mixed-length calib recordings", "works: quantize calibrates",
          probe_mixed_lengths),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


# --- in-process checks of the same rules ---------------------------------------------------------


@pytest.mark.parametrize("reader", [read_audio, check_audio])
@pytest.mark.parametrize("case, fragment", [
    ("stereo", "2 channels"), ("empty", "empty"), ("nan", "NaN"), ("inf", "infinite"),
    ("rate", "8000 Hz"), ("short", "too short"), ("garbage", "cannot read"),
    ("zero_bytes", "cannot read"),
])
def test_bad_files_are_named_one_line_data_errors(reader, case: str, fragment: str,
                                                   tmp_path: Path) -> None:
    path = tmp_path / f"bad {case} é.wav"
    wav = np.full(2000, 0.1, np.float32)
    if case == "stereo":
        _write(path, np.stack([wav, wav], axis=1))
    elif case == "empty":
        _write(path, wav[:0])
    elif case in ("nan", "inf"):
        wav[-1] = np.nan if case == "nan" else -np.inf
        _write(path, wav)
    elif case == "rate":
        _write(path, wav, rate=8000)
    elif case == "short":
        _write(path, wav[:16])
    elif case == "garbage":
        path.write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        reader(path, RATE, min_samples=257)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_check_audio_scans_every_block_of_a_long_file(tmp_path: Path) -> None:
    wav = np.full(3 << 20, 0.1, np.float32)  # over three scan blocks
    wav[-5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        check_audio(_write(tmp_path / "long.wav", wav), RATE)
    assert check_audio(_write(tmp_path / "ok.wav", wav[:-10]), RATE) == len(wav) - 10


def test_silent_reference_is_skipped_and_named(tmp_path: Path) -> None:
    speech = _speech(0, "clean")
    identity = (lambda batch: batch)
    silent = score_pair("silent.wav", speech, np.zeros_like(speech), RATE, identity, identity)
    scored = score_pair("speech.wav", speech, speech, RATE, identity, identity)
    assert silent == {"file": "silent.wav", "skipped": silent["skipped"]}
    summary = summarize([silent, scored])
    assert summary["files"] == 1 and summary["skipped_files"] == [silent]
    assert all(np.isfinite(v) for v in summary["artifact"].values())
    with pytest.raises(DataError, match="silent clean reference.*silent.wav"):
        summarize([silent])


def test_silent_estimate_scores_the_pesq_floor_not_a_crash() -> None:
    clean = _speech(0, "clean")
    scores = quality(np.zeros_like(clean), clean, RATE)
    assert scores["pesq"] == pytest.approx(PESQ_WB_FLOOR)
    assert np.isfinite(scores["si_sdr"]) and np.isfinite(scores["stoi"])
    assert np.isnan(pesq_wb(clean, np.zeros_like(clean), RATE))  # no reference: no score


def test_long_clips_are_scored_in_segments() -> None:
    clean, noisy = _speech(0, "clean"), _speech(0, "noisy")
    reps = -(-95 * RATE // len(clean))
    long_clean, long_noisy = np.tile(clean, reps), np.tile(noisy, reps)  # 3 segments
    parts = segments(len(long_clean), RATE)
    assert len(parts) == 3 and parts[-1].stop == len(long_clean)
    # a 4-minute clip crashes the pesq package's process; segments stay near the clip's score
    # (ESTOI less so: its silent-frame removal sees the loop's seams)
    assert abs(pesq_wb(long_noisy, long_clean, RATE) - pesq_wb(noisy, clean, RATE)) < 0.15
    assert abs(estoi(long_noisy, long_clean, RATE) - estoi(noisy, clean, RATE)) < 0.1
    assert segments(int(1.49 * SEGMENT_SECONDS * RATE), RATE) == [
        slice(0, int(1.49 * SEGMENT_SECONDS * RATE))]  # up to 1.5 segments: scored whole


def test_pairs_trim_small_length_differences_only(tmp_path: Path) -> None:
    speech = _speech(0)
    _write(tmp_path / "clean" / "a.wav", speech)
    _write(tmp_path / "noisy" / "a.wav", speech[:-RATE // 20])  # 50 ms: an encoder's padding
    (pair,) = PairedFolder.scan(tmp_path, RATE).load()
    assert len(pair.clean) == len(pair.noisy) == len(speech) - RATE // 20
    _write(tmp_path / "noisy" / "a.wav", speech[: len(speech) // 2])
    with pytest.raises(DataError, match="differ in length"):
        PairedFolder.scan(tmp_path, RATE).load()


@pytest.mark.parametrize("alone", ["clean", "noisy"])
def test_an_unpaired_file_is_named(alone: str, tmp_path: Path) -> None:
    speech = _speech(0)
    for side in ("clean", "noisy"):
        _write(tmp_path / side / "a.wav", speech)
    _write(tmp_path / alone / "b.wav", speech)
    with pytest.raises(DataError) as info:
        PairedFolder.scan(tmp_path, RATE)
    assert str(tmp_path / alone / "b.wav") in str(info.value)
