#!/usr/bin/env bash
# Device check of the gpu target: on a machine with an NVIDIA GPU and this tree, build the gpu
# target for GTCRN and NSNet2 (whichever checkpoints exist; else the default model) and print the
# measured table. Installs nothing: it uses the Python found here (PYTHON=... to choose one).
#   bash benchmarks/gpu_check.sh [--data DIR] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DATA=""
for candidate in "${SECOMPILE_DATA:-}" shared/data ../shared/data; do
    if [ -n "$candidate" ] && [ -d "$candidate/models" ]; then DATA="$candidate"; break; fi
done
exec "$PY" benchmarks/gpu_check.py ${DATA:+--data "$DATA"} "$@"
