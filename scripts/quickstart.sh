#!/usr/bin/env bash
# Set up the environment, then run the main job on this machine: the quick sweep (5 trials of r, M and tau on a
# local, embedded Ray, then the confirmation stage: the best and the paper's r = 0.5, M = 3 with 3 fresh paired seeds),
# the sensitivity report (DIR-report/report.html), and the recommendation: its last line is the sweep's last line.
# Usage: bash scripts/quickstart.sh [OUT_DIR]     (default: runs/quick-sweep; re-running continues or re-reports it)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Data: $SIMMTM_DATA_DIR when set, else ../shared/data in a dev checkout, else the user cache, where a missing data
# set is downloaded on first use.
if [ -z "${SIMMTM_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export SIMMTM_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export RAY_memory_monitor_refresh_ms=${RAY_memory_monitor_refresh_ms:-0}  # a shared box: no OOM-killer surprises
OUT=${1:-runs/quick-sweep}
RESUME=()
if [ -f "$OUT/sweep.json" ]; then
  RESUME=(--resume)  # an earlier (possibly interrupted) run of the same sweep: continue it
fi
simmtm sweep sweeps/quick.yaml --out "$OUT" "${RESUME[@]}"
# The report's summary lines are the recommendation's, which recommend prints next: keep them in a file.
simmtm analyze "$OUT" >"$OUT-analyze.log"
echo "report: $OUT-report/report.html (its summary: $OUT-analyze.log)"
simmtm recommend "$OUT"
