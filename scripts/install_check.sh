#!/usr/bin/env bash
# Install simmtm the way a user does and run its first commands: a fresh virtual environment in a temporary folder
# (not .venv), the CPU build of torch, `pip install .` of a copy of this checkout (no extras, not editable), then
# --help, validate, a pre-training of a few steps on ETTh1, a sweep's dry run and the Python import. A missing
# dependency shows here, not in .venv (whose dev extra pulls in half of PyPI). A failing step fails the script with
# its name; its output is in the log file the failure line names. pip compiles nothing at install time (--no-compile):
# the environment is used once, and Python compiles only the modules the commands import.
# Usage: bash scripts/install_check.sh          (CI: .ci/run; data from $SIMMTM_DATA_DIR; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/simmtm-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p runs
STEP_LOG="$ROOT/runs/install_check.log" STEP_PREFIX="install check"
: >"$STEP_LOG"
. scripts/steps.sh
START=$SECONDS

# A copy of the tracked and not-ignored files: what a clone holds, without this checkout's build/ or egg-info.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
  | tar -cf - --null --ignore-failed-read -T - 2>/dev/null | tar -xf - -C "$WORK/src"
export SIMMTM_DATA_DIR=${SIMMTM_DATA_DIR:-$(cd .. && pwd)/shared/data}
cd "$WORK"  # not the checkout: `python -c "import simmtm"` there would import its simmtm/, not the installed one

step "fresh venv" "$PYTHON" -m venv "$WORK/venv"
VENV="$WORK/venv/bin"
step "CPU torch" "$VENV/python" -m pip install --quiet --no-compile torch==2.13.0
step "pip install ." "$VENV/python" -m pip install --quiet --no-compile "$WORK/src"
step "simmtm --help" "$VENV/simmtm" --help
step "validate" bash -c "cd src && '$VENV/simmtm' validate sweeps/*.yaml --data"
step "pretrain (ETTh1, 3 steps)" "$VENV/simmtm" pretrain "$WORK/src/sweeps/quick.yaml" --out "$WORK/pre" --no-progress \
  --set pretrain.epochs=1 --set pretrain.max_steps=3
step "sweep --dry-run" "$VENV/simmtm" sweep "$WORK/src/sweeps/quick.yaml" --out "$WORK/sweep" --dry-run
step "import simmtm" "$VENV/python" -c "import simmtm; simmtm.load_encoder"
echo "install check passed: a plain 'pip install .' runs every first command ($((SECONDS - START)) s)"
