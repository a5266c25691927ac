#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: the CPU build of torch when the machine has no
# CUDA GPU (never a multi-GB CUDA download on a CPU box), then this package with its dev extra. One line a step;
# pip's output goes to runs/setup.log, which a failing step names.
# Usage: bash scripts/setup.sh        (idempotent; re-running only installs what changed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p runs
STEP_LOG=runs/setup.log STEP_PREFIX=setup
: >"$STEP_LOG"
. scripts/steps.sh
if [ ! -x .venv/bin/python ]; then
  step "virtual environment .venv" "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip >>"$STEP_LOG" 2>&1 || true  # a newer pip if it can; the old one works
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    step "torch (CUDA)" "$PY" -m pip install --quiet "torch>=2.4"
  else
    # CPU machine: the CPU build (this version lies on the project's machines; elsewhere use the CPU index).
    step "torch (CPU build)" bash -c "'$PY' -m pip install --quiet torch==2.13.0 \
      || '$PY' -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu"
  fi
fi
step "simmtm and its dev extra (pip install -e '.[dev]')" "$PY" -m pip install --quiet -e ".[dev]"
"$PY" -c "import simmtm, torch, ray, optuna; print(f'setup: simmtm {simmtm.__version__}, torch {torch.__version__}, ray {ray.__version__}, optuna {optuna.__version__}')"
