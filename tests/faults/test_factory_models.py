"""Fault suite, user factory models (``secompile build FILE.py:factory``): a factory that
raises, a ``forward`` that raises, returns NaN or another length than its input, and code that
hangs (in the factory, in ``forward``, or only while a pass runs it). Each is a one-line
``error:`` naming what is wrong, a non-zero exit (2 for the user's model, 1 for a pass past
``--pass-timeout``), and no artifact or cache entry written.

Also the pieces behind it, in process: the waveform contract check, ``load_checked``'s time
limits, ``time_limit`` itself (the previous ``SIGALRM`` handler and timer come back) and the
``PassManager``'s per-pass limit (no cache entry for an aborted pass).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from secompile.compiler.app.build import BuildRequest
from secompile.compiler.core.cache import PassCache
from secompile.compiler.core.errors import ConfigError, ModelError, PassError
from secompile.compiler.core.limits import limits_enforceable, time_limit
from secompile.compiler.core.manager import PassManager
from secompile.compiler.core.pass_base import Pass, PassResult
from secompile.models.registry import check_waveform_contract, from_module, load_checked
from tests.faults.harness import (
    CliResult,
    Observation,
    Probe,
    files_under,
    in_process,
    named_error,
)

AREA = "factory model"
LIMIT_S = 1  # --pass-timeout of the hang probes

# The user's model file: one factory per fault. ``Gain`` keeps the waveform contract.
FACTORIES = '''
import time

import torch
from torch import nn


class Gain(nn.Module):
    def __init__(self, fault: str = "") -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1)
        self.fault = fault

    def forward(self, wav):
        if self.fault == "raise":
            raise ValueError("shape mismatch in my layer")
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "hang-in-pass" and (torch.onnx.is_in_onnx_export()
                                             or torch.jit.is_tracing()):
            while True:  # a data-dependent loop that never ends on the traced input
                pass
        out = self.conv(wav.unsqueeze(1)).squeeze(1)
        if self.fault == "nan":
            return out * float("nan")
        if self.fault == "short":
            return out[:, : out.shape[-1] // 2]
        return out


def good():
    return Gain()


def raises():
    raise RuntimeError("checkpoint directory not configured")


def forward_raises():
    return Gain("raise")


def returns_nan():
    return Gain("nan")


def returns_short():
    return Gain("short")


def hangs():
    time.sleep(3600)


def forward_hangs():
    return Gain("hang")


def hangs_in_pass():
    return Gain("hang-in-pass")
'''


def model_file(tmp: Path) -> Path:
    """The user's ``models.py`` under ``tmp``."""
    path = tmp / "user_models.py"
    path.write_text(FACTORIES)
    return path


def build(tmp: Path, factory: str, *extra: str) -> CliResult:
    """``secompile build user_models.py:<factory>`` with the cheapest pipeline."""
    return in_process(["build", f"{model_file(tmp)}:{factory}", "--out", tmp / "out",
                       "--pipeline", "export-onnx", "--no-ray", "--quiet", *extra],
                      cwd=tmp, env={"XDG_CACHE_HOME": str(tmp / "xdg")})


def nothing_written(tmp: Path, seen: Observation) -> Observation:
    """``seen``, failed if the build left a file in its output folder or its cache."""
    left = {f"{where}/{name}" for where in ("out", "cache") if (tmp / where).exists()
            for name in files_under(tmp / where)}
    return Observation(False, f"{seen.observed}; left {sorted(left)[:3]}") if left else seen


def user_error(factory: str, *needles: str, extra: tuple[str, ...] = ("--no-cache",)):
    """A probe run: build ``factory``, expect exit 2 naming ``needles``, nothing written."""

    def run(tmp: Path) -> Observation:
        result = build(tmp, factory, *extra)
        return nothing_written(tmp, named_error(result, f"user_models.py:{factory}", *needles))

    return run


def probe_hang_in_pass(tmp: Path) -> Observation:
    result = build(tmp, "hangs_in_pass", "--cache-dir", str(tmp / "cache"),
                   "--pass-timeout", str(LIMIT_S))
    seen = named_error(result, "pass 'export-onnx'", f"time limit of {LIMIT_S} s",
                       "--pass-timeout", exit_code=1)
    return nothing_written(tmp, seen)


TIMEOUT = ("--no-cache", "--pass-timeout", str(LIMIT_S))
PROBES: list[Probe] = [
    Probe(AREA, "factory raises", "exit 2, names the factory and its exception",
          user_error("raises", "raised RuntimeError", "checkpoint directory")),
    Probe(AREA, "forward raises", "exit 2, names the model: forward raised, before any pass",
          user_error("forward_raises", "forward raised ValueError")),
    Probe(AREA, "forward returns NaN", "exit 2, names the model: NaN output",
          user_error("returns_nan", "NaN")),
    Probe(AREA, "forward returns another length", "exit 2, names the model: output shape",
          user_error("returns_short", "shape [1, 8000]", "as long as its input")),
    Probe(AREA, "factory hangs", "exit 2 after --pass-timeout, names the model",
          user_error("hangs", "loading", "time limit", extra=TIMEOUT)),
    Probe(AREA, "forward hangs", "exit 2 after --pass-timeout, names the model: forward",
          user_error("forward_hangs", "forward", "time limit", extra=TIMEOUT)),
    Probe(AREA, "forward hangs inside a pass",
          "exit 1, names the pass and --pass-timeout; no artifact, no cache entry",
          probe_hang_in_pass),
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe: Probe, tmp_path: Path) -> None:
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


# --- the waveform contract and load_checked, in process ----------------------------------------


class _Model(nn.Module):
    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def forward(self, wav: torch.Tensor):
        return self.out(wav)


def _contract_error(out) -> str:
    with pytest.raises(ModelError) as info:
        check_waveform_contract(from_module(_Model(out)))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    return str(info.value)


def test_contract_names_each_fault() -> None:
    assert "_Model: forward raised ZeroDivisionError" in _contract_error(lambda w: 1 / 0)
    assert "16000 NaN or infinite" in _contract_error(lambda w: w / 0)
    assert "shape [1, 15999]" in _contract_error(lambda w: w[:, 1:])
    assert "returned tuple" in _contract_error(lambda w: (w, w))
    assert "torch.int64 tensor" in _contract_error(lambda w: w.long())
    check_waveform_contract(from_module(_Model(lambda w: w * 0.5)))  # control: the contract


def test_load_checked_limits_a_hanging_factory(tmp_path: Path) -> None:
    if not limits_enforceable():
        pytest.skip("time limits act only in the main thread")
    path = model_file(tmp_path)
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"loading .* time limit of 0.3 s \(--pass-timeout\)"):
        load_checked(f"{path}:hangs", timeout=0.3)
    with pytest.raises(ModelError, match=r"forward on 1 s of audio did not finish"):
        load_checked(f"{path}:forward_hangs", timeout=0.3)
    assert time.monotonic() - started < 10
    assert load_checked(f"{path}:good", timeout=30).format == "torch"  # control


# --- time_limit ----------------------------------------------------------------------------------


class _Late(Exception):
    pass


needs_main_thread = pytest.mark.skipif(not limits_enforceable(),
                                       reason="time limits act only in the main thread")


@needs_main_thread
def test_time_limit_raises_the_typed_error_and_restores_the_handler() -> None:
    def previous(signum, frame) -> None:  # a handler someone else (a test runner) installed
        pass

    before = signal.signal(signal.SIGALRM, previous)
    try:
        with pytest.raises(_Late), time_limit(0.2, lambda: _Late("late")):
            try:
                time.sleep(30)
            except Exception:  # noqa: BLE001  (user code that swallows every error)
                pytest.fail("the limit was swallowed by `except Exception`")
        assert signal.getsignal(signal.SIGALRM) is previous
        with time_limit(5, lambda: _Late("late")):
            pass
        assert signal.getsignal(signal.SIGALRM) is previous
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "no timer left running"
    finally:
        signal.signal(signal.SIGALRM, before)


@needs_main_thread
def test_an_outer_timer_keeps_its_deadline() -> None:
    class _Outer(BaseException):
        pass

    def outer(signum, frame) -> None:
        raise _Outer

    before = signal.signal(signal.SIGALRM, outer)
    signal.setitimer(signal.ITIMER_REAL, 0.6)
    try:
        with pytest.raises(_Outer):
            with time_limit(5, lambda: _Late("inner")):
                time.sleep(1.5)  # the outer deadline passes while the inner limit holds
            time.sleep(5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_time_limit_does_nothing_off_the_main_thread_or_without_a_limit() -> None:
    seen = []

    def worker() -> None:
        seen.append(limits_enforceable())
        with time_limit(0.01, lambda: _Late("late")):
            time.sleep(0.05)
        seen.append("done")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [False, "done"]
    with time_limit(None, lambda: _Late("late")):
        time.sleep(0.01)


# --- the manager's per-pass limit --------------------------------------------------------------


class _Sleeps(Pass):
    """Returns its input after ``seconds`` (a pass that hangs, for large ``seconds``)."""

    name = "sleepy"
    seconds = 0.0

    def run(self, artifact, ctx) -> PassResult:
        time.sleep(self.seconds)
        return PassResult(artifact, False)


class _Hangs(_Sleeps):
    name = "hangs"
    seconds = 60.0


@needs_main_thread
def test_pass_past_its_limit_is_a_pass_error_and_leaves_no_cache_entry(
        tiny, make_ctx, tmp_path) -> None:
    cache = PassCache(tmp_path / "cache")
    manager = PassManager([_Sleeps(), _Hangs()], cache=cache, pass_timeout=0.3)
    with pytest.raises(PassError) as info:
        manager.run(tiny, make_ctx(tiny))
    assert info.value.pass_name == "hangs" and info.value.completed == ("sleepy",)
    assert "exceeded its time limit of 0.3 s (--pass-timeout)" in str(info.value)
    keys = manager.keys(tiny, make_ctx(tiny))
    assert cache.lookup(keys[0]) is not None, "the pass that finished is cached"
    assert cache.lookup(keys[1]) is None, "the aborted pass left an entry"
    left = {p.name for p in (tmp_path / "cache").rglob("*")}
    assert keys[1] not in left and not any(n.startswith(".tmp-") for n in left), left
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_pass_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass timeout"):
        PassManager([], pass_timeout=0)
    with pytest.raises(ConfigError, match="pass timeout"):
        BuildRequest(model=None, out=tmp_path, pass_timeout=-1)
    assert BuildRequest(model=None, out=tmp_path).pass_timeout is None  # default: no limit
    from secompile.compiler.app.cli import main

    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path), "--pass-timeout", "0"])
    assert result.exit_code == 2 and "--pass-timeout" in result.output


class _HangsWhenExported(nn.Module):
    """Keeps the waveform contract in eager mode; loops forever while being exported."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            while True:
                pass
        return self.conv(wav.unsqueeze(1)).squeeze(1)


@needs_main_thread
def test_python_api_pass_timeout(tmp_path: Path) -> None:
    import secompile

    with pytest.raises(PassError, match=r"'export-onnx' failed: exceeded its time limit of 0.5 s"):
        secompile.build(_HangsWhenExported(), out=tmp_path / "out", pipeline="export-onnx",
                        cache_dir=False, pass_timeout=0.5)
    assert not files_under(tmp_path / "out")
    with pytest.raises(ConfigError, match="pass timeout"):
        secompile.build(_HangsWhenExported(), out=tmp_path / "out", pass_timeout=0)
