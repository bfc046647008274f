#!/usr/bin/env bash
# Makes sure every competitor the benchmark runs against is present, and prints where it is.
#   bench/tools.sh [ensure [NAME...]]  build/install what is missing (default: time restic minio mc rustic)
#   bench/tools.sh path NAME       print the binary path of NAME (restic|rustic|minio|mc|time)
#
# restic, minio and mc come from tests/testenv/tools.sh so the benchmark measures exactly the
# builds the test suite uses. rustic is a cargo install into its own versioned directory, so a
# version bump here is a new cache key and never mixes with an older build.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
TESTENV_TOOLS=$ROOT/tests/testenv/tools.sh

# Pinned so results stay comparable between runs; check the newest with `cargo info rustic-rs`.
RUSTIC_VERSION=0.11.4
RUSTIC_DIR=$CACHE/tools/rustic-$RUSTIC_VERSION

die() { echo "bench/tools.sh: $*" >&2; exit 1; }

path_of() {
  case $1 in
    restic|minio|mc) echo "$("$TESTENV_TOOLS" path "$1")/$1" ;;
    rustic) echo "$RUSTIC_DIR/bin/rustic" ;;
    time) echo /usr/bin/time ;;
    *) die "unknown tool '$1' (known: restic rustic minio mc time)" ;;
  esac
}

ensure_time() {
  # The shell builtin `time` cannot report peak RSS; GNU time's %M can.
  [ -x /usr/bin/time ] && return 0
  command -v apt-get >/dev/null || die "/usr/bin/time (GNU time) is missing and apt-get is not available to install it"
  [ "$(id -u)" = 0 ] || die "/usr/bin/time (GNU time) is missing; install the Debian package 'time' (needs root)"
  apt-get install -y --no-install-recommends time >/dev/null || die "apt-get install time failed"
}

ensure_rustic() {
  [ -e "$RUSTIC_DIR/.ok" ] && return 0
  command -v cargo >/dev/null || die "cargo is not installed; cannot build rustic-rs $RUSTIC_VERSION"
  local t0; t0=$(date +%s)
  mkdir -p "$CACHE/tools"
  # Default features (tui, webdav, prometheus, opentelemetry, jq) only add front-ends and
  # exporters; none of them is on the backup/restore/check path, and leaving them out saves
  # many minutes of compile on a small shared machine. Backends (local, S3 via opendal) stay.
  # A private target dir keeps this build out of the workspace's target/ and its lock.
  if ! CARGO_TARGET_DIR=$CACHE/tools/rustic-build cargo install rustic-rs --locked \
        --version "$RUSTIC_VERSION" --no-default-features --root "$RUSTIC_DIR" \
        >"$RUSTIC_DIR.log" 2>&1; then
    tail -n 30 "$RUSTIC_DIR.log" >&2
    die "building rustic-rs $RUSTIC_VERSION failed; full log: $RUSTIC_DIR.log"
  fi
  rm -rf "$CACHE/tools/rustic-build"
  touch "$RUSTIC_DIR/.ok"
  echo "rustic $RUSTIC_VERSION built in $(( $(date +%s) - t0 ))s"
}

ensure_names() {
  local n
  for n in "$@"; do
    case $n in
      time) ensure_time ;;
      restic|minio|mc) "$TESTENV_TOOLS" "$n" || die "tests/testenv/tools.sh could not provide $n" ;;
      rustic) ensure_rustic ;;
      *) die "unknown tool '$n' (known: restic rustic minio mc time)" ;;
    esac
    [ -x "$(path_of "$n")" ] || die "$n is expected at $(path_of "$n") but is not there"
  done
}

case ${1:-ensure} in
  ensure) shift || true; if [ $# -eq 0 ]; then set -- time restic minio mc rustic; fi; ensure_names "$@" ;;
  path) [ $# -eq 2 ] || die "usage: tools.sh path NAME"; path_of "$2" ;;
  *) die "usage: tools.sh [ensure [NAME...]|path NAME]" ;;
esac
