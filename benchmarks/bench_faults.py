"""Fault and bad-input suite: every probe of ``tests/faults/`` run once, as a table.

    python benchmarks/bench_faults.py [--area AREA ...] [--json OUT] [--markdown]

A probe is one thing a user will bring or one fault a machine will throw at a build: a corrupt
checkpoint, a stereo wav, a garbage pipeline, a SIGKILL mid-build, a cache entry whose bytes
changed, a fleet entry named ``../x``... Each declares what a trusted build tool owes the user
(``expected``) and checks what secompile did (``observed``: the exit code and the one-line
error, or the measured fact). The probes are defined once, in the ``PROBES`` list of each
``tests/faults/test_*.py`` module, where the test suite runs them too; this script runs the same
list, prints probe / expected / observed, and writes JSON (default
``benchmarks/results/faults.json``). It exits 1 when a probe failed. Needs the test extra
(``pip install -e '.[test]'``) and, for the probes on real recordings and models,
``../shared/data``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the probes live in tests/faults/

from benchmarks._tree import ensure_importable

ensure_importable()


def _probe_modules() -> list:
    """Every ``tests/faults/test_*.py`` module that lists ``PROBES``, in file order."""
    modules = []
    for path in sorted((ROOT / "tests" / "faults").glob("test_*.py")):
        module = importlib.import_module(f"tests.faults.{path.stem}")
        if hasattr(module, "PROBES"):
            modules.append(module)
    return modules


def _run(probe) -> dict:
    """Run one probe in an empty folder: its row of the table."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fault-") as tmp:
        try:
            seen = probe.run(Path(tmp))
            status, observed = ("ok" if seen.ok else "FAILED"), seen.observed
        except BaseException as exc:  # pytest.skip raises a BaseException
            if type(exc).__name__ == "Skipped":
                status, observed = "skipped", str(exc)
            elif isinstance(exc, KeyboardInterrupt):
                raise
            else:
                status, observed = "FAILED", f"probe crashed: {type(exc).__name__}: {exc}"
    return {"area": probe.area, "probe": probe.name, "expected": probe.expected,
            "observed": " ".join(observed.split()), "status": status,
            "seconds": round(time.perf_counter() - start, 1)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--area", action="append", help="only probes of this area (repeatable)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "faults.json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    rows = []
    for module in _probe_modules():
        for probe in module.PROBES:
            if args.area and probe.area not in args.area:
                continue
            row = _run(probe)
            rows.append(row)
            print(f"{row['status']:>7}  {row['area']:<14} {row['probe']}  ({row['seconds']} s)",
                  file=sys.stderr, flush=True)

    print()
    if args.markdown:
        print("| area | probe | expected | observed | |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['area']} | {_cell(r['probe'])} | {_cell(r['expected'])} | "
                  f"{_cell(r['observed'])} | {r['status']} |")
    else:
        width = max((len(r["probe"]) for r in rows), default=5)
        for r in rows:
            print(f"{r['status']:>7}  {r['area']:<14} {r['probe']:<{width}}  "
                  f"expected: {r['expected']}\n{'':>24}observed: {r['observed']}")
    failed = [r for r in rows if r["status"] == "FAILED"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "FAILED", "skipped")}
    print(f"\n{len(rows)} probes: {counts['ok']} ok, {counts['FAILED']} failed, "
          f"{counts['skipped']} skipped")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"probes": rows, "counts": counts}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
