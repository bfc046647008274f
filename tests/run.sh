#!/usr/bin/env bash
# The test command (README): installs/builds everything the tests need (cached under
# $FLEETSNAP_CACHE, default /var/cache/fleetsnap), then runs format and lint checks, the unit
# tests, and the integration and end-to-end suites against the real components of testenv.
# Needs root (network namespaces, systemd-nspawn, qemu) and the Rust and Go toolchains.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLEETSNAP_CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
T0=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - T0 ))s)"; }

step "system packages"; tests/testenv/deps.sh
# The Go tools and the host image build in the background while cargo checks and builds: on a
# cold machine each side has long single-threaded stretches (Go links, rustc's last crates),
# so overlapping them is the cheapest way to keep a cold run short. Their logs are printed
# once they are done, and a failure there fails the run before any test starts.
TOOLS_LOG=$(mktemp /tmp/fleetsnap-tools.XXXX)
step "Go-built test tools and test-host images (background, log $TOOLS_LOG)"
( tests/testenv/tools.sh && tests/testenv/image.sh && tests/testenv/ct-image.sh bullseye \
  && tests/testenv/ct-image.sh trixie ) >"$TOOLS_LOG" 2>&1 &
TOOLS_PID=$!
trap 'kill "$TOOLS_PID" 2>/dev/null || true' EXIT
step "cargo fmt"; cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# Features named through the workspace, not `-p`: a per-package build unifies dependency
# features differently and would rebuild half the dependency tree.
cargo clippy --workspace --all-targets \
  --features fleetsnap-operator/host-tests,fleetsnap-operator/failpoints,fleetsnap/failpoints -- -D warnings
step "build"; cargo build --workspace --all-targets
# The executor the operator pushes, linked against glibc 2.17; the script fails if any symbol
# needs a newer glibc (objdump -T). The mixed-fleet suite pushes it to bullseye's glibc 2.31.
step "portable executor (glibc 2.17 floor)"; deploy/build-executor.sh >/dev/null
step "waiting for the Go-built tools and the host image"
if ! wait "$TOOLS_PID"; then cat "$TOOLS_LOG"; echo "tools or image build failed" >&2; exit 1; fi
cat "$TOOLS_LOG"
step "tests (unit, integration, end-to-end)"; cargo test --workspace --no-fail-fast

# The operator's host-layer suite drives one real host directly (no API server needed).
step "operator host layer against a real systemd host"
D=$(mktemp -d /tmp/fleetsnap-hosttests.XXXX)
trap 'tests/testenv/testenv.sh down --dir "$D" >/dev/null 2>&1 || true' EXIT   # tools are done by now
tests/testenv/testenv.sh up --dir "$D" --hosts 1 --no-kube --no-s3
port=$(sed -n "s/^HOST1_PORT='\(.*\)'$/\1/p" "$D/env")
FLEETSNAP_TEST_HOST=127.0.0.1:$port \
FLEETSNAP_TEST_HOST_KEY_FILE=$(sed -n "s/^SSH_KEY='\(.*\)'$/\1/p" "$D/env") \
FLEETSNAP_TEST_KNOWN_HOSTS=$D/known_hosts \
  cargo test --workspace --features fleetsnap-operator/host-tests --test host_apply
step "all tests passed"
