"""Calibration readers handed to ONNX Runtime's quantizer, and the clips they serve.

ONNX Runtime's ``CalibrationDataReader`` accepts any object with ``get_next`` as a subclass (it
checks the method, not the inheritance), so this module needs no ONNX Runtime import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


def calibration_clips(audio: Sequence[np.ndarray], seconds: float, sample_rate: int,
                      limit: int) -> list[np.ndarray]:
    """Up to ``limit`` clips ``[1, <= seconds * rate]`` float32 cut from ``audio`` in order:
    every file gives its first window, then second windows, and so on, so a few long files
    and many short ones both yield varied material."""
    size = max(1, int(seconds * sample_rate))
    windows = [[a[i:i + size] for i in range(0, max(len(a) - size // 2, 1), size)] for a in audio]
    clips: list[np.ndarray] = []
    depth = 0
    while len(clips) < limit and any(depth < len(w) for w in windows):
        clips += [w[depth] for w in windows if depth < len(w)]
        depth += 1
    return [np.asarray(c, np.float32)[None, :] for c in clips[:limit]]


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
