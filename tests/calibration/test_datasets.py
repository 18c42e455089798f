"""Tests for wav-folder and paired-folder datasets (``calibration.datasets``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from secompile.calibration.datasets import AudioFolder, AudioPair, PairedFolder, check_disjoint
from secompile.compiler.core.errors import DataError
from secompile.models.registry import DEMO_DIR
from tests.conftest import SHARED_DATA as DATA

VBDEMAND = DATA / "audio" / "vbdemand"
RATE = 16000


def _write(path: Path, n: int = 800, seed: int = 0, rate: int = RATE) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    sf.write(path, wav, rate, subtype="FLOAT")
    return wav


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Ten wavs written out of order, plus files that are not audio."""
    root = tmp_path / "wavs"
    for i in (7, 2, 9, 0, 5, 1, 8, 3, 6, 4):
        _write(root / f"clip_{i:02d}.wav", seed=i)
    (root / "notes.txt").write_text("not audio")
    (root / "sub").mkdir()
    return root


def _names(files) -> list[str]:
    return [Path(f).name for f in files]


def test_audio_folder_lists_sorted_audio_only(folder: Path) -> None:
    data = AudioFolder.scan(folder, RATE)
    assert _names(data.files) == [f"clip_{i:02d}.wav" for i in range(10)]
    assert data.sample_rate == RATE


def test_audio_folder_accepts_flac_and_upper_case_suffix(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _write(root / "b.WAV")
    root.mkdir(exist_ok=True)
    sf.write(root / "a.flac", np.zeros(400, np.float32), RATE)
    assert _names(AudioFolder.scan(root, RATE).files) == ["a.flac", "b.WAV"]


def test_audio_folder_subset_is_deterministic(folder: Path) -> None:
    first = AudioFolder.scan(folder, RATE, limit=4, seed=3)
    second = AudioFolder.scan(folder, RATE, limit=4, seed=3)
    assert first.files == second.files
    assert len(first.files) == 4
    assert _names(first.files) == sorted(_names(first.files))
    assert set(first.files) <= set(AudioFolder.scan(folder, RATE).files)


def test_audio_folder_different_seeds_can_differ(folder: Path) -> None:
    subsets = {AudioFolder.scan(folder, RATE, limit=3, seed=s).files for s in range(8)}
    assert len(subsets) > 1


def test_audio_folder_limit_at_or_above_size_keeps_everything(folder: Path) -> None:
    everything = AudioFolder.scan(folder, RATE).files
    assert AudioFolder.scan(folder, RATE, limit=10, seed=1).files == everything
    assert AudioFolder.scan(folder, RATE, limit=50, seed=1).files == everything


def test_audio_folder_load(folder: Path) -> None:
    clips = AudioFolder.scan(folder, RATE, limit=2, seed=0).load()
    assert len(clips) == 2
    assert all(c.dtype == np.float32 and c.shape == (800,) for c in clips)


def test_audio_folder_load_reports_bad_file(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _write(root / "a.wav")
    _write(root / "b.wav", rate=8000)
    data = AudioFolder.scan(root, RATE)
    with pytest.raises(DataError, match="b.wav"):
        data.load()
    assert len(AudioFolder.scan(root, RATE, allow_resample=True).load()) == 2


def test_audio_folder_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="not found") as info:
        AudioFolder.scan(missing, RATE)
    assert str(missing) in str(info.value)


def test_audio_folder_without_wavs(tmp_path: Path) -> None:
    root = tmp_path / "text_only"
    root.mkdir()
    (root / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no .wav") as info:
        AudioFolder.scan(root, RATE)
    assert str(root) in str(info.value)


def test_audio_folder_path_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "one.wav"
    _write(path)
    with pytest.raises(DataError):
        AudioFolder.scan(path, RATE)


@pytest.fixture
def paired(tmp_path: Path) -> Path:
    """clean/ and noisy/ with three matching names (an unmatched file is an error, see
    ``tests/faults/test_audio_inputs.py``)."""
    root = tmp_path / "pairs"
    for i, name in enumerate(("c.wav", "a.wav", "b.wav")):
        _write(root / "clean" / name, n=1000, seed=i)
        _write(root / "noisy" / name, n=1000 + 37 * (i + 1), seed=10 + i)  # longer noisy
    return root


def test_paired_folder_matches_by_name(paired: Path) -> None:
    data = PairedFolder.scan(paired, RATE)
    assert data.names == ("a.wav", "b.wav", "c.wav")
    assert len(data) == 3


def test_paired_folder_subset_is_deterministic(paired: Path) -> None:
    first = PairedFolder.scan(paired, RATE, limit=2, seed=5)
    assert first.names == PairedFolder.scan(paired, RATE, limit=2, seed=5).names
    assert len(first) == 2 and set(first.names) <= {"a.wav", "b.wav", "c.wav"}


def test_paired_folder_load_trims_to_shorter(paired: Path) -> None:
    pairs = PairedFolder.scan(paired, RATE).load()
    assert [p.name for p in pairs] == ["a.wav", "b.wav", "c.wav"]
    for pair in pairs:
        assert isinstance(pair, AudioPair)
        assert len(pair.noisy) == len(pair.clean) == 1000
        assert pair.noisy.dtype == pair.clean.dtype == np.float32
    # The clean reference really is the clean file (seed 1 was written as b.wav).
    clean_b = sf.read(paired / "clean" / "b.wav", dtype="float32")[0]
    np.testing.assert_array_equal(pairs[1].clean, clean_b)


def test_paired_folder_trims_when_clean_is_longer(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    _write(root / "clean" / "x.wav", n=1200)
    _write(root / "noisy" / "x.wav", n=900, seed=1)
    (pair,) = PairedFolder.scan(root, RATE).load()
    assert len(pair.noisy) == len(pair.clean) == 900


@pytest.mark.parametrize("missing", ["clean", "noisy"])
def test_paired_folder_needs_both_subfolders(tmp_path: Path, missing: str) -> None:
    root = tmp_path / "pairs"
    present = "noisy" if missing == "clean" else "clean"
    _write(root / present / "x.wav")
    with pytest.raises(DataError, match="clean/ and noisy/") as info:
        PairedFolder.scan(root, RATE)
    assert str(root) in str(info.value)


def test_paired_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        PairedFolder.scan(tmp_path / "nowhere", RATE)


def test_paired_folder_no_matching_names(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    _write(root / "clean" / "a.wav")
    _write(root / "noisy" / "b.wav")
    with pytest.raises(DataError, match="no file names match"):
        PairedFolder.scan(root, RATE)


def test_paired_folder_empty_side(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    _write(root / "clean" / "a.wav")
    (root / "noisy").mkdir()
    with pytest.raises(DataError, match="no .wav"):
        PairedFolder.scan(root, RATE)


def test_audio_folder_fingerprint_tracks_bytes(folder: Path) -> None:
    data = AudioFolder.scan(folder, RATE, limit=3, seed=0)
    before = data.fingerprint()
    assert before == AudioFolder.scan(folder, RATE, limit=3, seed=0).fingerprint()
    assert len(before) == 64
    target = data.files[1]
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF  # flip one byte of the last sample
    target.write_bytes(bytes(raw))
    assert data.fingerprint() != before


def test_audio_folder_fingerprint_ignores_unchosen_files(folder: Path) -> None:
    data = AudioFolder.scan(folder, RATE, limit=3, seed=0)
    before = data.fingerprint()
    unchosen = next(p for p in AudioFolder.scan(folder, RATE).files if p not in data.files)
    _write(unchosen, seed=99)
    assert data.fingerprint() == before


def test_paired_folder_fingerprint_tracks_bytes(paired: Path) -> None:
    data = PairedFolder.scan(paired, RATE)
    before = data.fingerprint()
    _write(paired / "noisy" / "b.wav", n=1074, seed=123)
    assert data.fingerprint() != before
    after_noisy = data.fingerprint()
    _write(paired / "clean" / "a.wav", n=1000, seed=321)
    assert data.fingerprint() != after_noisy


def test_paired_folder_fingerprint_depends_on_chosen_names(paired: Path) -> None:
    full = PairedFolder.scan(paired, RATE).fingerprint()
    subsets = {PairedFolder.scan(paired, RATE, limit=1, seed=s).fingerprint() for s in range(6)}
    assert full not in subsets


@pytest.mark.skipif(not VBDEMAND.is_dir(), reason=f"shared audio not found at {VBDEMAND}")
def test_real_voicebank_demand_pairs() -> None:
    data = PairedFolder.scan(VBDEMAND, RATE)
    assert len(data) == 15
    assert data.names[0] == "p232_010.wav"
    (pair,) = PairedFolder.scan(VBDEMAND, RATE, limit=1, seed=0).load()
    assert len(pair.noisy) == len(pair.clean) > RATE


def test_check_disjoint_finds_the_same_bytes_under_another_name(tmp_path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(DEMO_DIR / "calib" / "calib_00.wav", calib / "a.wav")
    evaluation = PairedFolder.scan(DEMO_DIR, 16000)
    check_disjoint(AudioFolder.scan(calib, 16000), evaluation)  # disjoint: no error
    shutil.copy(DEMO_DIR / "clean" / "demo.wav", calib / "b.wav")
    with pytest.raises(DataError, match="overlap .*b.wav"):
        check_disjoint(AudioFolder.scan(calib, 16000), evaluation)


def test_calibration_clips_of_mixed_length_recordings_have_one_length() -> None:
    """A folder of real recordings of mixed lengths gives clips of one length (ONNX Runtime's
    histogram calibrators stack them; mixed lengths crashed ``quantize``)."""
    from secompile.calibration.readers import calibration_clips

    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) for n in (900, 5000, 12345, 64000)]
    clips = calibration_clips(audio, seconds=0.5, sample_rate=RATE, limit=32)
    assert {c.shape for c in clips} == {(1, 8000)}
    assert len(clips) == 1 + 1 + 2 + 8  # short files looped; a tail of >= half a window kept
    np.testing.assert_array_equal(clips[3][0], audio[3][:8000])
    short = calibration_clips(audio[:2], seconds=4.0, sample_rate=RATE, limit=8)
    assert {c.shape for c in short} == {(1, 5000)}  # every file shorter: the longest file
    assert calibration_clips([], 1.0, RATE, 4) == []
