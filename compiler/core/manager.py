"""``PassManager``: validates a pipeline up front, then runs it with instruments and a cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secompile.compiler.core.cache import CacheEntry, PassCache, cache_key
from secompile.compiler.core.errors import ConfigError, PassError, SecompileError, UserError
from secompile.compiler.core.instruments import Instrument, record_defaults
from secompile.compiler.core.limits import describe_limit, time_limit
from secompile.compiler.core.pass_base import Pass, PassResult
from secompile.compiler.core.pipeline import PipelineSpec, canonical_text
from secompile.compiler.core.versions import code_hash, library_versions

if TYPE_CHECKING:
    from secompile.compiler.core.artifact import Artifact
    from secompile.compiler.core.context import PassContext
    from secompile.targets.base import Target


@dataclass
class PipelineRun:
    """The outcome of a pipeline: the final artifact, per-pass results and records."""

    artifact: Artifact
    pipeline: str
    results: list[PassResult] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cache_hits(self) -> list[str]:
        """Names of the passes whose output came from the cache."""
        return [r["name"] for r in self.records if r["cache"] == "hit"]

    def metrics_of(self, pass_name: str) -> dict[str, Any]:
        """Metrics of the last run of ``pass_name`` (empty when it did not run)."""
        for record in reversed(self.records):
            if record["name"] == pass_name:
                return record["metrics"]
        return {}


class PassManager:
    """Runs validated passes in order; on failure raises a ``PassError`` naming the pass.

    ``instruments`` are the hooks called around every pass that runs (none by default: the
    application passes :func:`secompile.compiler.runtime.parity.default_instruments`, timing,
    memory and the parity verifier); ``cache`` serves and stores pass outputs; ``listener``
    receives each pass's record as it completes. ``pass_timeout`` (seconds, ``None``: no limit)
    bounds each pass with its instruments (:func:`~secompile.compiler.core.limits.time_limit`:
    main thread only, Python-level hangs); a pass past it raises ``PassError`` and, like any
    failed pass, leaves no cache entry.
    """

    def __init__(
        self,
        passes: list[Pass],
        instruments: list[Instrument] | None = None,
        cache: PassCache | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
        pass_timeout: float | None = None,
    ) -> None:
        if pass_timeout is not None and not pass_timeout > 0:
            raise ConfigError(f"pass timeout must be a positive number of seconds, "
                              f"got {pass_timeout}")
        self.passes = passes
        self.instruments = list(instruments or ())
        self.cache = cache
        self.listener = listener
        self.pass_timeout = pass_timeout

    @classmethod
    def from_spec(cls, spec: PipelineSpec, target: Target, **kwargs: Any) -> PassManager:
        """Validate ``spec`` for ``target`` (raising ``ConfigError``) and build a manager."""
        return cls(spec.resolve(target), **kwargs)

    @property
    def pipeline_text(self) -> str:
        """The canonical one-line form of the pipeline."""
        return canonical_text(self.passes)

    def keys(self, artifact: Artifact, ctx: PassContext) -> list[str]:
        """The cache key of every pass, known before anything runs (each chains the last)."""
        keys, key = [], artifact.content_hash()
        for p in self.passes:
            key = cache_key({
                "input": key,
                "pass": p.name,
                "config": p.config.canonical(),
                "extra": p.cache_inputs(ctx),
                "target": ctx.target.name,
                "versions": library_versions(),
                "code": code_hash(),
            })
            keys.append(key)
        return keys

    def _resume_point(self, entries: list[CacheEntry | None]) -> int:
        """Index of the last pass whose cached file artifact can be served with every pass
        before it cached too; -1 when the pipeline must start from the input model.

        Never past a ``state`` entry (``prune``, ``distill``): later passes compare against
        the torch model it rebuilds (``PassContext.torch_model``), and rebuilding it needs the
        torch passes before it to run (cheap rewrites; the state entries themselves load)."""
        for index in range(len(entries) - 1, -1, -1):
            head = entries[: index + 1]
            if any(e and e.kind == "state" for e in head):
                continue
            if entries[index] and entries[index].kind == "file" and all(head):
                return index
        return -1

    def run(self, artifact: Artifact, ctx: PassContext) -> PipelineRun:
        """Run every pass on ``artifact``; return the final artifact and the records."""
        run = PipelineRun(artifact, self.pipeline_text)
        keys = self.keys(artifact, ctx) if self.cache else [None] * len(self.passes)
        entries = [self.cache.lookup(k) for k in keys] if self.cache else [None] * len(keys)
        resume = self._resume_point(entries)
        completed: list[str] = []
        ctx.torch_model = artifact if artifact.format == "torch" else None
        for index, (p, key, entry) in enumerate(zip(self.passes, keys, entries, strict=True)):
            record = record_defaults(p)
            if index < resume:  # superseded by a later cached artifact: reuse its record only
                result = PassResult(artifact, entry.meta["modified"], entry.meta["metrics"],
                                    entry.files)
                record.update(cache="hit", seconds=0.0)
            elif entry is not None and entry.kind != "torch" and \
                    (result := self._served(entry, artifact, p, ctx)) is not None:
                record.update(cache="hit", seconds=0.0)
            else:
                result = self._run_one(index, p, artifact, ctx, record, tuple(completed))
                record["cache"] = "miss" if self.cache else "off"
                if self.cache:
                    self._store(key, artifact, result, ctx, p)
            record.update(modified=result.modified, metrics=result.metrics, cache_key=key)
            run.records.append(record)
            run.results.append(result)
            ctx.outputs.update({path.name: path for path in result.files})
            if self.listener:
                self.listener(record)
            artifact = result.artifact
            if artifact.format == "torch" and index >= resume:
                ctx.torch_model = artifact
            completed.append(p.name)
        run.artifact = artifact
        return run

    @staticmethod
    def _served(entry: CacheEntry, artifact: Artifact, p: Pass, ctx: PassContext
                ) -> PassResult | None:
        """The cached result, or None (the pass runs again) when a ``state`` entry no longer
        fits its input model."""
        try:
            return entry.result(artifact, p.restore)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            ctx.logger.warning("cache entry %s of '%s' could not be used (%s); running it",
                               entry.key[:12], p.name, exc)
            return None

    def _store(self, key: str, source: Artifact, result: PassResult, ctx: PassContext,
               p: Pass) -> None:
        keep_state = type(p).restore is not Pass.restore
        try:
            self.cache.store(key, source, result, keep_state)
        except OSError as exc:  # a full or read-only cache must not fail a good build
            ctx.logger.warning("could not store %s in the cache: %s", key[:12], exc)

    def _run_one(
        self,
        index: int,
        p: Pass,
        artifact: Artifact,
        ctx: PassContext,
        record: dict,
        completed: tuple[str, ...],
    ) -> PassResult:
        def expired() -> PassError:
            return PassError(p.name, f"exceeded its time limit of "
                             f"{describe_limit(self.pass_timeout)} (--pass-timeout)", completed)

        try:
            with time_limit(self.pass_timeout, expired):
                for instrument in self.instruments:
                    instrument.before_pass(p, artifact, ctx, record)
                result = p.run(artifact, ctx.with_pass_dir(index, p.name))
                for instrument in self.instruments:
                    instrument.after_pass(p, artifact, result, ctx, record)
            return result
        except PassError as exc:
            raise exc.with_completed(completed) from exc
        except UserError as exc:  # keep the type (and exit code 2), name the pass
            raise type(exc)(f"pass '{p.name}': {exc}") from exc
        except SecompileError:
            raise
        except Exception as exc:  # an internal failure: keep which pass it was
            raise PassError(p.name, f"{type(exc).__name__}: {exc}", completed) from exc
