"""Tests for the shipped default model (``models/default.py`` and its checkpoint)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from secompile.models.default import DEFAULT_WEIGHTS, STFT, TinyCRN, build_default, default_core

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build_default()


def test_checkpoint_is_small_and_loads_strictly() -> None:
    path = ROOT / "models" / "weights" / "secompile_default.pt"
    assert path == DEFAULT_WEIGHTS.resolve()
    assert path.stat().st_size < 1_000_000
    state = torch.load(path, map_location="cpu", weights_only=True)
    default_core().load_state_dict(state, strict=True)


def test_build_default_is_eval_and_random_init_differs(model: nn.Module) -> None:
    assert not model.training
    random = build_default(None)
    assert not random.training
    key = "encoder.0.conv.weight"
    assert not torch.equal(model.core.state_dict()[key], random.core.state_dict()[key])


@torch.no_grad()
def test_output_shape_equals_input_shape(model: nn.Module) -> None:
    for length in (16000, 12345):
        x = 0.05 * torch.randn(2, length)
        y = model(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


@torch.no_grad()
def test_core_is_causal_per_frame(model: nn.Module) -> None:
    torch.manual_seed(0)
    spec = torch.randn(1, STFT.n_bins, 40, 2)
    changed = spec.clone()
    changed[:, :, 25:] = torch.randn_like(changed[:, :, 25:])
    a, b = model.core(spec), model.core(changed)
    torch.testing.assert_close(a[:, :, :25], b[:, :, :25], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, :, 25:], b[:, :, 25:])


@torch.no_grad()
def test_waveform_is_causal_up_to_one_frame(model: nn.Module) -> None:
    # Output sample n overlap-adds frames reaching up to n + n_fft - 1 samples ahead (centred
    # frames), so changing the input from sample N on may only affect output from N - n_fft on.
    torch.manual_seed(1)
    x = 0.05 * torch.randn(1, 24000)
    cut = 16000
    changed = x.clone()
    changed[:, cut:] = 0.05 * torch.randn(1, 24000 - cut)
    a, b = model(x), model(changed)
    keep = cut - STFT.n_fft
    torch.testing.assert_close(a[:, :keep], b[:, :keep], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, cut:], b[:, cut:])


def test_conv_bn_pairs_are_separate_modules() -> None:
    core = TinyCRN()
    modules = list(core.named_modules())
    convs = [n for n, m in modules if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    bns = {n for n, m in modules if isinstance(m, nn.BatchNorm2d)}
    assert len(convs) == 8 and len(bns) == 7
    for name in convs:
        parent = name.rsplit(".", 1)[0]
        assert f"{parent}.bn" in bns or name == "decoder.3.deconv"


def test_onnx_export_dynamic_time(model: nn.Module) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    spec = torch.randn(2, STFT.n_bins, 20, 2)
    buffer = io.BytesIO()
    torch.onnx.export(
        model.core, (spec,), buffer, dynamo=False, opset_version=17,
        input_names=["spec"], output_names=["out"],
        dynamic_axes={"spec": {0: "batch", 2: "time"}, "out": {0: "batch", 2: "time"}},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for frames in (7, 33):
        x = torch.randn(2, STFT.n_bins, frames, 2)
        (out,) = session.run(None, {"spec": x.numpy()})
        with torch.no_grad():
            ref = model.core(x).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)
