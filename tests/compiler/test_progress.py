"""Progress bars: drawn on a terminal, silent in CI logs and pipes."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import numpy as np

from secompile.calibration.readers import ClipReader
from secompile.compiler.core.progress import Progress, silent, wanted
from secompile.compiler.core.versions import ROOT


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_an_interactive_terminal_outside_ci() -> None:
    assert wanted(_Terminal(), {})
    assert not wanted(_Terminal(), {"CI": "true"})
    assert not wanted(_Terminal(), {"TERM": "dumb"})
    assert not wanted(io.StringIO(), {})


def test_a_bar_redraws_in_place_and_ends_its_line() -> None:
    out = _Terminal()
    with Progress(4, "work", stream=out, interval=0) as bar:
        for _ in range(4):
            bar.update()
    text = out.getvalue()
    assert text.count("\r") >= 4 and text.endswith("\n")
    assert "work [########################] 4/4" in text
    quiet = io.StringIO()
    items = list(Progress(3, "x", stream=quiet, enabled=False).wrap("abc"))
    assert items == ["a", "b", "c"] and quiet.getvalue() == ""
    assert silent(3, "x").enabled is False


def test_calibration_reader_reports_each_clip() -> None:
    seen = []
    reader = ClipReader("noisy", [np.zeros((1, 8), np.float32)] * 3, lambda: seen.append(1))
    assert len(list(reader)) == 3 and len(seen) == 3


def test_build_draws_bars_on_a_terminal_and_none_in_a_pipe(tmp_path) -> None:
    """The same build twice: stderr on a pseudo-terminal gets bars; a pipe (CI logs) none."""
    command = [sys.executable, "-m", "secompile", "build", "--pipeline",
               "fuse-conv-bn,export-onnx,validate{repeats=2 long_repeats=1 batch=2 memory=false}",
               "--no-ray", "--no-cache"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    leader, follower = pty.openpty()
    with subprocess.Popen([*command, "--out", str(tmp_path / "tty")], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=follower) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the pseudo-terminal closes when the build exits
                break
            if not data:
                break
            chunks.append(data)
    os.close(leader)
    assert proc.returncode == 0
    tty_text = b"".join(chunks).decode(errors="replace")
    assert "validate: scoring evaluation pairs [" in tty_text and "\r" in tty_text
    piped = subprocess.run([*command, "--out", str(tmp_path / "pipe")], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True)
    assert "\r" not in piped.stderr and "scoring evaluation pairs [" not in piped.stderr
