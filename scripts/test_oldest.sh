#!/usr/bin/env bash
# The sweep, resume, confirmation, distributed and cluster-check tests against the OLDEST Ray and Optuna that
# pyproject.toml declares (CI runs them a second time here; the main run, scripts/test.sh, has the newest). Builds
# its own environment in .venv-oldest: the CPU torch, this package installed as a user would (`pip install .`, not
# editable; the wandb and mlflow extras, not ray[default]: the local path needs none), then the oldest
# ray[tune,train] and optuna pinned.
# Usage: bash scripts/test_oldest.sh [pytest args]      (idempotent; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ENV=.venv-oldest
# The lower bounds, read from the one place that declares them.
RAY=$(sed -n 's/^ *"ray\[tune,train\]>=\([0-9.]*\),.*/\1/p' pyproject.toml)
OPTUNA=$(sed -n 's/^ *"optuna>=\([0-9.]*\),.*/\1/p' pyproject.toml)
if [ -z "$RAY" ] || [ -z "$OPTUNA" ]; then
  echo "test_oldest.sh: cannot read the lower bounds of ray[tune,train] and optuna from pyproject.toml" >&2
  exit 2
fi
[ -x "$ENV/bin/python" ] || "$PYTHON" -m venv "$ENV"
"$ENV/bin/python" -m pip install --quiet --upgrade pip 2>/dev/null || true
if ! "$ENV/bin/python" -c "import torch" 2>/dev/null; then
  "$ENV/bin/python" -m pip install --quiet torch==2.13.0 \
    || "$ENV/bin/python" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
fi
# the wandb and mlflow extras: the tracker tests among the sweep's run them for real (their ranges are the extras')
"$ENV/bin/python" -m pip install --quiet ".[wandb,mlflow]" "ray[tune,train]==$RAY" "optuna==$OPTUNA" pytest pytest-timeout pytest-xdist
"$ENV/bin/python" -c "import ray, optuna; print(f'oldest declared: ray {ray.__version__}, optuna {optuna.__version__}'); \
assert ray.__version__.startswith('$RAY') and optuna.__version__.startswith('$OPTUNA')"
export PATH="$PWD/$ENV/bin:$PATH"  # the `simmtm` and `ray` commands the tests start are this environment's
export SIMMTM_DATA_DIR=${SIMMTM_DATA_DIR:-$(cd .. && pwd)/shared/data}
export RAY_memory_monitor_refresh_ms=0
"$ENV/bin/python" -m pytest -m "slow or not slow" -n 0 -p no:cacheprovider \
  tests/tuning tests/test_confirmation.py tests/test_distributed.py tests/test_cluster_check.py \
  tests/analysis/test_importance.py "$@"
