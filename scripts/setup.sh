#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: the CPU build of torch when the machine has no
# CUDA GPU (never a multi-GB CUDA download on a CPU box), then this package with its dev extra.
# Usage: bash scripts/setup.sh        (idempotent; re-running only installs what changed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip 2>/dev/null || true
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install --quiet "torch>=2.4"
  else
    # CPU machine: the CPU build (this version lies on the project's machines; elsewhere use the CPU index).
    python -m pip install --quiet torch==2.13.0 \
      || python -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install --quiet -e ".[dev]"
python -c "import simmtm, torch, ray, optuna; print(f'simmtm {simmtm.__version__}, torch {torch.__version__}, ray {ray.__version__}, optuna {optuna.__version__}')"
