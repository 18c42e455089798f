"""``PassContext``: everything a pass may use, handed in explicitly."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from secompile.compiler.core.executor import Executor, SerialExecutor
from secompile.compiler.core.progress import ProgressFactory, silent

if TYPE_CHECKING:
    from secompile.calibration.datasets import AudioFolder, PairedFolder
    from secompile.compiler.core.artifact import Artifact
    from secompile.targets.base import Target


@dataclass
class PassContext:
    """Target, data, scratch space and settings for one pipeline run.

    ``baseline`` is the fp32 torch model as loaded, the reference that validation and parity
    checks compare against; ``parity_audio`` is a short real clip ``[1, L]`` for those checks.
    ``outputs`` maps the file name of every side output written so far in this pipeline (a
    ``PassResult.files`` entry, e.g. ``model_stream.onnx``) to where it is, fresh or cached; the
    manager fills it, later passes read it. ``executor`` is where independent work such as
    scoring evaluation files may run (in process, or on Ray); results never depend on it.
    ``progress`` makes progress bars for long loops (silent unless the CLI runs on a terminal).
    ``checkpoints`` is where long training runs keep resumable checkpoints (in the cache folder,
    so a build interrupted mid-training resumes; ``None``: no checkpoints). ``torch_model`` is
    the last torch form of the model in this pipeline, kept by the manager: the model that side
    outputs written from it (the stream) must match, which ``prune`` and ``distill`` make
    differ from ``baseline``.
    """

    target: Target
    workdir: Path
    baseline: Artifact
    parity_audio: object  # np.ndarray [1, L], float32
    evaluation: PairedFolder | None = None
    calibration: AudioFolder | None = None
    threads: int = 1
    seed: int = 0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("secompile"))

    outputs: dict[str, Path] = field(default_factory=dict)
    executor: Executor = field(default_factory=SerialExecutor)
    pass_dir: Path | None = None
    progress: ProgressFactory = silent
    checkpoints: Path | None = None
    torch_model: Artifact | None = None

    def with_pass_dir(self, index: int, pass_name: str) -> PassContext:
        """A copy whose ``pass_dir`` is a fresh scratch folder for the ``index``-th pass."""
        path = self.workdir / f"{index:02d}-{pass_name}"
        path.mkdir(parents=True, exist_ok=True)
        return replace(self, pass_dir=path)
