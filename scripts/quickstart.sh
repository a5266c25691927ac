#!/usr/bin/env bash
# Set up the environment, then run the main job on this machine (a local, embedded Ray where Ray is used).
# Usage: bash scripts/quickstart.sh [OUT_DIR]     (default: runs/quick)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export SIMMTM_DATA_DIR=${SIMMTM_DATA_DIR:-$(cd .. && pwd)/shared/data}
OUT=${1:-runs/quick}
simmtm run sweeps/quick.yaml --out "$OUT"
