#!/usr/bin/env bash
# One command for the complete local demo:
#   ./demo.sh          bring up testenv (kube-apiserver, MinIO, 3 test hosts), build and start
#                      the operator, apply the demo resources, wait until backups are verified
#   ./demo.sh down     stop everything (the demo's MinIO data is discarded with it)
# State lives in /var/tmp/fleetsnap-testenv/demo; `source /var/tmp/fleetsnap-testenv/demo/env`
# puts kubectl, mc, restic on PATH with the demo's kubeconfig.
set -euo pipefail
cd "$(dirname "$0")"
DIR=${FLEETSNAP_TESTENV_DIR:-/var/tmp/fleetsnap-testenv/demo}
export FLEETSNAP_TESTENV_DIR=$DIR
if [ "${1:-}" = down ]; then
  [ -e "$DIR/pids/operator" ] && kill "$(cat "$DIR/pids/operator")" 2>/dev/null || true
  exec tests/testenv/testenv.sh down --dir "$DIR"
fi
cargo build --workspace --bins
tests/testenv/testenv.sh up --dir "$DIR" --hosts 3
exec tests/testenv/demo-resources.sh "$DIR"
