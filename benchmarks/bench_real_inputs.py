"""Every real model on every shared folder: the builds a new user runs first, as a table.

    python benchmarks/bench_real_inputs.py [--models gtcrn,...] [--json OUT]

For each model (the shipped default, GTCRN (DNS3 weights), NSNet2 from its official ONNX
file, and a user factory model ``FILE.py:factory``, the tiny spectral model of
``tests/conftest.py``) and each shared calibration folder of real recordings (``blind/``,
``snr_sweep/``, ``dns3/noisy``, ``vbdemand/noisy``: mixed lengths), it builds the cpu target with
the streaming artifact (``secompile.build(..., stream=True)``: the default pipeline, calibrated
INT8 measured against fp32, validate with the quality gates) evaluated on the paired folder that
does not hold the calibration files, then enhances every noisy file of all four folders through
the built artifact. It records whether the build passed its gates, what shipped, the measured
speedup, size reduction and quality deltas, and whether every enhanced file came back finite
and of its input's length. Prints a table and writes JSON (default
``benchmarks/results/real_inputs.json``); exits 1 when a build or an enhancement failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._tree import ensure_importable

ensure_importable()

SHARED = ROOT.parent / "shared" / "data"
AUDIO = SHARED / "audio"
MODELS = {
    "default": (None, None),
    "gtcrn": ("gtcrn", SHARED / "models" / "gtcrn" / "gtcrn_dns3.pt"),
    "nsnet2": ("nsnet2", SHARED / "models" / "nsnet2" / "nsnet2-16k.onnx"),
    "factory": (f"{ROOT / 'tests' / 'conftest.py'}:tiny_module", None),
}
# calibration folder -> the paired evaluation folder that shares no file with it
RUNS = {
    "blind": (AUDIO / "blind", AUDIO / "vbdemand"),
    "snr_sweep": (AUDIO / "snr_sweep", AUDIO / "vbdemand"),
    "dns3/noisy": (AUDIO / "dns3" / "noisy", AUDIO / "vbdemand"),
    "vbdemand/noisy": (AUDIO / "vbdemand" / "noisy", AUDIO / "dns3"),
}
ENHANCE = (AUDIO / "blind", AUDIO / "snr_sweep", AUDIO / "dns3" / "noisy",
           AUDIO / "vbdemand" / "noisy")


def _enhance_all(result) -> str:
    """Enhance every noisy shared file through the built artifact: 'N/N ok' or the failure."""
    import secompile
    from secompile.calibration.audio import read_audio

    enhancer = secompile.load(result)
    files = sorted(p for folder in ENHANCE for p in folder.glob("*.wav"))
    good = 0
    for path in files:
        noisy = read_audio(path, enhancer.sample_rate)
        out = enhancer.enhance(noisy)
        if out.shape == noisy.shape and np.all(np.isfinite(out)):
            good += 1
    return f"{good}/{len(files)} ok"


def _one(model: str, calib: str, workdir: Path) -> dict:
    import secompile
    from secompile.compiler.core.errors import SecompileError

    ref, weights = MODELS[model]
    calib_dir, eval_dir = RUNS[calib]
    row = {"model": model, "calib": calib, "eval": eval_dir.name}
    start = time.perf_counter()
    try:
        result = secompile.build(ref, weights=weights, targets=("cpu",), stream=True,
                                 calib=calib_dir, eval=eval_dir, out=workdir / "out",
                                 cache_dir=workdir / "cache")
    except SecompileError as exc:
        row.update(status=f"{type(exc).__name__}: {exc}", ok=False)
        return row
    cpu = result.target("cpu")
    quantize = next(p for p in cpu["passes"] if p["name"] == "quantize")["metrics"]
    delta = cpu.get("quality_delta") or {}
    row.update(status="built, gates passed", shipped=quantize.get("shipped"),
               speedup=cpu.get("speedup"), size=cpu.get("size_reduction"),
               d_si_sdr=delta.get("si_sdr"), d_pesq=delta.get("pesq"),
               build_s=round(time.perf_counter() - start, 1))
    row["enhance"] = _enhance_all(result)
    row["ok"] = row["enhance"].split("/")[0] == row["enhance"].split("/")[1].split()[0]
    return row


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calib", default=",".join(RUNS))
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "real_inputs.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="real-inputs-") as tmp:
        for model in args.models.split(","):
            for calib in args.calib.split(","):
                row = _one(model, calib, Path(tmp) / model / calib.replace("/", "-"))
                rows.append(row)
                print(f"{model:<8} {calib:<15} {row['status']}", file=sys.stderr, flush=True)
    print(f"\n{'model':<8} {'calib':<15} {'eval':<9} {'shipped':<7} {'speedup':>7} {'size':>5} "
          f"{'dSI-SDR':>8} {'dPESQ':>7} {'enhance':>9}  status")
    for r in rows:
        print(f"{r['model']:<8} {r['calib']:<15} {r['eval']:<9} {r.get('shipped') or '-':<7} "
              f"{_fmt(r.get('speedup'), '.2f'):>7} {_fmt(r.get('size'), '.2f'):>5} "
              f"{_fmt(r.get('d_si_sdr'), '+.3f'):>8} {_fmt(r.get('d_pesq'), '+.3f'):>7} "
              f"{r.get('enhance', '-'):>9}  {r['status']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": rows}, indent=1, default=str))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
