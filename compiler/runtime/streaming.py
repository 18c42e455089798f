"""Streaming artifacts at run time: the hop-by-hop session, its offline reference, and the
equivalence and latency measurements that prove a stream matches its offline model.

The streaming contract (``model_stream.onnx``, written by the ``stream`` pass):

* input 0 is the audio chunk, float32 ``[1, hop]``; every other input is a state;
* output 0 is the enhanced chunk ``[1, hop]``; output ``i`` (``i >= 1``) is the next value of
  input ``i``, in the same order;
* zeros are a valid initial state (silence before the first sample);
* the output lags the input by ``delay_samples``: feeding a signal followed by ``delay_samples``
  zeros and dropping the first ``delay_samples`` output samples gives the offline output;
* metadata props ``secompile.stream.*`` hold the hop, the delay, the sample rate and the
  tolerance the stream was proven to.

The offline reference of a stream is the same torch model run on the whole signal with the
stream's boundary conditions: the centred STFT pads with zeros (a live stream has heard
silence, not a mirror image of the future), and the signal is zero-padded to whole hops.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from secompile.compiler.core.errors import ModelError

STREAM_FILE = "model_stream.onnx"
CHUNK_INPUT, CHUNK_OUTPUT = "chunk", "enhanced_chunk"
PROP_PREFIX = "secompile.stream."


def is_stream_artifact(path: Path) -> bool:
    """Whether the ONNX file at ``path`` is a streaming artifact (it declares its hop);
    ``ModelError`` for a file that is not ONNX."""
    from secompile.compiler.core.artifact import onnx_props

    return PROP_PREFIX + "hop" in onnx_props(path)


class StreamSession:
    """Enhance audio hop by hop with a streaming artifact, carrying its state between calls.

    >>> session = StreamSession("build/cpu/model_stream.onnx")   # doctest: +SKIP
    >>> for chunk in microphone_chunks(session.hop):              # doctest: +SKIP
    ...     speaker.write(session.process(chunk))

    ``process`` takes exactly one hop and returns one hop, ``delay_samples`` behind the input;
    ``feed`` takes blocks of any size; ``enhance`` runs a whole signal from a fresh state and
    returns it aligned with the input.
    """

    def __init__(self, path: Path | str, threads: int = 1) -> None:
        import onnxruntime as ort

        from secompile.compiler.runtime.runners import session_options

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"streaming artifact not found: {path}")
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (ORT raises its own exception types)
            raise ModelError(f"{path} is not a loadable ONNX model: {exc}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.hop = int(props[PROP_PREFIX + "hop"])
            self.delay_samples = int(props[PROP_PREFIX + "delay_samples"])
            self.sample_rate = int(props[PROP_PREFIX + "sample_rate"])
        except (KeyError, ValueError):
            raise ModelError(f"{path} is not a secompile streaming artifact "
                             f"(no {PROP_PREFIX}hop/delay_samples/sample_rate metadata)") from None
        self.tolerance = float(props.get(PROP_PREFIX + "tolerance", "nan"))
        inputs = self.session.get_inputs()
        self.chunk_name = inputs[0].name
        self.state_names = [i.name for i in inputs[1:]]
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs[1:] != [f"next.{name}" for name in self.state_names]:
            raise ModelError(f"{path}: outputs {outputs[1:]} are not the next values of the "
                             f"state inputs {self.state_names}, in order")
        self.state_shapes = [tuple(int(d) for d in i.shape) for i in inputs[1:]]
        self.states: list[np.ndarray] = []
        self.reset()

    def reset(self) -> None:
        """Back to the zero initial state (a new stream), with an empty input buffer."""
        self.states = [np.zeros(shape, np.float32) for shape in self.state_shapes]
        self._pending = np.zeros(0, np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Enhance one hop (``[hop]`` float32); return ``[hop]`` samples, ``delay_samples``
        behind the input."""
        chunk = np.asarray(chunk, np.float32).reshape(1, -1)
        if chunk.shape[1] != self.hop:
            raise ValueError(f"a chunk must hold hop={self.hop} samples, got {chunk.shape[1]}")
        feed = dict(zip(self.state_names, self.states, strict=True))
        feed[self.chunk_name] = chunk
        outputs = self.session.run(None, feed)
        self.states = outputs[1:]
        return outputs[0][0]

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Take any number of samples (an audio callback's block); return every output sample
        that is ready (whole hops only; the rest waits in an input buffer until the next call).
        """
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        ready = len(self._pending) // self.hop * self.hop
        blocks = self._pending[:ready].reshape(-1, self.hop)
        self._pending = self._pending[ready:]
        return np.concatenate([self.process(b) for b in blocks]) if len(blocks) else (
            np.zeros(0, np.float32))

    def chunks(self, wav: np.ndarray) -> np.ndarray:
        """``wav`` zero-padded with the delay and cut into hops: ``[n_hops, hop]``."""
        need = len(wav) + self.delay_samples
        padded = np.zeros(-(-need // self.hop) * self.hop, np.float32)
        padded[: len(wav)] = wav
        return padded.reshape(-1, self.hop)

    def enhance(self, wav: np.ndarray) -> np.ndarray:
        """Stream a whole signal from a fresh state; the output is aligned with ``wav``."""
        self.reset()
        out = np.concatenate([self.process(c) for c in self.chunks(np.asarray(wav, np.float32))])
        return out[self.delay_samples : self.delay_samples + len(wav)]

    def hop_latencies_ms(self, wav: np.ndarray) -> np.ndarray:
        """Wall time of every ``process`` call over ``wav`` from a fresh state, in ms."""
        self.reset()
        times = []
        for chunk in self.chunks(np.asarray(wav, np.float32)):
            start = time.perf_counter_ns()
            self.process(chunk)
            times.append((time.perf_counter_ns() - start) / 1e6)
        return np.asarray(times)


def zero_boundary_offline(
    module: Any, wav: np.ndarray, double: bool = False, stft_impl: str | None = None,
) -> np.ndarray:
    """The offline output a stream must reproduce: ``module`` (a ``SpectralEnhancer``) on the
    whole of ``wav`` ``[L]``, with zero centre padding and the signal padded to whole hops;
    with ``stft_impl`` (``"conv"``, ``"torch"``) its STFT computed that way."""
    return _run_offline(_zero_boundary_model(module, double, stft_impl), wav)


def _zero_boundary_model(module: Any, double: bool, stft_impl: str | None) -> Any:
    model = copy.deepcopy(module).eval()
    if stft_impl is not None:
        model.stft_impl = stft_impl
    model.center_pad = "constant"
    return model.double() if double else model


def _run_offline(model: Any, wav: np.ndarray) -> np.ndarray:
    import torch

    np_dtype = np.float64 if model.window.dtype == torch.float64 else np.float32
    hop = model.stft.hop
    padded = np.zeros(-(-len(wav) // hop) * hop, np_dtype)
    padded[: len(wav)] = wav
    with torch.inference_mode():
        out = model(torch.from_numpy(padded[None, :])).numpy()[0]
    return out[: len(wav)]


def equivalence(
    session: StreamSession, module: Any, clips: list[np.ndarray],
    clean: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Stream each clip and compare it with the offline model (``zero_boundary_offline``).

    Returns the largest max abs error over the clips against the float32 offline model in the
    form the offline artifact computes it (STFT as a convolution with the DFT basis), against
    the model computed in float64 with ``torch.stft`` (the exact reference: two correct
    float32 computations can differ by more than either does from it), and against the
    float32 model with ``torch.stft`` (as the model's authors run it); with ``clean``
    references, the largest |ΔSI-SDR| between the streamed and offline outputs plus the mean
    ΔSI-SDR against the model's own offline output with reflect padding (the boundary effect
    of starting from silence).
    """
    from secompile.calibration.metrics import si_sdr

    conv, exact_model, authors_model = (
        _zero_boundary_model(module, False, "conv"), _zero_boundary_model(module, True, "torch"),
        _zero_boundary_model(module, False, "torch"))
    rows = []
    for index, wav in enumerate(clips):
        streamed = session.enhance(wav)
        offline = _run_offline(conv, wav)
        exact = _run_offline(exact_model, wav)
        authors = _run_offline(authors_model, wav)
        row = {
            "max_abs": float(np.max(np.abs(streamed.astype(np.float64) - offline))),
            "max_abs_vs_float64": float(np.max(np.abs(streamed - exact))),
            "max_abs_vs_torch_stft": float(np.max(np.abs(streamed.astype(np.float64) - authors))),
            "offline_float32_vs_float64": float(np.max(np.abs(offline - exact))),
        }
        if clean is not None:
            ref = clean[index]
            row["delta_si_sdr"] = si_sdr(streamed, ref) - si_sdr(offline, ref)
            row["delta_si_sdr_vs_reflect"] = si_sdr(streamed, ref) - si_sdr(
                _offline(module, wav), ref)
        rows.append(row)
    summary = {key: max(r[key] for r in rows) for key in rows[0] if "delta" not in key}
    if clean is not None:
        summary["max_abs_delta_si_sdr"] = max(abs(r["delta_si_sdr"]) for r in rows)
        summary["mean_delta_si_sdr_vs_reflect_offline"] = float(
            np.mean([r["delta_si_sdr_vs_reflect"] for r in rows]))
    summary["files"] = len(rows)
    return summary


def _offline(module: Any, wav: np.ndarray) -> np.ndarray:
    """``module``'s own offline output (reflect centre padding, as it was trained)."""
    import torch

    with torch.inference_mode():
        return module.eval()(torch.from_numpy(wav[None, :].astype(np.float32))).numpy()[0]


def within_tolerance(result: dict[str, Any], tolerance: float) -> bool:
    """Whether a stream is equivalent: within ``tolerance`` of the float32 offline model, or no
    further from the float64 model than ``tolerance`` plus twice the offline model's own
    float32 error (the rule the parity verifier applies to every pass)."""
    if result["max_abs"] <= tolerance:
        return True
    return result["max_abs_vs_float64"] <= tolerance + 2 * result["offline_float32_vs_float64"]


def measure_latency(session: StreamSession, offline: Any, clip: np.ndarray) -> dict[str, Any]:
    """Time ``session`` on ``clip`` ``[L]`` (real audio, ~10 s): per-hop latency p50/p99 over
    three passes, the real-time factor, the cost per hop of audio against the ``offline``
    runner (``[1, L] -> [1, L]``) on the same clip (interleaved medians), and the share of
    hops over their deadline (one hop of audio), idle and with one busy process per core."""
    from secompile.compiler.runtime.timing import available_cpus, cpu_hogs, measure_interleaved

    hop_ms = 1000 * session.hop / session.sample_rate
    hops = len(session.chunks(clip))
    timed = measure_interleaved(
        {"offline": lambda: offline(clip[None, :]), "stream": lambda: session.enhance(clip)},
        repeats=5, warmup=1)
    idle = np.concatenate([session.hop_latencies_ms(clip) for _ in range(3)])
    with cpu_hogs(available_cpus()) as hogs:
        loaded = session.hop_latencies_ms(clip)

    def percentiles(ms: np.ndarray) -> dict[str, float]:
        return {"p50": round(float(np.percentile(ms, 50)), 4),
                "p99": round(float(np.percentile(ms, 99)), 4), "hops": int(ms.size)}

    return {
        "threads": session.session.get_session_options().intra_op_num_threads,
        "hop": session.hop,
        "hop_ms": round(hop_ms, 3),
        "delay_samples": session.delay_samples,
        "per_hop_ms": percentiles(idle),
        "real_time_factor": round(float(np.mean(idle)) / hop_ms, 4),
        "offline_ms_per_hop": round(timed.stats["offline"].percentile(50) / hops, 4),
        "stream_ms_per_hop": round(timed.stats["stream"].percentile(50) / hops, 4),
        "stream_cost_vs_offline": round(timed.p50_ratio("stream", "offline"), 3),
        "timing_blocks_rerun_for_outside_load": timed.noisy_blocks,
        "deadline_miss_share": round(float(np.mean(idle > hop_ms)), 5),
        "under_load": {
            "busy_processes": hogs,
            "per_hop_ms": percentiles(loaded),
            "deadline_miss_share": round(float(np.mean(loaded > hop_ms)), 5),
        },
    }
