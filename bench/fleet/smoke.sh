#!/usr/bin/env bash
# CI-sized smoke of the fleet benchmark (not the benchmark itself): 10 real nspawn hosts, the
# cold rollout, 45 s of steady state and an operator restart; fails when the rollout does not
# converge or the restart does not bring the status back. About 2.5 minutes once the release
# binaries are built. Other suites can call it:  bench/fleet/smoke.sh [extra run.sh flags]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
out=$("$HERE/run.sh" --hosts 10 --quick --dir /var/tmp/fleetsnap-fleet/smoke "$@" 2>&1 | tee /dev/stderr | tail -1)
echo "fleet smoke: $(( $(date +%s) - t0 )) s"
case $out in
  *"rollout converged"*) ;;
  *) echo "fleet smoke: FAILED: $out" >&2; exit 1 ;;
esac
case $out in
  *"no full policy status"*|*"DID NOT"*) echo "fleet smoke: FAILED: $out" >&2; exit 1 ;;
esac
# the smoke's result files are not benchmark results
f=${out##*-> }; rm -f "$(dirname "$HERE")/../${f%.md}".{md,json} 2>/dev/null || true
echo "fleet smoke: OK"
