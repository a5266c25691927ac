# Sourced by the set-up scripts: `step NAME COMMAND...` runs COMMAND with its output (pip's, warnings included)
# appended to $STEP_LOG and prints one line, "$STEP_PREFIX: NAME (N s)"; a failing COMMAND prints the step's name,
# the log's path and the log's last lines, and exits 1.
step() {
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*" >>"$STEP_LOG"
  if ! "$@" >>"$STEP_LOG" 2>&1; then
    echo "$STEP_PREFIX FAILED at step '$name' (its output: $STEP_LOG)" >&2
    tail -n 20 "$STEP_LOG" >&2
    exit 1
  fi
  echo "$STEP_PREFIX: $name ($((SECONDS - t0)) s)"
}
