"""Reading and checking audio: mono float32 at the model's rate, or a ``DataError``."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from secompile.compiler.core.errors import DataError


def resample(wav: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy) from ``source_rate`` to ``target_rate``."""
    if source_rate == target_rate:
        return wav
    from scipy.signal import resample_poly

    g = gcd(source_rate, target_rate)
    return resample_poly(wav, target_rate // g, source_rate // g).astype(np.float32)


def read_audio(
    path: Path, sample_rate: int, allow_resample: bool = False, min_samples: int = 1
) -> np.ndarray:
    """Read a mono audio file as float32 at ``sample_rate``.

    Raises ``DataError`` naming the file when it is unreadable, stereo, empty or shorter than
    ``min_samples``, holds NaN or infinite samples, or has another rate while resampling is
    not allowed.
    """
    path = Path(path)
    try:
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise DataError(f"cannot read audio file {path}: {_one_line(exc)}") from None
    if wav.shape[1] != 1:
        raise DataError(f"{path} has {wav.shape[1]} channels; only mono audio is accepted")
    wav = wav[:, 0]
    if wav.size == 0:
        raise DataError(f"{path} is empty (no samples)")
    if not np.all(np.isfinite(wav)):
        raise DataError(f"{path} contains NaN or infinite samples")
    if rate != sample_rate:
        if not allow_resample:
            raise DataError(
                f"{path} is sampled at {rate} Hz but the model expects {sample_rate} Hz "
                "(pass --resample to convert it)"
            )
        wav = resample(wav, rate, sample_rate)
    if wav.size < min_samples:
        raise DataError(
            f"{path} is too short: {wav.size} samples, the model needs at least {min_samples}"
        )
    return np.ascontiguousarray(wav, dtype=np.float32)


SCAN_BLOCK = 1 << 20  # samples decoded at a time by ``check_audio``


def check_audio(path: Path, sample_rate: int, allow_resample: bool = False,
                min_samples: int = 1) -> int:
    """``read_audio``'s checks without holding the whole file: the header (readable, mono,
    rate), then every block of samples (finite); returns the number of samples in the file
    (at its own rate). ``DataError`` naming the file, as ``read_audio`` raises it."""
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            channels, rate, frames = handle.channels, handle.samplerate, handle.frames
            if channels != 1:
                raise DataError(f"{path} has {channels} channels; only mono audio is accepted")
            if frames == 0:
                raise DataError(f"{path} is empty (no samples)")
            if rate != sample_rate and not allow_resample:
                raise DataError(
                    f"{path} is sampled at {rate} Hz but the model expects {sample_rate} Hz "
                    "(pass --resample to convert it)"
                )
            for block in handle.blocks(SCAN_BLOCK, dtype="float32", always_2d=True):
                if not np.all(np.isfinite(block)):
                    raise DataError(f"{path} contains NaN or infinite samples")
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise DataError(f"cannot read audio file {path}: {_one_line(exc)}") from None
    resampled = frames if rate == sample_rate else -(-frames * sample_rate // rate)
    if resampled < min_samples:
        raise DataError(
            f"{path} is too short: {resampled} samples, the model needs at least {min_samples}"
        )
    return frames


def read_span(path: Path, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of a mono file already checked by ``check_audio``, float32."""
    with sf.SoundFile(str(path)) as handle:
        handle.seek(start)
        return handle.read(stop - start, dtype="float32", always_2d=True)[:, 0]


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (libsndfile's may span several)."""
    return " ".join(str(exc).split())


def write_audio(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write float audio as 16-bit PCM, clipped to [-1, 1]."""
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")


def looped_clip(audio: list[np.ndarray], samples: int) -> np.ndarray:
    """``[1, samples]`` float32 of real audio: the clips concatenated, repeated when too short
    (timing inputs of a fixed length)."""
    joined = np.concatenate(audio)
    reps = -(-samples // len(joined))
    return np.tile(joined, reps)[None, :samples].astype(np.float32)
