"""Wall-clock limits for work that may hang: a pass, a user's model factory or ``forward``.

:func:`time_limit` arms ``signal.setitimer(ITIMER_REAL)`` with a ``SIGALRM`` handler that
raises inside the running Python code, so it stops Python-level hangs (``time.sleep``, a loop
that never ends, a blocking read that Python retries). Rules:

1. It only acts in the main thread of the main interpreter (only there can Python handle
   signals); elsewhere, on platforms without ``setitimer``, and for ``seconds=None`` it does
   nothing and the work runs unbounded.
2. The handler raises :class:`_Expired`, a ``BaseException``, so a broad ``except Exception``
   in the limited code (a pass, a user's model) cannot swallow it; on the way out it becomes
   the caller's typed error (``expired()``).
3. A native call (a long ONNX Runtime or torch kernel) is not interrupted: the handler runs when
   it returns to Python, so such a limit is late, never silent.
4. The previous ``SIGALRM`` handler and any timer already running (an outer limit, a test
   runner's) are restored afterwards, the timer with the time it has left (at least 1 ms, so an
   outer limit that passed meanwhile still fires).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# The smallest delay given back to an outer timer whose deadline passed while we held it.
_MIN_RESTORE_S = 1e-3


class _Expired(BaseException):
    """Raised by the ``SIGALRM`` handler of one :func:`time_limit` (never seen by callers)."""

    def __init__(self, token: object) -> None:
        super().__init__("time limit expired")
        self.token = token


def limits_enforceable() -> bool:
    """Whether :func:`time_limit` can act here (the main thread, a platform with setitimer)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def describe_limit(seconds: float) -> str:
    """``5 s``, ``0.5 s``: a limit as error messages quote it."""
    return f"{seconds:g} s"


@contextmanager
def time_limit(seconds: float | None, expired: Callable[[], BaseException]) -> Iterator[None]:
    """Run the ``with`` body for at most ``seconds`` of wall-clock time; past it, raise
    ``expired()`` (a typed error naming what was stopped). See the module docstring for where
    it acts and what it cannot interrupt."""
    if seconds is None or not limits_enforceable():
        yield
        return
    if seconds <= 0:
        raise ValueError(f"a time limit must be positive, got {seconds}")
    token = object()
    state = {"armed": True, "fired": False}

    def on_alarm(signum: int, frame: object) -> None:
        if state["armed"]:  # a late signal after the body ended is ignored
            state["fired"] = True
            raise _Expired(token)

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired as exc:
        if exc.token is not token:  # an enclosing limit's: not ours to translate
            raise
        raise expired() from None
    except BaseException as exc:
        # A native layer (pybind11, the TorchScript tracer) may re-wrap our exception as its own
        # type; once the alarm fired, whatever unwinds is the limit's doing.
        if state["fired"]:
            raise expired() from exc
        raise
    finally:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_delay > 0:
            left = outer_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, _MIN_RESTORE_S), outer_interval)
