"""``compiler.distributed.executors`` and ``compiler.distributed.scoring``: executors, duration
balancing, and scoring
on a real local Ray cluster of two nodes, equal to the serial path."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from secompile.compiler.core.errors import ConfigError
from secompile.compiler.core.executor import SerialExecutor
from secompile.compiler.distributed.executors import RayExecutor, balance, make_executor
from secompile.compiler.distributed.scoring import AudioRules, score_file, score_on, summarize
from secompile.compiler.runtime.runners import OrtRunner, TorchRunner
from tests.conftest import TINY_REF, tiny_artifact

ray = pytest.importorskip("ray", reason="Ray is not installed (the 'distributed' extra)")


def test_balance_is_longest_first_onto_the_least_loaded_bin() -> None:
    groups = balance([5, 1, 4, 3, 3, 2], 2)
    loads = [sum([5, 1, 4, 3, 3, 2][i] for i in g) for g in groups]
    assert sorted(loads) == [9, 9]
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(g == sorted(g) for g in groups)
    assert balance([1.0], 4) == [[0]]
    assert balance([], 3) == []


def test_executor_choice() -> None:
    assert isinstance(make_executor(None), SerialExecutor)
    assert isinstance(make_executor("off"), SerialExecutor)
    assert isinstance(make_executor("auto"), RayExecutor if (os.cpu_count() or 1) > 1
                      else SerialExecutor)

    assert SerialExecutor().map(lambda x: x * 2, [1, 2]) == [2, 4]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Six short noisy/clean pairs of different lengths."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for sub in ("clean", "noisy"):
        (root / sub).mkdir()
    for i, seconds in enumerate((0.5, 1.5, 0.7, 1.0, 0.6, 1.2)):
        clean = 0.3 * np.sin(np.arange(int(16000 * seconds)) * 0.05 * (i + 1))
        noisy = clean + 0.05 * rng.standard_normal(clean.size)
        sf.write(root / "clean" / f"{i}.wav", clean.astype(np.float32), 16000)
        sf.write(root / "noisy" / f"{i}.wav", noisy.astype(np.float32), 16000)
    return root


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from secompile.compiler.core.context import PassContext
    from secompile.passes.export_onnx import ExportOnnx
    from secompile.targets import get_target
    from tests.conftest import noise_audio

    artifact = tiny_artifact()
    work = tmp_path_factory.mktemp("export")
    ctx = PassContext(target=get_target("cpu"), workdir=work, baseline=artifact,
                      parity_audio=noise_audio()).with_pass_dir(0, "export")
    return ExportOnnx().run(artifact, ctx).artifact.path


def _files(root: Path) -> list[tuple[str, str, str]]:
    names = sorted(p.name for p in (root / "noisy").glob("*.wav"))
    return [(n, str(root / "noisy" / n), str(root / "clean" / n)) for n in names]


def _durations(root: Path) -> list[float]:
    return [sf.info(noisy).duration for _, noisy, _ in _files(root)]


def _state() -> bytes:
    buffer = io.BytesIO()
    torch.save(tiny_artifact().module.state_dict(), buffer)
    return buffer.getvalue()


def test_scoring_on_two_ray_nodes_equals_serial(ray_cluster, corpus, tiny_onnx) -> None:
    rules = AudioRules(16000)
    files = _files(corpus)
    serial = [score_file(*f, rules, TorchRunner(tiny_artifact().module, 1),
                         OrtRunner(tiny_onnx, 1)) for f in files]
    executor = RayExecutor(address=ray_cluster.address)
    try:
        assert executor.nodes() == 2 and executor.workers == 2
        rows, tasks = score_on(executor, files, _durations(corpus), rules,
                               tiny_onnx.read_bytes(),
                               {"model": TINY_REF, "weights": None}, _state())
        assert executor.describe()["address"] == ray_cluster.address
    finally:
        executor.close()
    assert tasks == 2
    assert rows == serial
    assert summarize(rows) == summarize(serial)


def test_a_file_that_fails_to_decode_is_named_and_the_rest_scored(ray_cluster, corpus, tiny_onnx,
                                                                   tmp_path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    files = [*_files(corpus), ("broken.wav", str(broken), str(broken))]
    durations = [*_durations(corpus), 1.0]  # the balancer gets durations; the workers decode

    executor = RayExecutor(address=ray_cluster.address)
    try:
        rows, _ = score_on(executor, files, durations, AudioRules(16000),
                           tiny_onnx.read_bytes(), {"model": TINY_REF, "weights": None},
                           _state())
    finally:
        executor.close()
    summary = summarize(rows)
    assert summary["files"] == len(files) - 1
    (failed,) = summary["failed_files"]
    assert failed["file"] == "broken.wav" and "cannot read audio file" in failed["error"]


def _crash_once(marker: str) -> int:
    """Kills its own worker process the first time it runs (a dying worker)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed once")
        os._exit(1)
    return os.getpid()


def test_a_task_whose_worker_dies_is_retried(ray_cluster, tmp_path) -> None:
    from ray import cloudpickle

    this = sys.modules[__name__]  # workers cannot import the tests: ship the function by value
    cloudpickle.register_pickle_by_value(this)
    executor = RayExecutor(address=ray_cluster.address)
    try:
        (pid,) = executor.map(_crash_once, [str(tmp_path / "marker")])
    finally:
        executor.close()
        cloudpickle.unregister_pickle_by_value(this)
    assert pid != os.getpid() and (tmp_path / "marker").read_text() == "crashed once"


def test_joining_a_missing_cluster_is_a_clear_error() -> None:
    executor = RayExecutor(address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="cannot join the Ray cluster at 127.0.0.1:1"):
        executor.map(abs, [1])


@pytest.mark.parametrize("address", ["foo", "http://x:1", "host:port", ":123"])
def test_a_malformed_cluster_address_is_refused_up_front(address) -> None:
    with pytest.raises(ConfigError, match="not 'auto' or a cluster address"):
        make_executor(address)


def test_errors_cross_process_boundaries_intact() -> None:
    import pickle

    from secompile.compiler.core.errors import PassError

    error = pickle.loads(pickle.dumps(PassError("validate", "boom", ("export-onnx",))))
    assert isinstance(error, PassError) and error.pass_name == "validate"
    assert str(error) == str(PassError("validate", "boom", ("export-onnx",)))


def test_serial_map_can_hand_back_exceptions() -> None:
    results = SerialExecutor().map(lambda x: 1 / x, [1, 0], return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        SerialExecutor().map(lambda x: 1 / x, [0])
