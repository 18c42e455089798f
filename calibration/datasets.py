"""Audio datasets: a folder of wavs, or paired ``clean/`` + ``noisy/`` folders.

Files are listed in sorted order and subsets are drawn with a seeded generator, so the same
folder and seed always give the same files. ``fingerprint`` hashes the bytes of the chosen
files: it goes into cache keys, so changed audio is never served stale results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from secompile.calibration.audio import read_audio
from secompile.compiler.core.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac")
MAX_LENGTH_MISMATCH_SECONDS = 0.1


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"audio folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"no .wav or .flac files in {folder}")
    return files


def _subset(items: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(items):
        return items
    order = np.random.default_rng(seed).permutation(len(items))[:limit]
    return [items[i] for i in sorted(order)]


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class AudioFolder:
    """Mono audio files in one folder (used for calibration and as blind input)."""

    files: tuple[Path, ...]
    sample_rate: int
    allow_resample: bool = False
    min_samples: int = 1

    @classmethod
    def scan(
        cls,
        folder: Path,
        sample_rate: int,
        limit: int | None = None,
        seed: int = 0,
        allow_resample: bool = False,
        min_samples: int = 1,
    ) -> AudioFolder:
        """The (optionally subsampled, deterministic) audio files of ``folder``."""
        files = _subset(_audio_files(Path(folder)), limit, seed)
        return cls(tuple(files), sample_rate, allow_resample, min_samples)

    def load(self) -> list[np.ndarray]:
        """Every file as float32 at ``sample_rate`` (``DataError`` on bad audio); decoded once
        per dataset object, however many passes and targets ask."""
        return list(self._decoded)

    @cached_property
    def _decoded(self) -> tuple[np.ndarray, ...]:
        return tuple(read_audio(p, self.sample_rate, self.allow_resample, self.min_samples)
                     for p in self.files)

    def fingerprint(self) -> str:
        """Hash of the chosen files' names and bytes."""
        return _fingerprint(list(self.files))


@dataclass(frozen=True)
class AudioPair:
    """A noisy recording and its clean reference."""

    name: str
    noisy: np.ndarray
    clean: np.ndarray


@dataclass(frozen=True)
class PairedFolder:
    """``clean/`` and ``noisy/`` sub-folders whose files are matched by name."""

    root: Path
    names: tuple[str, ...]
    sample_rate: int
    allow_resample: bool = False
    min_samples: int = 1

    @classmethod
    def scan(
        cls,
        root: Path,
        sample_rate: int,
        limit: int | None = None,
        seed: int = 0,
        allow_resample: bool = False,
        min_samples: int = 1,
    ) -> PairedFolder:
        """Pairs of ``root/noisy/X`` and ``root/clean/X``. ``DataError`` when none match, and
        when a file has no partner of the same name on the other side (a noisy file without
        its clean reference would silently shrink the evaluation set)."""
        root = Path(root)
        if not (root / "clean").is_dir() or not (root / "noisy").is_dir():
            raise DataError(f"{root} must contain clean/ and noisy/ folders of paired audio")
        noisy = {p.name for p in _audio_files(root / "noisy")}
        clean = {p.name for p in _audio_files(root / "clean")}
        names = sorted(noisy & clean)
        if not names:
            raise DataError(f"no file names match between {root}/clean and {root}/noisy")
        unpaired = []
        for side, other, alone in (("noisy", "clean", noisy - clean),
                                   ("clean", "noisy", clean - noisy)):
            if alone:
                shown = ", ".join(str(root / side / n) for n in sorted(alone)[:3])
                more = f" and {len(alone) - 3} more" if len(alone) > 3 else ""
                unpaired.append(f"{shown}{more} (no file of the same name in {root / other})")
        if unpaired:
            raise DataError(f"unpaired evaluation audio: {'; '.join(unpaired)}; pairs are "
                            "matched by file name")
        names = tuple(_subset(names, limit, seed))
        return cls(root, names, sample_rate, allow_resample, min_samples)

    def __len__(self) -> int:
        return len(self.names)

    def load(self) -> list[AudioPair]:
        """Every pair, trimmed to the shorter of the two files when their lengths differ by
        at most ``MAX_LENGTH_MISMATCH_SECONDS`` (encoders and resamplers add a few samples);
        a larger difference is a ``DataError`` naming both files (they are not one
        recording). Decoded once per dataset object, however many passes and targets ask."""
        return list(self._decoded)

    @cached_property
    def _decoded(self) -> tuple[AudioPair, ...]:
        pairs = []
        read = (self.sample_rate, self.allow_resample, self.min_samples)
        slack = int(MAX_LENGTH_MISMATCH_SECONDS * self.sample_rate)
        for name in self.names:
            noisy_path, clean_path = self.root / "noisy" / name, self.root / "clean" / name
            noisy = read_audio(noisy_path, *read)
            clean = read_audio(clean_path, *read)
            if abs(len(noisy) - len(clean)) > slack:
                rate = self.sample_rate
                raise DataError(
                    f"{noisy_path} and {clean_path} differ in length ({len(noisy) / rate:.2f} s "
                    f"vs {len(clean) / rate:.2f} s; at most {MAX_LENGTH_MISMATCH_SECONDS:g} s "
                    "is trimmed): a noisy file and its clean reference must be one recording")
            n = min(len(noisy), len(clean))
            pairs.append(AudioPair(name, noisy[:n], clean[:n]))
        return tuple(pairs)

    def fingerprint(self) -> str:
        """Hash of the chosen pairs' names and bytes."""
        paths = [self.root / sub / n for n in self.names for sub in ("clean", "noisy")]
        return _fingerprint(paths)


def _digests(paths: list[Path]) -> dict[str, Path]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths}


def check_disjoint(calibration: AudioFolder, evaluation: PairedFolder) -> None:
    """Raise ``DataError`` naming the files when a calibration file is also an evaluation file
    (same bytes, under any name): quality measured on calibration audio proves nothing."""
    calib = _digests(list(calibration.files))
    evaluated = _digests([evaluation.root / sub / n for n in evaluation.names
                          for sub in ("noisy", "clean")])
    shared = sorted(calib.keys() & evaluated.keys(), key=lambda d: str(calib[d]))
    if shared:
        shown = "; ".join(f"{calib[d]} = {evaluated[d]}" for d in shared[:3])
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        raise DataError(f"calibration and evaluation audio overlap ({len(shared)} file(s): "
                        f"{shown}{more}); calibrate on other recordings than you evaluate on")
