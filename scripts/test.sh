#!/usr/bin/env bash
# Set up the environment, then run the whole test suite (unit and the slow integration tests).
# Usage: bash scripts/test.sh [pytest args]      e.g. bash scripts/test.sh -m "not slow" for the unit tests only
# (plain `pytest` runs only the unit tests, one process per core: pyproject.toml's addopts; -m here selects all)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export SIMMTM_DATA_DIR=${SIMMTM_DATA_DIR:-$(cd .. && pwd)/shared/data}
export RAY_memory_monitor_refresh_ms=0
# Two test processes (pytest-xdist; SIMMTM_TEST_WORKERS=N for more, 0 for one): on the 2-core machine they keep
# both cores busy (about 4 % idle over a run; a third process only adds contention). loadgroup keeps each shared
# cluster's tests together.
python -m pytest -m "slow or not slow" -n "${SIMMTM_TEST_WORKERS:-2}" --dist loadgroup "$@"
