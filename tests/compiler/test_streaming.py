"""``compiler.runtime.streaming``: the session's errors, its offline reference and tolerance
rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secompile.compiler.core.errors import ModelError
from secompile.compiler.runtime.streaming import (
    StreamSession,
    within_tolerance,
    zero_boundary_offline,
)
from tests.conftest import noise_audio, tiny_module


def test_session_refuses_missing_and_offline_artifacts(tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        StreamSession(tmp_path / "nope.onnx")
    offline = tmp_path / "offline.onnx"
    torch.onnx.export(torch.nn.Identity(), (torch.zeros(1, 8),), str(offline), dynamo=False)
    with pytest.raises(ModelError, match="not a secompile streaming artifact"):
        StreamSession(offline)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        StreamSession(tmp_path / "junk.onnx")


def test_zero_boundary_reference_is_the_model_on_silence_padded_hops() -> None:
    module = tiny_module()
    wav = noise_audio(0.3)[0][:4000]  # not a whole number of hops (64)
    out = zero_boundary_offline(module, wav)
    assert out.shape == wav.shape
    padded = np.concatenate([wav, np.zeros(-len(wav) % 64, np.float32)])
    module.center_pad = "constant"
    with torch.inference_mode():
        expected = module(torch.from_numpy(padded[None]))[0, : len(wav)].numpy()
    assert np.array_equal(out, expected)
    assert np.max(np.abs(zero_boundary_offline(module, wav, double=True) - out)) < 1e-5
    conv = zero_boundary_offline(module, wav, stft_impl="conv")
    assert 0 < np.max(np.abs(conv - out)) < 1e-5  # the same model, another STFT algorithm


def test_tolerance_rule_accepts_the_float64_fallback_only_within_the_offline_error() -> None:
    close = {"max_abs": 5e-5, "max_abs_vs_float64": 5e-5, "offline_float32_vs_float64": 0.0}
    assert within_tolerance(close, 1e-4)
    fp32_noise = {"max_abs": 2e-4, "max_abs_vs_float64": 1e-5, "offline_float32_vs_float64": 2e-4}
    assert within_tolerance(fp32_noise, 1e-4)
    wrong = {"max_abs": 2e-3, "max_abs_vs_float64": 2e-3, "offline_float32_vs_float64": 1e-5}
    assert not within_tolerance(wrong, 1e-4)


def test_load_generators_stop_by_themselves() -> None:
    import subprocess
    import sys

    from secompile.compiler.runtime.timing import _HOG, cpu_hogs

    hog = subprocess.Popen([sys.executable, "-c", _HOG, "0.3"])
    assert hog.wait(timeout=10) == 0  # its time limit, even if nobody kills it
    with cpu_hogs(1, limit_s=30) as started:
        assert started == 1
