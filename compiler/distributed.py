"""Where independent work runs: in this process, or as tasks on a Ray cluster.

An :class:`Executor` maps a top-level function over a list of items and returns the results in
item order, so a caller reduces them exactly as it would have serially. ``SerialExecutor`` runs
in process; ``RayExecutor`` runs one Ray task per item on a local Ray it starts (``--ray auto``)
or on an existing cluster it joins (``--ray ADDRESS``), with retries for tasks whose worker
dies. Ray is an optional extra (``pip install 'secompile[distributed]'``); without it, and with
``--no-ray``, everything runs serially with the same results.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from compiler.errors import ConfigError

TASK_RETRIES = 3


def ray_installed() -> bool:
    """Whether Ray can be imported here."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


class Executor:
    """Maps a function over items; results come back in item order."""

    name = "serial"

    @property
    def workers(self) -> int:
        """How many items can usefully run at once."""
        return 1

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            num_cpus: float | Sequence[float] = 1,
            num_gpus: float | Sequence[float] = 0) -> list[Any]:
        """``[fn(item) for item in items]``, each call given ``num_cpus``/``num_gpus`` (one
        value for all, or one per item)."""
        return [fn(item) for item in items]

    def largest_node_cpus(self) -> float:
        """The most CPUs one task can get (a task asking for more would never run)."""
        return float(os.cpu_count() or 1)

    def describe(self) -> dict[str, Any]:
        """Plain-data description for reports."""
        return {"executor": self.name, "workers": self.workers}

    def close(self) -> None:
        """Release what the executor started."""


class SerialExecutor(Executor):
    """Runs everything in this process, in order."""


class RayExecutor(Executor):
    """Runs each item as a Ray task: on a local Ray started on first use (``address=None``), or
    on the cluster at ``address`` (``HOST:PORT`` of a head started with ``ray start --head``).

    A task whose worker process dies is retried up to ``TASK_RETRIES`` times; an exception the
    function raises is not retried and reaches the caller as the original exception.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        if not ray_installed():
            raise ConfigError("Ray is not installed (pip install 'secompile[distributed]'), "
                              "so --ray cannot be used; --no-ray runs serially")
        self.address = address
        self.num_cpus = num_cpus
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
            except (ConnectionError, RuntimeError) as exc:
                where = (f"join the Ray cluster at {self.address}" if self.address
                         else "start a local Ray")
                raise ConfigError(f"cannot {where}: {exc} (--no-ray runs serially)") from None
            self._started = True
        return ray

    @property
    def workers(self) -> int:
        ray = self._ensure()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def nodes(self) -> int:
        """How many live nodes the cluster has."""
        ray = self._ensure()
        return sum(1 for node in ray.nodes() if node.get("Alive"))

    def largest_node_cpus(self) -> float:
        ray = self._ensure()
        return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes()
                    if node.get("Alive")), default=1.0)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            num_cpus: float | Sequence[float] = 1,
            num_gpus: float | Sequence[float] = 0) -> list[Any]:
        ray = self._ensure()
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = ray.remote(fn)
        cpus, gpus = _per_item(num_cpus, len(items)), _per_item(num_gpus, len(items))
        refs = [remote.options(num_cpus=c, num_gpus=g, max_retries=TASK_RETRIES,
                               retry_exceptions=False).remote(item)
                for item, c, g in zip(items, cpus, gpus, strict=True)]
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers, "nodes": self.nodes(),
                "address": self.address or "local"}

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


def _per_item(value: float | Sequence[float], count: int) -> list[float]:
    return list(value) if isinstance(value, Sequence) else [value] * count


def make_executor(ray: str | None) -> Executor:
    """The executor for a ``--ray`` setting: ``None``/``"off"`` serial; ``"auto"`` a local Ray
    when Ray is installed, else serial; anything else the address of a Ray cluster to join."""
    if ray in (None, "off"):
        return SerialExecutor()
    if ray == "auto":
        return RayExecutor() if ray_installed() else SerialExecutor()
    return RayExecutor(address=ray)


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
