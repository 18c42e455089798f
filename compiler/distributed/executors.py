"""Where independent work runs: in this process, or as tasks on a Ray cluster.

An :class:`~secompile.compiler.core.executor.Executor` maps a top-level function over a list
of items and returns the results in item order, so a caller reduces them exactly as it would
have serially. ``SerialExecutor`` (in ``compiler.core``) runs in process; ``RayExecutor``
runs one Ray task per item on a local Ray it starts (``--ray auto``) or on an existing cluster
it joins (``--ray ADDRESS``), with retries for tasks whose worker dies. Ray is an optional
extra (``pip install 'secompile[distributed]'``); without it, and with ``--no-ray``, everything
runs serially with the same results.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

from secompile.compiler.core.errors import ConfigError, SecompileError
from secompile.compiler.core.executor import Executor, SerialExecutor

TASK_RETRIES = 3


def ray_installed() -> bool:
    """Whether Ray can be imported here."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


class RayExecutor(Executor):
    """Runs each item as a Ray task: on a local Ray started on first use (``address=None``), or
    on the cluster at ``address`` (``HOST:PORT`` of a head started with ``ray start --head``).

    A task whose worker process dies is retried up to ``TASK_RETRIES`` times; an exception the
    function raises is not retried and reaches the caller as the original exception.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 fallback: bool = False) -> None:
        if not ray_installed():
            raise ConfigError("Ray is not installed (pip install 'secompile[distributed]'), "
                              "so --ray cannot be used; --no-ray runs serially")
        self.address = address
        self.num_cpus = num_cpus
        self.fallback = fallback  # --ray auto: a local Ray that cannot start means serial
        self._failed: str | None = None
        self._started = False
        self._remotes: dict[Callable, Any] = {}

    def _ensure(self) -> Any:
        import ray

        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if self.address:
                _check_reachable(self.address)
                options["address"] = self.address
            else:
                options.update(num_cpus=self.num_cpus or os.cpu_count() or 1,
                               object_store_memory=200 * 1024 * 1024)
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = (f"join the Ray cluster at {self.address}" if self.address
                         else "start a local Ray")
                raise ConfigError(f"cannot {where}: {exc} (--no-ray runs serially)") from None
            self._started = True
        return ray

    @property
    def usable(self) -> bool:
        """Whether Ray is running or could be started; with ``fallback`` a failed local start
        is logged once and reported here, so the caller runs serially instead."""
        if self._failed is not None:
            return False
        try:
            self._ensure()
        except ConfigError as exc:
            if not self.fallback:
                raise
            self._failed = str(exc)
            logging.getLogger("secompile").warning("%s; running serially", exc)
            return False
        return True

    @property
    def workers(self) -> int:
        if not self.usable:
            return 1
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def nodes(self) -> int:
        """How many live nodes the cluster has."""
        ray = self._ensure()
        return sum(1 for node in ray.nodes() if node.get("Alive"))

    def largest_node_cpus(self) -> float:
        if not self.usable:
            return super().largest_node_cpus()
        import ray

        return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes()
                    if node.get("Alive")), default=1.0)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            num_cpus: float | Sequence[float] = 1,
            num_gpus: float | Sequence[float] = 0,
            return_exceptions: bool = False) -> list[Any]:
        if not self.usable:
            return super().map(fn, items, num_cpus, num_gpus, return_exceptions)
        import ray

        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = ray.remote(fn)
        cpus, gpus = _per_item(num_cpus, len(items)), _per_item(num_gpus, len(items))
        refs = [remote.options(num_cpus=c, num_gpus=g, max_retries=TASK_RETRIES,
                               retry_exceptions=False).remote(item)
                for item, c, g in zip(items, cpus, gpus, strict=True)]
        results: list[Any] = []
        try:
            for ref in refs:  # one at a time: a lost task must not hide the others' results
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayError as exc:
                    error = _task_error(exc)
                    if not return_exceptions:
                        raise error from None
                    results.append(error)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        return results

    def describe(self) -> dict[str, Any]:
        if not self.usable:
            return {"executor": "serial", "workers": 1, "ray_failed": self._failed}
        return {"executor": self.name, "workers": self.workers, "nodes": self.nodes(),
                "address": self.address or "local"}

    def settings(self) -> dict[str, Any]:
        if self._failed is not None or not self._started:
            return {"executor": "ray", "address": self.address or "local",
                    "used": False, "failed": self._failed}
        return {**self.describe(), "used": True}

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (``ConfigError``) when a ``HOST:PORT`` cluster address does not answer: Ray's
    own connection attempt retries for minutes before giving up."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # a ray:// client address or a name Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: "
                          f"{exc.strerror or exc}") from None


def _task_error(exc: Exception) -> Exception:
    """The error a failed Ray task stands for: the task's own ``SecompileError`` as it was
    raised, anything else as one line naming its type (Ray's text carries a remote traceback
    and terminal colours), and a worker lost beyond its retries as a ``RuntimeError``."""
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, SecompileError):
            return cause
        return RuntimeError(f"{type(cause).__name__}: {cause}")
    return RuntimeError(f"a Ray task was lost ({type(exc).__name__}) after {TASK_RETRIES} "
                        f"retries: {str(exc).strip().splitlines()[-1] if str(exc) else ''}")


def _per_item(value: float | Sequence[float], count: int) -> list[float]:
    return list(value) if isinstance(value, Sequence) else [value] * count


_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def make_executor(ray: str | None) -> Executor:
    """The executor for a ``--ray`` setting: ``None``/``"off"`` serial; ``"auto"`` a local Ray
    when Ray is installed and this machine has more than one CPU, else serial; anything else
    the ``HOST:PORT`` (or ``ray://HOST:PORT``) of a cluster to join, checked here: a typo is a
    ``ConfigError`` before any work, not a failure at validation time."""
    if ray in (None, "off"):
        return SerialExecutor()
    if ray == "auto":
        use = ray_installed() and (os.cpu_count() or 1) > 1
        return RayExecutor(fallback=True) if use else SerialExecutor()
    if not _ADDRESS.match(ray):
        raise ConfigError(f"--ray {ray!r} is not 'auto' or a cluster address HOST:PORT")
    executor = RayExecutor(address=ray)
    _check_reachable(ray)
    return executor


def balance(durations: Sequence[float], bins: int) -> list[list[int]]:
    """Split item indices into at most ``bins`` groups of near-equal total duration: longest
    first, each onto the group with the least work so far (LPT), so workers finish together.
    Each group keeps its indices in ascending order; empty groups are dropped."""
    groups: list[list[int]] = [[] for _ in range(max(1, bins))]
    loads = [0.0] * len(groups)
    for index in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        target = min(range(len(groups)), key=lambda g: (loads[g], g))
        groups[target].append(index)
        loads[target] += durations[index]
    return [sorted(g) for g in groups if g]
