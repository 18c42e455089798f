"""Calibration readers handed to ONNX Runtime's quantizer, and the clips they serve.

ONNX Runtime's ``CalibrationDataReader`` accepts any object with ``get_next`` as a subclass (it
checks the method, not the inheritance), so this module needs no ONNX Runtime import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


def calibration_clips(audio: Sequence[np.ndarray], seconds: float, sample_rate: int,
                      limit: int) -> list[np.ndarray]:
    """Up to ``limit`` clips ``[1, N]`` float32 cut from ``audio`` in order, all of one length
    ``N``: every file gives its first window, then second windows, and so on, so a few long
    files and many short ones both yield varied material.

    ``N`` is ``seconds * sample_rate``, or the longest file when every file is shorter. ONNX
    Runtime's histogram calibrators stack each tensor's values across clips, so clips of mixed
    lengths (a folder of real recordings) would not fit: a file's last partial window (kept when
    it holds at least half a window) is taken as its last ``N`` samples instead, and a file
    shorter than ``N`` is looped to ``N``.
    """
    longest = max((len(a) for a in audio), default=0)
    if longest == 0:
        return []
    size = min(max(1, int(seconds * sample_rate)), longest)
    windows = [_windows(np.asarray(a, np.float32), size) for a in audio if len(a)]
    clips: list[np.ndarray] = []
    depth = 0
    while len(clips) < limit and any(depth < len(w) for w in windows):
        clips += [w[depth] for w in windows if depth < len(w)]
        depth += 1
    return [c[None, :] for c in clips[:limit]]


def _windows(wav: np.ndarray, size: int) -> list[np.ndarray]:
    """``wav`` cut into windows of exactly ``size`` samples (see ``calibration_clips``)."""
    if len(wav) < size:
        return [np.tile(wav, -(-size // len(wav)))[:size]]
    starts = list(range(0, len(wav) - size + 1, size))
    tail = len(wav) - (starts[-1] + size)
    if tail >= size // 2 and tail > 0:
        starts.append(len(wav) - size)
    return [np.ascontiguousarray(wav[s:s + size]) for s in starts]


class ClipReader:
    """Feeds each clip ``[1, L]`` once as the model's waveform input (ONNX Runtime's
    calibration-reader protocol: ``get_next``, iteration, ``rewind``); ``on_clip`` is called
    after each clip served (a progress bar's ``update``)."""

    def __init__(self, input_name: str, clips: Sequence[np.ndarray],
                 on_clip: Callable[[], object] | None = None) -> None:
        self.input_name = input_name
        self.clips = list(clips)
        self.on_clip = on_clip
        self._iterator: Iterator[np.ndarray] = iter(self.clips)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next clip as an input feed, or ``None`` when all were served."""
        clip = next(self._iterator, None)
        if clip is not None and self.on_clip is not None:
            self.on_clip()
        return None if clip is None else {self.input_name: clip}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def rewind(self) -> None:
        """Serve the clips again from the first."""
        self._iterator = iter(self.clips)
