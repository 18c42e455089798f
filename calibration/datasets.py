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
        """Pairs of ``root/noisy/X`` and ``root/clean/X`` (``DataError`` when none match)."""
        root = Path(root)
        if not (root / "clean").is_dir() or not (root / "noisy").is_dir():
            raise DataError(f"{root} must contain clean/ and noisy/ folders of paired audio")
        noisy = {p.name for p in _audio_files(root / "noisy")}
        clean = {p.name for p in _audio_files(root / "clean")}
        names = sorted(noisy & clean)
        if not names:
            raise DataError(f"no file names match between {root}/clean and {root}/noisy")
        names = tuple(_subset(names, limit, seed))
        return cls(root, names, sample_rate, allow_resample, min_samples)

    def __len__(self) -> int:
        return len(self.names)

    def load(self) -> list[AudioPair]:
        """Every pair, trimmed to the shorter of the two files; decoded once per dataset
        object, however many passes and targets ask."""
        return list(self._decoded)

    @cached_property
    def _decoded(self) -> tuple[AudioPair, ...]:
        pairs = []
        read = (self.sample_rate, self.allow_resample, self.min_samples)
        for name in self.names:
            noisy = read_audio(self.root / "noisy" / name, *read)
            clean = read_audio(self.root / "clean" / name, *read)
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
