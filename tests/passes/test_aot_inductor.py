"""aot-inductor: torch.export with a dynamic length and batch, compiled and packaged by
AOTInductor; checked on the CPU (the CUDA build is the same code with device=cuda)."""

from __future__ import annotations

import pytest
import torch

from secompile.compiler.core.errors import ConfigError, TargetError
from secompile.compiler.lowering.torch_export import HopPadded
from secompile.passes.aot_inductor import AOTI_FILE, AotInductor, AotInductorConfig
from tests.conftest import noise_audio

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_cpu_package_accepts_other_lengths_and_batches(tiny, make_ctx) -> None:
    cfg = AotInductorConfig(device="cpu", precision="fp32", max_frames=400)
    result = AotInductor(cfg).run(tiny, make_ctx(tiny, noise_audio(2.0)))
    assert not result.modified and result.artifact is tiny
    (path,) = result.files
    assert path.name == AOTI_FILE and path.stat().st_size > 0
    metrics = result.metrics
    assert metrics["opaque_rnns"] == 1
    assert metrics["shapes"]["hop"] == 64 and metrics["shapes"]["max_samples"] == 400 * 64
    assert [c["shape"] for c in metrics["parity"]] == [[1, 32000], [2, 19200]]
    assert metrics["agreement_db"] >= 80  # fp32: the same arithmetic, other kernels
    package = HopPadded(torch._inductor.aoti_load_package(str(path)), 64)
    x = torch.from_numpy(noise_audio(1.5, seed=3)).repeat(3, 1)[:, : 64 * 300 + 17]
    with torch.inference_mode():
        got, expected = package(x), tiny.module(x)
    assert got.shape == x.shape
    whole = 64 * 299  # zero padding to whole hops touches only the last hop's frames
    torch.testing.assert_close(got[:, :whole], expected[:, :whole], atol=1e-4, rtol=0)


def test_cuda_device_is_refused_without_a_gpu(tiny, make_ctx) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(TargetError, match="needs a CUDA GPU"):
        AotInductor().run(tiny, make_ctx(tiny))
    assert AotInductor().requires_cuda()
    assert not AotInductor(AotInductorConfig(device="cpu")).requires_cuda()


@pytest.mark.parametrize("options", [{"device": "tpu"}, {"precision": "int4"},
                                     {"min_frames": 10, "opt_frames": 5},
                                     {"max_batch": 1}, {"min_agreement_db": 0}])
def test_config_errors(options) -> None:
    with pytest.raises(ConfigError):
        AotInductorConfig.from_options(options, "aot-inductor")
