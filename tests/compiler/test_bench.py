"""``secompile bench``: the batching server, the load generator, the SLO search and the CLI.

Correctness and invariants only (every request gets its own output, batches stay within their
bound, backpressure throttles without losing requests, a reported rate met its SLO), never
wall-clock thresholds: the fake models sleep, so these hold on a loaded machine too.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from secompile.compiler.app.bench import ServeConfig, baseline_source, search_best, thread_splits
from secompile.compiler.app.cli import main
from secompile.compiler.core.errors import ModelError
from secompile.compiler.runtime.serving import (
    BatchingServer,
    _misses_to_fail,
    percentile,
    run_load,
)


class Recorder:
    """A NumPy "model": ``x * 2``, after checking each row is one request (constant id), with
    the batch sizes it saw and an optional sleep of ``base_s + per_row_s * rows``."""

    def __init__(self, base_s: float = 0.0, per_row_s: float = 0.0) -> None:
        self.base_s, self.per_row_s = base_s, per_row_s
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.ndim == 2
        assert np.all(batch == batch[:, :1]), "a row mixes samples of two requests"
        with self.lock:
            self.sizes.append(batch.shape[0])
        if self.base_s or self.per_row_s:
            time.sleep(self.base_s + self.per_row_s * batch.shape[0])
        return batch * 2


def _clip(request_id: int, length: int = 160) -> np.ndarray:
    return np.full(length, float(request_id), np.float32)


def test_dynamic_batching_gives_each_request_its_own_output() -> None:
    model = Recorder(base_s=0.002)
    with BatchingServer([model, model], max_batch=4, max_wait_ms=5, queue_size=64) as server:
        # two lengths interleaved: a batch may only stack requests of equal length
        requests = [server.submit(_clip(i, 160 + i % 2)) for i in range(50)]
        outputs = [r.future.result(timeout=10) for r in requests]
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out, 2 * _clip(i, 160 + i % 2))
    assert sum(model.sizes) == 50
    assert max(model.sizes) <= 4
    assert max(model.sizes) > 1  # 50 requests queued at once: batching did happen
    assert sorted(server.batch_sizes) == sorted(model.sizes)
    assert all(r.latency_ms is not None and r.latency_ms >= 0 for r in requests)


def test_no_wait_and_batch_one_runs_requests_alone() -> None:
    model = Recorder()
    with BatchingServer([model], max_batch=1, max_wait_ms=0) as server:
        requests = [server.submit(_clip(i)) for i in range(20)]
        for i, r in enumerate(requests):
            np.testing.assert_array_equal(r.future.result(timeout=10), 2 * _clip(i))
    assert model.sizes == [1] * 20


def test_model_errors_reach_every_request_of_the_batch() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    with BatchingServer([broken], max_batch=2, max_wait_ms=1) as server:
        requests = [server.submit(_clip(i)) for i in range(3)]
        for r in requests:
            with pytest.raises(RuntimeError, match="boom"):
                r.future.result(timeout=10)


def test_a_cancelled_request_is_dropped_and_the_worker_lives_on() -> None:
    model = Recorder(base_s=0.05)
    with BatchingServer([model], max_batch=1, queue_size=8) as server:
        requests = [server.submit(_clip(i)) for i in range(4)]
        assert requests[3].future.cancel()  # still queued behind three 50 ms calls
        assert [float(r.future.result(timeout=10)[0]) for r in requests[:3]] == [0.0, 2.0, 4.0]
        assert server.wait_idle(timeout=10)
        assert float(server.submit(_clip(5)).future.result(timeout=10)[0]) == 10.0
    assert sum(model.sizes) == 4  # the cancelled request never reached the model
    with BatchingServer([Recorder(base_s=0.05)], max_batch=1, queue_size=8) as server:
        requests = [server.submit(_clip(i)) for i in range(3)]
        assert requests[2].future.cancel()
        server.cancel_pending()  # drops the queued rest, the caller-cancelled one included
        assert server.wait_idle(timeout=10)


def test_bounded_queue_throttles_the_client_and_loses_nothing() -> None:
    model = Recorder(base_s=0.01)
    with BatchingServer([model], max_batch=1, queue_size=2) as server:
        requests = [server.submit(_clip(i)) for i in range(10)]
        outputs = [r.future.result(timeout=10) for r in requests]
        assert server.backpressure > 0
    assert [float(o[0]) for o in outputs] == [2.0 * i for i in range(10)]

    # the same through the open-loop load generator: offered 400 rps to a ~100 rps server
    slow = Recorder(base_s=0.01)
    with BatchingServer([slow], max_batch=1, queue_size=2) as server:
        result = run_load(server, _clip(7), rate=400, duration_s=0.1, seed=0)
    assert result.requests == 40 and result.completed == 40
    assert result.dropped == result.failed == 0 and not result.aborted
    assert result.backpressure > 0
    assert sum(slow.sizes) == 40
    # a held-up client's wait is part of the latency (open loop): 40 requests of >= 10 ms
    # each end >= 400 ms after the start, the last one arrived <= 100 ms after it
    assert max(result.latencies_ms) >= 400 - 100 - 1


def test_percentile_and_early_stop_agree() -> None:
    """Stopping a trial after ``_misses_to_fail(n)`` misses is right and never premature:
    that many latencies over the SLO make p99 exceed it whatever they are; with one fewer, p99
    can still meet it (misses barely over the SLO)."""
    assert percentile([1.0, 2.0, math.inf], 50) == 2.0
    assert percentile([1.0, math.inf], 99) == math.inf
    assert percentile([3.0, 1.0, 2.0], 50) == float(np.percentile([3.0, 1.0, 2.0], 50))
    slo = 10.0
    for n in (1, 2, 7, 50, 100, 101, 250, 1000):
        k = _misses_to_fail(n)
        over = [1.0] * (n - k) + [slo * 1.001] * k
        assert percentile(over, 99) > slo, n
        if k > 1:
            under = [1.0] * (n - k + 1) + [slo * 1.001] * (k - 1)
            assert percentile(under, 99) <= slo, n


def test_thread_splits_use_every_core() -> None:
    assert thread_splits(1) == [(1, 1)]
    assert thread_splits(2) == [(2, 1), (1, 2)]
    assert thread_splits(4) == [(4, 1), (2, 2), (1, 4)]


def _sleepy_factory(models: list[Recorder]):
    """5 ms per call + 1 ms per row, any thread count; every instance is recorded."""

    def make(workers: int, threads: int) -> list[Recorder]:
        made = [Recorder(base_s=0.005, per_row_s=0.001) for _ in range(workers)]
        models.extend(made)
        return made

    return make


def test_search_returns_a_config_that_met_the_slo() -> None:
    models: list[Recorder] = []
    result = search_best(_sleepy_factory(models), _clip(1), slo_ms=50, cores=2, budget_s=3,
                         batches=(1, 2, 4, 8), seed=0)
    assert isinstance(result.best, ServeConfig)
    assert result.rps > 0
    assert result.best_result.meets(50)
    assert result.best_result.latency(99) <= 50
    assert result.best.workers * result.best.intra_threads <= 2
    assert result.trials and all(t.result.latency(99) <= 50 for t in result.trials if t.passed)
    assert result.rps == max(t.result.offered_rps for t in result.trials if t.passed)
    for trial in result.trials:
        assert max(trial.result.batch_sizes, default=1) <= trial.config.max_batch
    assert all(max(m.sizes, default=1) <= 8 for m in models)
    data = result.as_dict()
    json.dumps(data)  # plain data, no inf
    assert data["best"]["label"] == result.best.label


def test_search_reports_zero_when_the_slo_is_below_the_model_latency() -> None:
    result = search_best(_sleepy_factory([]), _clip(1), slo_ms=3, cores=2, budget_s=3)
    assert result.best is None and result.best_result is None
    assert result.rps == 0.0
    assert "above the 3 ms SLO" in result.reason
    assert result.trials == []


def test_baseline_source_from_manifest_or_options(tmp_path: Path) -> None:
    folder = tmp_path / "cpu"
    folder.mkdir()
    onnx = folder / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(ModelError, match="no baseline model found"):
        baseline_source(onnx)
    (tmp_path / "report.json").write_text(json.dumps(
        {"model": {"source": {"model": "default", "weights": None}}}))
    assert baseline_source(onnx) == {"model": "default", "weights": None}
    assert baseline_source(onnx, "gtcrn", Path("w.pt")) == {"model": "gtcrn", "weights": "w.pt"}


def _cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "build"
    built = _cli("build", "--target", "cpu", "--pipeline", "fuse-conv-bn,export-onnx",
                 "--out", out, "--no-ray", "--no-cache", "--quiet")
    assert built.exit_code == 0, built.output
    return out


def test_cli_bench_compares_artifact_and_torch(default_build: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    done = _cli("bench", default_build, "--budget-seconds", 6, "--repeats", 6,
                "--json", out_json)
    assert done.exit_code == 0, done.output
    assert "requests/s at p99 <= 100 ms" in done.output
    data = json.loads(out_json.read_text())
    assert set(data["sides"]) == {"torch", "artifact"}
    assert data["baseline"]["model"] == "default"
    assert "rps_ratio" in data
    for side in data["sides"].values():
        assert side["latency_ms"]["p50"] > 0 and side["rtf"] > 0
        assert side["rps_at_slo"] >= 0
        if side["rps_at_slo"]:
            assert side["p99_at_rps_ms"] <= 100
            assert side["best_config"]
        assert side["memory"]["peak_rss_mb"] and side["memory"]["peak_rss_mb"] > 0
    torch_rps = data["sides"]["torch"]["rps_at_slo"]
    if torch_rps:
        assert data["rps_ratio"] == pytest.approx(
            data["sides"]["artifact"]["rps_at_slo"] / torch_rps, rel=1e-2)


def test_cli_bench_bad_input_exits_2(default_build: Path, tmp_path: Path) -> None:
    missing = _cli("bench", tmp_path / "nope.onnx")
    assert missing.exit_code == 2
    assert "artifact not found" in missing.output
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    shutil.copy(default_build / "cpu" / "model.onnx", lone)
    orphan = _cli("bench", lone)
    assert orphan.exit_code == 2
    assert "no baseline model found" in orphan.output
    not_onnx = _cli("bench", "default")
    assert not_onnx.exit_code == 2
