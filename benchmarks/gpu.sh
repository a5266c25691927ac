#!/usr/bin/env bash
# GPU checks for a machine with one or more CUDA GPUs, in at most 8 minutes (BUDGET_S, default 480, includes set-up).
# Checks: a torch.profiler summary of the paper's ETTh1 pre-training step (benchmarks/gpu_profile.py: top kernels,
# host synchronisations and kernel launches per step, OUT/profile/trace.json); pre-training throughput (samples/s) at the paper's ETTh1 config (L=336, d_model 32, 3 layers, 16 heads,
# d_ff 64, M=3, batch 16) on 1 GPU in process and on all GPUs as Ray Train workers (benchmarks/gpu_throughput.py);
# then the paper's ETTh1 config pre-trained for as many epochs as fit and fine-tuned at horizon 96 (SimMTM against
# random init), printing the MSE beside the paper's.
# Each check is a function below, run by `step NAME SECONDS`: add one as another function plus one `step` line; a
# step that would overrun the budget is skipped. Without Ray installed, the Ray Train throughput rows are skipped.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]          (default runs/gpu; figures in OUT_DIR/*.json and on stdout)
#        SIMMTM_PYTHON=python3 bash benchmarks/gpu.sh OUT   (use a Python that already has CUDA torch + simmtm's deps)
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-480}
OUT=${1:-runs/gpu}
START=$SECONDS

setup() {  # the Python to use: $SIMMTM_PYTHON if set (e.g. an image's own torch), else .venv (made if missing)
  if [ -n "${SIMMTM_PYTHON:-}" ]; then
    PY=$SIMMTM_PYTHON
  else
    if ! .venv/bin/python -c "import torch, ray, simmtm" >/dev/null 2>&1; then
      bash scripts/setup.sh
    fi
    PY=.venv/bin/python
  fi
  "$PY" -c "import simmtm" || { echo "gpu.sh: $PY cannot import simmtm (pip install -e . or set PYTHONPATH)"; exit 1; }
  export SIMMTM_DATA_DIR=${SIMMTM_DATA_DIR:-$(cd .. && pwd)/shared/data}
  export RAY_memory_monitor_refresh_ms=0
  mkdir -p "$OUT"
  nvidia-smi -L || true
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'GPUs', torch.cuda.device_count())"
}

profile() {  # $1: seconds. torch.profiler over 10 steps of the real loop: top kernels, host syncs, launches per step.
  timeout --signal=INT --kill-after=20 "$1" \
    "$PY" benchmarks/gpu_profile.py --steps 10 --out "$OUT/profile"
}

throughput() {  # $1: seconds this step may take
  timeout --signal=INT --kill-after=30 "$1" \
    "$PY" benchmarks/gpu_throughput.py --steps-per-epoch 40 --epochs 3 --json "$OUT/throughput.json"
}

speed() {  # $1: seconds. Samples/s and peak GPU memory against sequence length, batch size and encoder.
  timeout --signal=INT --kill-after=20 "$1" \
    "$PY" benchmarks/bench_pretrain.py --grid --device cuda --steps 20 --warmup 3 --json "$OUT/speed.json"
}

fidelity() {  # $1: seconds. The paper's ETTh1 config for as many pre-training epochs as fit, then horizon 96.
  # Pre-training gets ~60% of the step; fine-tuning (SimMTM and random init) the rest. Prints MSE beside the paper's.
  local pre=$(( $1 * 6 / 10 ))
  timeout --signal=INT --kill-after=20 "$pre" \
    "$PY" -m simmtm pretrain sweeps/etth1.yaml --out "$OUT/etth1-pre" --no-progress --set device=cuda || true  # stopped: keeps last epoch
  if [ ! -f "$OUT/etth1-pre/checkpoints/last.pt" ]; then echo "no pre-training epoch finished in ${pre}s"; return 1; fi
  local ft="--no-progress --set device=cuda --set finetune.horizons=[96] --set finetune.epochs=3 --overwrite"
  timeout --kill-after=20 $(( ($1 - pre) / 2 )) "$PY" -m simmtm finetune sweeps/etth1.yaml --from "$OUT/etth1-pre" --out "$OUT/etth1-ft" $ft
  timeout --kill-after=20 $(( ($1 - pre) / 2 )) "$PY" -m simmtm finetune sweeps/etth1.yaml --out "$OUT/etth1-base" $ft
  "$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
epochs = json.loads((out / "etth1-pre/history.jsonl").read_text().splitlines()[-1]).get("epoch")
for name, d in (("SimMTM", "etth1-ft"), ("random init", "etth1-base")):
    p = out / d / "metrics.json"
    m = json.loads(p.read_text())["horizons"]["96"] if p.exists() else None
    print(f"ETTh1 h96 {name:<12} mse={m['mse']:.4f} mae={m['mae']:.4f}" if m else f"ETTh1 h96 {name}: not finished")
print(f"(pre-training epochs run: {epochs} of the paper's 50; paper, SimMTM ETTh1 averaged over horizons 96-720: "
      "MSE 0.409 / MAE 0.428; random init ~0.431)")
PY
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
step profile 90
step throughput 120
step speed 120
step fidelity 420   # whatever the budget leaves
echo "== done in $(( SECONDS - START ))s; figures in $OUT/"
