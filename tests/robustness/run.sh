#!/usr/bin/env bash
# The full kill-point campaign of issue 17: every commit point the dry runs find, on the
# local backend and on S3 (MinIO), for backup, forget, prune, check and restore. Builds what
# it needs (workspace, failpoint executor, the Go test tools if missing), prints the seed,
# one line per point, the table and the result line, and keeps the whole output in
# $LOG (default /tmp/robustness-<seed>.log). Extra arguments go to the harness, e.g.
#   tests/robustness/run.sh --seed 1234            replay a whole campaign
#   tests/robustness/run.sh --seed 1234 --only s3/prune/s3.delete.after#3
set -euo pipefail
cd "$(dirname "$0")/../.."
export FLEETSNAP_CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
TARGET=${CARGO_TARGET_DIR:-target}
tests/testenv/tools.sh restic minio mc
cargo build --workspace --quiet
SEED=$(date +%s)
for a in "$@"; do [ "${prev:-}" = --seed ] && SEED=$a; prev=$a; done
LOG=${LOG:-/tmp/robustness-$SEED.log}
set -o pipefail
"$TARGET/debug/robustness" --seed "$SEED" --backend both "$@" 2>&1 | tee "$LOG"
