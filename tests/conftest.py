"""Shared fixtures: where the real data lives, a tiny spectral model, a pass context."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from secompile.compiler.core.artifact import Artifact, ModelInfo
from secompile.compiler.core.context import PassContext
from secompile.models.spectral import SpectralEnhancer, StftSpec
from secompile.passes import register_builtin
from secompile.targets import get_target

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GTCRN_DIR = SHARED_DATA / "models" / "gtcrn"
VBDEMAND = SHARED_DATA / "audio" / "vbdemand"

register_builtin()  # as the application does: tests resolve pipelines and look passes up

requires_shared = pytest.mark.skipif(
    not GTCRN_DIR.is_dir(), reason=f"shared data not found at {SHARED_DATA}"
)
# The project's synthetic training speech is spoken by espeak-ng (found on PATH, as
# calibration.synthetic finds it); tests that need real synthetic speech skip without it.
requires_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng): no synthetic speech",
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (`chromium` on PATH; Debian: apt-get install "
    "chromium): report.html is not rendered",
)


class TinyCore(nn.Module):
    """A small spectrum-to-spectrum model with every layer kind the passes must handle:
    Conv2d + BN, grouped ConvTranspose2d + BN, a GRU over time, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, (1, 3), padding=(0, 1))
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.PReLU()
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.deconv = nn.ConvTranspose2d(8, 4, (1, 3), padding=(0, 1), groups=2)
        self.bn2 = nn.BatchNorm2d(4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = spec.permute(0, 3, 2, 1)  # [B, 2, T, F]
        h = self.act(self.bn(self.conv(x)))
        pooled = h.mean(-1).transpose(1, 2)  # [B, T, C]
        g, _ = self.gru(pooled)
        h = h + g.transpose(1, 2).unsqueeze(-1)
        mask = torch.tanh(self.out(self.bn2(self.deconv(h))))
        return (x * mask).permute(0, 3, 2, 1)


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return module.eval()


def tiny_module(seed: int = 0) -> SpectralEnhancer:
    """The tiny spectral model (n_fft 128, hop 64); also a ``FILE.py:factory`` for the CLI."""
    torch.manual_seed(seed)
    module = SpectralEnhancer(randomize_batchnorm(TinyCore(), seed), StftSpec(128, 64), 16000)
    return module.eval()


TINY_REF = f"{Path(__file__).resolve()}:tiny_module"


def tiny_artifact(seed: int = 0) -> Artifact:
    """A torch artifact of the tiny spectral model, reloadable through ``TINY_REF``."""
    info = ModelInfo(name="tiny", sample_rate=16000, source={"model": TINY_REF, "weights": None})
    return Artifact("torch", info, module=tiny_module(seed), lineage=("load:tiny",))


def noise_audio(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """``[1, L]`` float32 test audio."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((1, int(16000 * seconds)))).astype(np.float32)


def assert_core_exports(core: nn.Module, example: torch.Tensor, spec: torch.Tensor,
                        path: Path) -> None:
    """Export a spectrum core (``[B, F, T, 2]``, dynamic frame axis) with the TorchScript
    exporter at opset 17, then check ONNX Runtime on ``spec`` (another frame count than
    ``example``) matches torch within 1e-4."""
    import onnxruntime as ort

    torch.onnx.export(
        core, (example,), str(path), dynamo=False, opset_version=17,
        input_names=["spec"], output_names=["enh"],
        dynamic_axes={"spec": {2: "frames"}, "enh": {2: "frames"}},
    )
    with torch.no_grad():
        expected = core(spec).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"spec": spec.numpy()})
    assert got.shape == expected.shape
    max_err = float(np.abs(got - expected).max())
    assert max_err < 1e-4, f"onnxruntime differs from torch by {max_err:.2e}"


def speechlike(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A voiced, syllable-gated harmonic signal (PESQ finds 'speech' in it), float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 110 + 60 * rng.random()
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.random()) / k for k in range(1, 9))
    gate = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + 6 * rng.random())
    return (0.1 * voiced * gate).astype(np.float32)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (bit-identical training runs want a fixed thread
    count, and the machine is shared); the previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> Artifact:
    """The tiny spectral model as a torch artifact."""
    return tiny_artifact()


@pytest.fixture
def make_ctx(tmp_path: Path):
    """Factory of pass contexts on the cpu target with a fresh workdir."""

    def make(baseline: Artifact, audio: np.ndarray | None = None, **kwargs) -> PassContext:
        ctx = PassContext(
            target=get_target("cpu"), workdir=tmp_path / "work", baseline=baseline,
            parity_audio=noise_audio() if audio is None else audio, threads=1, **kwargs,
        )
        return ctx.with_pass_dir(0, "test")

    return make


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine: a head and a second node on other ports, one CPU
    each; skips where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (the 'distributed' extra)")
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    if ray.is_initialized():
        ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="session")
def default_cpu_build(tmp_path_factory) -> tuple[Path, Path]:
    """The README's main job, ``secompile build --out OUT``, run once for the session: the
    shipped default model through the cpu target's full default pipeline, into a pass cache at
    ``XDG/secompile`` (where ``XDG_CACHE_HOME=XDG`` puts the default cache), so the tests that
    make the same build again (the README's API example) are served from it. ``(OUT, XDG)``."""
    from click.testing import CliRunner

    from secompile.compiler.app.cli import main

    root = tmp_path_factory.mktemp("default-cpu")
    out, xdg = root / "build", root / "xdg"
    result = CliRunner().invoke(main, ["build", "--out", str(out), "--cache-dir",
                                       str(xdg / "secompile")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, xdg
