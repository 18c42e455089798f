"""The "INC autotune" column of the INT8 benchmark: Intel Neural Compressor 3.x, accuracy-aware.

    python benchmarks/inc_autotune.py --model nsnet2|gtcrn --json OUT.json

Runs in its own environment, not the project's (neural-compressor is not a secompile
dependency)::

    python3.11 -m venv inc-venv && inc-venv/bin/pip install torch==2.13.0 \
        'neural-compressor[pt]' numpy soundfile scipy pesq pystoi onnx
    inc-venv/bin/pip install -e . --no-deps

(measured with neural-compressor 3.10, torchao 0.18.0, torch 2.13.0+cpu).

What it does, all on one thread:

1. Loads the model (``models.registry.load_model``: NSNet2 from the official ONNX weights,
   GTCRN from its DNS3 checkpoint) and finds the largest part INC's PT2E path takes: the whole
   waveform module (torch.stft -> core -> torch.istft) first, then the spectral core; each
   as-is first and, when the model has BatchNorm, again with BN folded beforehand by the
   same grouped-safe folding as ``passes.fuse_conv_bn`` (torchao's own BN folding, run inside
   ``prepare_pt2e``, fails on grouped ConvTranspose). A dynamic time axis is tried first;
   its failure is recorded and the model is quantized on a FIXED input of
   ``--chunk-seconds`` (default 1 s, batch 1).
2. ``autotune()`` over INC's int8 tuning set (``StaticQuantConfig.get_config_set_for_tuning()``,
   X86InductorQuantizer) with ``run_fn`` = calibration on noisy DNS3 + blind-test crops and
   ``eval_fn`` = mean SI-SDR of the model's output against the fp32 model's output on other
   crops of those files, capped at ``--ceiling-db`` (the fp32 model itself would score ~+inf;
   capped, it scores the ceiling). ``--tolerable-loss`` is INC's relative loss against that
   baseline: 40 dB and 0.25 accept the first config whose output is >= 30 dB from fp32.
3. Measures on the 15 VoiceBank-DEMAND pairs: latency p50 of a 1 s clip (fp32 eager, the
   Q/DQ graph INC returns run eagerly, and that graph through ``torch.compile`` with inductor
   freezing, which is where real int8 kernels come from; fp32 compiled too unless
   ``--no-fp32-compile``), timed interleaved; serialized sizes; and the SI-SDR, PESQ-WB, STOI
   and ESTOI deltas against fp32. Full-length files go through the fixed-length int8 model in
   chunks, the last one zero-padded; the deltas are given both against fp32 on the whole file
   and against fp32 run on the same chunks (the quantization's own share).

Prints a table and writes JSON. If INC fails outright, the JSON holds the exception type and
first line and the script still exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("LOGLEVEL", "WARNING")  # INC's logger reads it on first import

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
__import__("_tree").ensure_importable()  # runs in its own environment, maybe uninstalled
DATA = ROOT.parent / "shared" / "data"
WEIGHTS = {
    "nsnet2": DATA / "models" / "nsnet2" / "nsnet2-16k.onnx",
    "gtcrn": DATA / "models" / "gtcrn" / "gtcrn_dns3.pt",
}
CALIBRATION_DIRS = (DATA / "audio" / "dns3" / "noisy", DATA / "audio" / "blind")
EVAL_DIR = DATA / "audio" / "vbdemand"
SAMPLE_RATE = 16000
# Ops that only move or reshape data: not worth listing as "left in fp32".
_LAYOUT_OPS = {
    "view", "reshape", "permute", "transpose", "unsqueeze", "squeeze", "select", "slice",
    "contiguous", "getitem", "expand", "clone", "chunk", "split", "split_with_sizes", "cat",
    "stack", "flatten", "_assert_tensor_metadata", "alias", "t", "view_as_real",
    "view_as_complex", "zeros", "ones", "full", "arange", "lift_fresh_copy", "detach", "_to_copy",
}


@dataclass
class Part:
    """One way of handing the model to INC: which module, its input, how to get a waveform."""

    label: str
    module: object
    bn_folded: int
    wrapper: object  # the fp32 SpectralEnhancer (for STFT around a core)
    is_core: bool
    fold_parity: float | None = None  # max |folded - original| on 1 s of noise, if folded

    def inputs(self, wav):
        """The module's input for a ``[1, L]`` waveform chunk."""
        return self.wrapper.analyse(wav) if self.is_core else wav

    def waveform(self, model, wav):
        """Run ``model`` (this path's module or its quantized form) on a ``[1, L]`` chunk."""
        if not self.is_core:
            return model(wav)
        return self.wrapper.synthesise(model(self.wrapper.analyse(wav)), wav.shape[-1])


@dataclass
class Report:
    """Everything the JSON holds."""

    model: str
    versions: dict
    settings: dict
    errors: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def error(self, stage: str, exc: BaseException) -> dict:
        """Record ``exc`` (type and first line) raised at ``stage``."""
        text = str(exc).strip()
        entry = {"stage": stage, "type": type(exc).__name__,
                 "message": text.splitlines()[0] if text else ""}
        self.errors.append(entry)
        return entry


# --- data ---------------------------------------------------------------------------------


def read_wav(path: Path) -> np.ndarray:
    """A mono float32 file at 16 kHz."""
    from secompile.calibration.audio import read_audio

    return read_audio(path, SAMPLE_RATE)


def calibration_crops(chunk: int, per_file: int) -> tuple[list, list, list[str]]:
    """Disjoint ``chunk``-long crops of the calibration files: even ones calibrate, odd ones
    evaluate (at most ``per_file`` of each per file)."""
    calib, evals, names = [], [], []
    for folder in CALIBRATION_DIRS:
        for path in sorted(folder.glob("*.wav")):
            wav = read_wav(path)
            crops = [wav[i * chunk:(i + 1) * chunk] for i in range(len(wav) // chunk)]
            calib += crops[0::2][:per_file]
            evals += crops[1::2][:per_file]
            names.append(f"{folder.parent.name}/{folder.name}/{path.name}"
                         if folder.name == "noisy" else f"{folder.name}/{path.name}")
    return calib, evals, names


def eval_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, noisy, clean) of the VoiceBank-DEMAND pairs."""
    return [(p.name, read_wav(p), read_wav(EVAL_DIR / "clean" / p.name))
            for p in sorted((EVAL_DIR / "noisy").glob("*.wav"))]


# --- model and the part INC takes -----------------------------------------------------------


def load_fp32(name: str):
    """The fp32 waveform module (SpectralEnhancer) in eval mode."""
    from secompile.models.registry import load_model

    return load_model(name, WEIGHTS[name]).module.eval()


def fold_all_bn(module) -> int:
    """Fold every ``X_conv``/``X_bn`` (or ``conv``/``bn``) sibling pair in place, replacing the
    BN by Identity; returns how many were folded."""
    from torch import nn

    from secompile.passes.fuse_conv_bn import fold_batchnorm

    folded = 0
    for owner in module.modules():
        for name, child in list(owner.named_children()):
            bn_name = name.replace("conv", "bn")
            bn = getattr(owner, bn_name, None) if "conv" in name else None
            if isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d):
                fold_batchnorm(child, bn)
                setattr(owner, bn_name, nn.Identity())
                folded += 1
    return folded


def candidate_paths(name: str) -> list:
    """Waveform then core; as-is, then BN-folded where the model has BatchNorm."""
    import copy

    import torch
    from torch import nn

    base = load_fp32(name)
    has_bn = any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in base.modules())
    folded = copy.deepcopy(base)
    n_folded = fold_all_bn(folded) if has_bn else 0
    with torch.no_grad():
        noise = 0.1 * torch.randn(1, SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
        parity = float((folded(noise) - base(noise)).abs().max()) if has_bn else None
    paths = [Part("waveform", base, 0, base, False)]
    if has_bn:
        paths.append(Part("waveform+bn-folded", folded, n_folded, folded, False, parity))
    paths.append(Part("core", base.core, 0, base, True))
    if has_bn:
        paths.append(Part("core+bn-folded", folded.core, n_folded, folded, True, parity))
    return paths


def try_dynamic_export(path: Part, example) -> dict:
    """torch.export with a dynamic time axis (what would spare the fixed length)."""
    import torch
    from torch.export import Dim

    axis = 2 if path.is_core else 1
    dims = ({axis: Dim("time", min=8, max=2 ** 20)},)
    try:
        with torch.no_grad():
            torch.export.export(path.module, (example,), dynamic_shapes=dims, strict=False)
    except Exception as exc:  # noqa: BLE001  (recorded, then a fixed length is used)
        text = str(exc).strip().splitlines()
        detail = next((line.strip() for line in text if "specialized" in line), "")
        return {"ok": False, "type": type(exc).__name__, "message": text[0] if text else "",
                "detail": detail}
    return {"ok": True}


def probe_path(path: Part, example, calib_input) -> dict:
    """INC export + prepare + one calibration batch + convert with the default config."""
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import convert, get_default_static_config, prepare

    stage = "export"
    try:
        with torch.no_grad():
            exported = export(path.module, (example,))
            stage = "prepare"
            prepared = prepare(exported, get_default_static_config(), example_inputs=(example,))
            stage = "calibrate"
            prepared(calib_input)
            stage = "convert"
            convert(prepared)
    except Exception as exc:  # noqa: BLE001  (recorded; the next path is tried)
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text = str(exc).strip()
        return {"ok": False, "stage": stage, "type": type(exc).__name__,
                "message": text.splitlines()[0] if text else "",
                "raised_in": f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"}
    return {"ok": True}


# --- the converted graph ---------------------------------------------------------------------


def _op(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0] if hasattr(target, "_schema") else name


def _module_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _is_dq(node) -> bool:
    return node.op == "call_function" and _op(node).startswith("dequantize_per")


def graph_report(q_model) -> dict:
    """Which ops run on int8 weights/activations and which stayed fp32, from the graph."""
    from neural_compressor.torch.algorithms.pt2e_quant.pt2e_compat import xiq

    quantizable = {getattr(t, "__name__", str(t)).split(".")[0] for t in xiq.quantizable_ops}
    quantized, fp32 = {}, {}
    for node in q_model.graph.nodes:
        if node.op != "call_function":
            continue
        op = _op(node)
        if op.startswith(("quantize_per", "dequantize_per")) or op in _LAYOUT_OPS:
            continue
        args = [a for a in node.args if hasattr(a, "op")]
        if len(args) > 1 and _is_dq(args[1]) and _op(args[1]) == "dequantize_per_channel":
            _count(quantized, f"{op} (int8 weight + activation)", node)
        elif args and _is_dq(args[0]):
            _count(quantized, f"{op} (int8 activations in)", node)
        else:
            _count(fp32, op, node)["reason"] = (
                "in quantizable_ops but not annotated by the default recipe here"
                if op in quantizable else "not in X86InductorQuantizer's quantizable_ops")
    return {"x86_inductor_quantizable_ops": sorted(quantizable), "quantized_ops": quantized,
            "fp32_ops": fp32, "weights_stored_as": _weight_dtypes(q_model)}


def _count(table: dict, key: str, node) -> dict:
    entry = table.setdefault(key, {"count": 0, "modules": []})
    entry["count"] += 1
    module = _module_of(node)
    if module and module not in entry["modules"] and len(entry["modules"]) < 16:
        entry["modules"].append(module)
    return entry


def _weight_dtypes(q_model) -> dict:
    """dtype of each tensor that feeds a per-channel quantize node (the stored weights)."""
    dtypes = Counter()
    params = dict(q_model.named_parameters()) | dict(q_model.named_buffers())
    for node in q_model.graph.nodes:
        if node.op == "call_function" and _op(node) == "quantize_per_channel":
            source = node.args[0]
            if source.op == "get_attr" and source.target in params:
                dtypes[str(params[source.target].dtype)] += 1
            else:
                dtypes[f"{source.op}"] += 1
    return dict(dtypes)


# --- tuning ----------------------------------------------------------------------------------


def autotune_path(path: Part, example, calib, evals, args) -> tuple[object, dict]:
    """INC ``autotune`` on ``path``; returns the quantized graph and the tuning record."""
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, TuningConfig, autotune

    from secompile.calibration.metrics import si_sdr

    def wav(x):
        return torch.from_numpy(x)[None]

    with torch.no_grad():
        references = [path.waveform(path.module, wav(x))[0].numpy() for x in evals]
    scores, configs = [], []

    def eval_fn(model) -> float:
        with torch.no_grad():
            values = [min(si_sdr(path.waveform(model, wav(x))[0].numpy(), ref), args.ceiling_db)
                      for x, ref in zip(evals, references, strict=True)]
        scores.append(float(np.mean(values)))
        return scores[-1]

    def run_fn(model) -> None:
        with torch.no_grad():
            for x in calib:
                model(path.inputs(wav(x)))

    # autotune() calls its module's global ``quantize`` once per trial: wrap it to log configs.
    autotune_module = importlib.import_module("neural_compressor.torch.quantization.autotune")
    original_quantize = autotune_module.quantize

    def recording_quantize(model, quant_config, *a, **kw):
        configs.append({k: v for k, v in quant_config.to_dict().items()
                        if k not in ("non_tunable_params", "_is_initialized", "model_info")})
        return original_quantize(model, quant_config, *a, **kw)

    config_set = StaticQuantConfig.get_config_set_for_tuning()
    tune = TuningConfig(config_set=[config_set], tolerable_loss=args.tolerable_loss,
                        max_trials=args.max_trials)
    start = time.perf_counter()
    with torch.no_grad():
        exported = export(path.module, (example,))
    autotune_module.quantize = recording_quantize
    try:
        q_model = autotune(exported, tune, eval_fn=eval_fn, run_fn=run_fn,
                           example_inputs=(example,))
    finally:
        autotune_module.quantize = original_quantize
    trials = [{"trial": i + 1, "config": c, "eval_si_sdr_vs_fp32_db": round(s, 3)}
              for i, (c, s) in enumerate(zip(configs, scores[1:]))]
    best = max(trials, key=lambda t: t["eval_si_sdr_vs_fp32_db"]) if trials else None
    record = {
        "config_set": "StaticQuantConfig.get_config_set_for_tuning() "
                      "(act_sym in [True, False] x act_algo in [kl, minmax])",
        "baseline_eval_db": round(scores[0], 3) if scores else None,
        "accept_at_db": round(scores[0] * (1 - args.tolerable_loss), 3) if scores else None,
        "trials": trials,
        "requantized_best": len(configs) > len(trials),
        "chosen_config": configs[-1] if configs else None,
        "chosen_trial": best["trial"] if best else None,
        "tuning_s": round(time.perf_counter() - start, 1),
        "calibration_crops": len(calib), "eval_crops": len(evals),
    }
    return q_model, record


# --- measurement ---------------------------------------------------------------------------


def chunked(fn, wav: np.ndarray, chunk: int) -> np.ndarray:
    """Run a fixed-length ``fn`` over ``wav`` in ``chunk``-long pieces, zero-padding the last."""
    import torch

    n = -(-len(wav) // chunk)
    padded = np.zeros(n * chunk, dtype=np.float32)
    padded[: len(wav)] = wav
    with torch.no_grad():
        pieces = [fn(torch.from_numpy(padded[i * chunk:(i + 1) * chunk])[None])[0].numpy()
                  for i in range(n)]
    return np.concatenate(pieces)[: len(wav)]


def _scores(estimate: np.ndarray, clean: np.ndarray) -> dict:
    from pystoi import stoi

    from secompile.calibration.metrics import quality

    row = quality(estimate, clean, SAMPLE_RATE)
    row["estoi"] = row.pop("stoi")
    row["stoi"] = float(stoi(clean, estimate[: len(clean)], SAMPLE_RATE, extended=False))
    return row


def quality_deltas(runners: dict, fp32_full, pairs, chunk: int) -> dict:
    """Mean metric deltas of each runner (chunked) vs fp32 whole-file and vs fp32 chunked."""
    import torch

    from secompile.calibration.metrics import si_sdr

    rows = {name: [] for name in ("fp32_full", *runners)}
    fidelity = {name: [] for name in runners}
    for _, noisy, clean in pairs:
        with torch.no_grad():
            ref = fp32_full(torch.from_numpy(noisy)[None])[0].numpy()
        rows["fp32_full"].append(_scores(ref, clean))
        for name, fn in runners.items():
            out = chunked(fn, noisy, chunk)
            rows[name].append(_scores(out, clean))
            fidelity[name].append(si_sdr(out, ref))
    means = {name: {k: float(np.nanmean([r[k] for r in rs])) for k in rs[0]}
             for name, rs in rows.items()}

    def delta(a: str, b: str) -> dict:
        return {k: round(means[a][k] - means[b][k], 4) for k in means[a]}

    out = {"absolute": {n: {k: round(v, 4) for k, v in m.items()} for n, m in means.items()},
           "si_sdr_vs_fp32_full_output_db": {n: round(float(np.mean(v)), 2)
                                             for n, v in fidelity.items()}}
    for name in runners:
        if name != "fp32_chunked":
            out[f"delta_{name}_vs_fp32_full"] = delta(name, "fp32_full")
            if "fp32_chunked" in runners:
                out[f"delta_{name}_vs_fp32_chunked"] = delta(name, "fp32_chunked")
    if "fp32_chunked" in runners:
        out["delta_fp32_chunked_vs_fp32_full"] = delta("fp32_chunked", "fp32_full")
    return out


def compile_graph(model, example, label: str, report: Report):
    """``torch.compile`` (inductor, freezing) + one warm call; None and an error on failure."""
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    inductor_config.compile_threads = 1
    start = time.perf_counter()
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(example)
    except Exception as exc:  # noqa: BLE001  (recorded; the column goes on without it)
        report.error(f"torch.compile {label}", exc)
        return None, None
    return compiled, round(time.perf_counter() - start, 1)


def measure_latency(candidates: dict, repeats: int) -> dict:
    """p50/p90 ms of each candidate on the same 1 s clip, interleaved, load-checked."""
    import torch

    from secompile.compiler.runtime.timing import measure_interleaved

    with torch.no_grad():
        result = measure_interleaved(candidates, repeats=repeats, warmup=3, blocks=5)
    out = {name: stats.summary() for name, stats in result.stats.items()}
    out["noisy_blocks_rerun"] = result.noisy_blocks
    out["blocks_kept_under_load"] = result.loaded_blocks
    return out


def top_ops(fn, runs: int = 5, limit: int = 6) -> list[dict]:
    """The ops taking most self CPU time in ``runs`` calls of ``fn`` (torch.profiler)."""
    import torch
    from torch.profiler import profile

    with torch.no_grad(), profile() as prof:
        for _ in range(runs):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_ms_per_run": round(e.self_cpu_time_total / 1e3 / runs, 3),
             "calls_per_run": e.count / runs} for e in events[:limit]]


def used_tensors(gm) -> dict:
    """The tensors a GraphModule's graph reads (get_attr nodes with users), by name."""
    from operator import attrgetter

    return {n.target: attrgetter(n.target)(gm) for n in gm.graph.nodes
            if n.op == "get_attr" and n.users and hasattr(attrgetter(n.target)(gm), "dtype")}


def prune_unused(gm) -> None:
    """Drop parameters and buffers the graph never reads (e.g. ConvStft's unused bases)."""
    used = set(used_tensors(gm))
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)


def sizes(part: Part, q_model, example) -> dict:
    """Bytes of the tensors each graph reads and of each saved with torch.export.save (fp32:
    INC's fp32 export, unused tensors pruned; int8: INC's own ``save``)."""
    import torch
    from neural_compressor.torch.export import export

    def nbytes(gm) -> int:
        return sum(t.numel() * t.element_size() for t in used_tensors(gm).values())

    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        fp32_graph = export(part.module, (example,))
        prune_unused(fp32_graph)
        fp32_file = Path(work) / "fp32.pt2"
        torch.export.save(torch.export.export(fp32_graph, (example,)), fp32_file)
        out = {"fp32_pt2_bytes": fp32_file.stat().st_size, "fp32_tensor_bytes": nbytes(fp32_graph),
               "int8_graph_tensor_bytes": nbytes(q_model),
               "int8_graph_tensor_dtypes": dict(Counter(
                   str(t.dtype) for t in used_tensors(q_model).values()))}
        try:
            q_model.save(example_inputs=(example,), output_dir=str(Path(work) / "inc"))
            files = list((Path(work) / "inc").iterdir())
            out["int8_inc_save_bytes"] = sum(f.stat().st_size for f in files)
            out["int8_inc_save_files"] = sorted(f.name for f in files)
        except Exception as exc:  # noqa: BLE001  (recorded as a size that could not be had)
            out["int8_inc_save_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return out


# --- driver ----------------------------------------------------------------------------------


def choose_path(name: str, chunk: int, calib, report: Report):
    """The first candidate INC quantizes, with every attempt recorded."""
    import torch

    attempts = []
    for path in candidate_paths(name):
        with torch.no_grad():
            example = path.inputs(torch.zeros(1, chunk))
            calib_input = path.inputs(torch.from_numpy(calib[0])[None])
        if not attempts:
            report.data["dynamic_time_axis"] = try_dynamic_export(path, example)
        result = probe_path(path, example, calib_input)
        attempts.append({"path": path.label, "bn_folded_beforehand": path.bn_folded,
                         "bn_fold_parity_max_abs": path.fold_parity, **result})
        if result["ok"]:
            report.data["attempts"] = attempts
            return path, example
    report.data["attempts"] = attempts
    return None, None


def run(args, report: Report) -> None:
    """Quantize, then measure; fills ``report``."""
    chunk = int(args.chunk_seconds * SAMPLE_RATE)
    calib, evals, names = calibration_crops(chunk, args.crops_per_file)
    report.data["calibration_files"] = names
    part, example = choose_path(args.model, chunk, calib, report)
    if part is None:
        report.data["quantized"] = None
        return
    report.data["quantized"] = {
        "part": part.label, "input_shape": list(example.shape),
        "fixed_input_samples": chunk, "bn_folded_beforehand": part.bn_folded,
        "note": "STFT/iSTFT run in eager fp32 around the quantized core" if part.is_core
        else "whole waveform module incl. torch.stft/istft in the exported graph"}
    q_model, report.data["tuning"] = autotune_path(part, example, calib, evals, args)
    report.data["graph"] = graph_report(q_model)
    measure(args, report, part, q_model, example)


def measure(args, report: Report, part: Part, q_model, example) -> None:
    """Compile, then quality on VoiceBank-DEMAND, latency of a 1 s clip, sizes."""
    import torch

    chunk = int(args.chunk_seconds * SAMPLE_RATE)
    fp32 = load_fp32(args.model)
    runners = {"fp32_chunked": fp32, "int8_eager": lambda x: part.waveform(q_model, x)}
    compile_s, fp32_c = {}, None
    int8_c, compile_s["int8"] = compile_graph(q_model, example, "int8", report)
    if int8_c is not None:
        runners["int8_compiled"] = lambda x: part.waveform(int8_c, x)
    if not args.no_fp32_compile:
        fp32_c, compile_s["fp32"] = compile_graph(
            load_fp32(args.model), torch.zeros(1, chunk), "fp32", report)
    report.data["compile_s"] = compile_s
    pairs = eval_pairs()
    report.data["eval_pairs"] = len(pairs)
    report.data["quality"] = quality_deltas(runners, fp32, pairs, chunk)
    clip = pairs[0][1][:SAMPLE_RATE].copy()
    report.data["latency_clip"] = f"vbdemand/noisy/{pairs[0][0]}, first 1 s"
    clip_t = torch.from_numpy(clip)[None]
    # Fixed-length models take the clip through chunked() (zero-padded if chunk > 1 s).
    candidates = {"fp32_eager": lambda: fp32(clip_t)}
    if fp32_c is not None:
        candidates["fp32_compiled"] = lambda: chunked(fp32_c, clip, chunk)
    for name in ("int8_eager", "int8_compiled"):
        if name in runners:
            candidates[name] = lambda fn=runners[name]: chunked(fn, clip, chunk)
    report.data["latency_ms"] = measure_latency(candidates, args.repeats)
    report.data["profile_top_ops"] = {
        name: top_ops(fn) for name, fn in candidates.items() if name.endswith("compiled")}
    report.data["size"] = sizes(part, q_model, example)


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """The printed table."""
    d = report.data
    rows = [("model", report.model), ("inc", report.versions.get("neural_compressor", "?"))]
    if report.errors and not d.get("quantized"):
        rows.append(("error", "; ".join(f"{e['type']}: {e['message']}" for e in report.errors)))
    q = d.get("quantized")
    if not q:
        return rows + [("quantized", "nothing: every attempt failed (see attempts)")]
    lat, size, qual = d.get("latency_ms", {}), d.get("size", {}), d.get("quality", {})
    rows.append(("quantized part", f"{q['part']} (fixed {q['fixed_input_samples']} samples)"))
    for label, key in (("fp32 ops", "fp32_ops"), ("int8 ops", "quantized_ops")):
        rows.append((label, ", ".join(f"{k} x{v['count']}" for k, v in d["graph"][key].items())))
    t = d["tuning"]
    rows.append(("trials", ", ".join(f"#{x['trial']} {x['config']['act_algo']}/"
                                     f"{'sym' if x['config']['act_sym'] else 'asym'}: "
                                     f"{x['eval_si_sdr_vs_fp32_db']:.1f} dB" for x in t["trials"])))
    for name in ("fp32_eager", "fp32_compiled", "int8_eager", "int8_compiled"):
        if name in lat:
            rows.append((f"p50 1 s {name}", f"{lat[name]['p50']:.2f} ms"))
    rows.append(("speedups", json.dumps(d.get("speedup", {}))))
    rows.append(("size", json.dumps({k: v for k, v in size.items() if k.endswith("bytes")})))
    for key in ("delta_int8_eager_vs_fp32_full", "delta_int8_eager_vs_fp32_chunked",
                "delta_int8_compiled_vs_fp32_chunked", "delta_fp32_chunked_vs_fp32_full"):
        if key in qual:
            rows.append((key.removeprefix("delta_"), json.dumps(qual[key])))
    return rows


def speedups(lat: dict) -> dict:
    """p50 ratios against fp32 eager (and compiled int8 against compiled fp32)."""
    out = {}
    base = lat.get("fp32_eager", {}).get("p50")
    for name in ("fp32_compiled", "int8_eager", "int8_compiled"):
        if base and name in lat:
            out[f"{name}_vs_fp32_eager"] = round(base / lat[name]["p50"], 3)
    if "fp32_compiled" in lat and "int8_compiled" in lat:
        out["int8_compiled_vs_fp32_compiled"] = round(
            lat["fp32_compiled"]["p50"] / lat["int8_compiled"]["p50"], 3)
    return out


def versions() -> dict:
    """Versions of what the column depends on."""
    from importlib.metadata import version

    import torch

    out = {"torch": torch.__version__, "python": sys.version.split()[0]}
    for name in ("neural_compressor", "torchao", "onnx", "pesq", "pystoi", "numpy"):
        try:
            out[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001
            out[name] = None
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(WEIGHTS), required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--chunk-seconds", type=float, default=1.0)
    parser.add_argument("--crops-per-file", type=int, default=2)
    parser.add_argument("--ceiling-db", type=float, default=40.0)
    parser.add_argument("--tolerable-loss", type=float, default=0.25)
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-fp32-compile", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Entry point; exits 0 even when INC fails (the failure is the result)."""
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    report = Report(args.model, versions(), {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {
        "threads": 1, "eval_fn": "mean min(SI-SDR(int8 out, fp32 out), ceiling_db) on eval crops",
        "sample_rate": SAMPLE_RATE})
    try:
        run(args, report)
    except Exception as exc:  # noqa: BLE001  (INC failing outright is a result to record)
        report.error("run", exc)
        report.data["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
    if "latency_ms" in report.data:
        report.data["speedup"] = speedups(report.data["latency_ms"])
    report.data["total_s"] = round(time.perf_counter() - start, 1)
    payload = {"model": report.model, "versions": report.versions, "settings": report.settings,
               **report.data, "errors": report.errors}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    for key, value in summary_rows(report):
        print(f"{key:<38} {value}")
    print(f"wrote {args.json} ({report.data['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
