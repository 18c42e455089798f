"""Data-flow views of torch modules for passes that rewrite them (via ``torch.export``).

Module attribute order proves nothing about how a model is called; the exported ATen graph
does. Each call node carries the module path that issued it, which lets a pass map a graph
pattern back to the eager submodules it will rewrite.
"""

from __future__ import annotations

import warnings

import torch


def trace_graph(module: torch.nn.Module, example: torch.Tensor) -> torch.fx.Graph:
    """The ATen graph of ``module(example)`` (non-strict ``torch.export``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GRU flat-weight notices; not actionable here
        return torch.export.export(module, (example,), strict=False).graph


def example_batch(artifact: object, audio: object) -> torch.Tensor:
    """Tracing input: one second of ``audio`` (``[1, L]``) twice, ``[2, sample_rate]``.

    Batch 2, because a batch-1 example lets tracers and exporters specialise the batch axis.
    """
    return torch.as_tensor(audio[:, : artifact.info.sample_rate]).repeat(2, 1)


def graph_of_artifact(artifact: object, audio: object) -> tuple[torch.fx.Graph | None, str]:
    """The ATen graph of a torch artifact on a batch of two clips of ``audio`` (``[1, L]``).

    Returns ``(graph, "")``, or ``(None, reason)`` when the model cannot be traced: a rewrite
    pass then reports the reason and leaves the model as it is.
    """
    module = artifact.module
    if isinstance(module, torch.jit.ScriptModule):
        return None, "TorchScript module"
    try:
        return trace_graph(module, example_batch(artifact, audio)), ""
    except Exception as exc:  # noqa: BLE001  (any tracing failure is reported, not fatal)
        return None, f"torch.export could not trace the model: {type(exc).__name__}: {exc}"


def module_path(node: torch.fx.Node) -> str | None:
    """Path of the innermost module that issued ``node`` (``""`` for the root), or None."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def within(path: str | None, scope: str) -> bool:
    """Whether module ``path`` is ``scope`` or one of its descendants."""
    return path is not None and (path == scope or path.startswith(scope + "."))


def op_name(node: torch.fx.Node) -> str:
    """Short name of a call node: ``gru`` for ``aten.gru.input``, ``getitem`` for getitem."""
    target = str(node.target)
    if target.startswith("aten."):
        return target.split(".")[1]
    return getattr(node.target, "__name__", target)
