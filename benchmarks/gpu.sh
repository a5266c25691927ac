#!/usr/bin/env bash
# GPU checks for a machine with one or more CUDA GPUs, in at most 8 minutes (BUDGET_S, default 480, includes set-up).
# Today: pre-training throughput (samples/s) at the paper's ETTh1 config (L=336, d_model 32, 3 layers, 16 heads,
# d_ff 64, M=3, batch 16) on 1 GPU in process and on all GPUs as Ray Train workers (benchmarks/gpu_throughput.py).
# Each check is a function below, run by `step NAME SECONDS`: add one (e.g. a few pre-training epochs and a
# horizon-96 fine-tune) as another function plus one `step` line; a step that would overrun the budget is skipped.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]          (default runs/gpu; figures in OUT_DIR/*.json and on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-480}
OUT=${1:-runs/gpu}
START=$SECONDS

setup() {
  if ! .venv/bin/python -c "import torch, ray, simmtm" >/dev/null 2>&1; then
    bash scripts/setup.sh
  fi
  . .venv/bin/activate
  export SIMMTM_DATA_DIR=${SIMMTM_DATA_DIR:-$(cd .. && pwd)/shared/data}
  export RAY_memory_monitor_refresh_ms=0
  mkdir -p "$OUT"
  nvidia-smi -L || true
  python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'GPUs', torch.cuda.device_count())"
}

throughput() {  # $1: seconds this step may take
  timeout --signal=INT --kill-after=30 "$1" \
    python benchmarks/gpu_throughput.py --steps-per-epoch 40 --epochs 3 --json "$OUT/throughput.json"
}

step() {  # step NAME SECONDS: run NAME with at most SECONDS, or fewer if the budget is shorter; skip if < 60 s left
  local name=$1 want=$2 left=$(( BUDGET_S - (SECONDS - START) ))
  if (( left < 60 )); then
    echo "== $name: skipped, ${left}s of the ${BUDGET_S}s budget left"; return 0
  fi
  local limit=$(( want < left - 10 ? want : left - 10 ))
  echo "== $name (at most ${limit}s)"
  "$name" "$limit" || echo "== $name: failed or timed out (exit $?)"
}

setup
step throughput 360
echo "== done in $(( SECONDS - START ))s; figures in $OUT/"
