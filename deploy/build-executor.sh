#!/usr/bin/env bash
# Builds the executor that the operator pushes to hosts, linked against glibc 2.17 so that it
# starts on any x86_64 Linux from then on (Amazon Linux 2, RHEL 7/8, Ubuntu 18.04+, Debian 9+),
# and refuses to hand out a binary that needs a newer glibc.
#
#   deploy/build-executor.sh [--release]       build; prints the binary's path on stdout
#   deploy/build-executor.sh --check BIN       only check BIN against the floor
#
# The linker is zig (ziglang from PyPI) driven by cargo-zigbuild, both pinned below and
# installed once under $FLEETSNAP_CACHE/zig-<versions>; cargo's target directory is
# $CARGO_TARGET_DIR as usual (the binary lands in <target>/x86_64-unknown-linux-gnu/<profile>/).
# The floor check reads the dynamic symbol table (objdump -T): every GLIBC_x.y version the
# binary references must be <= the floor, since the loader refuses to start it otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR=2.17
ZIG_VERSION=0.13.0
ZIGBUILD_VERSION=0.24.1
TRIPLE=x86_64-unknown-linux-gnu   # the build machine's own target: no extra std to install

# Highest GLIBC_ symbol version BIN needs; fails (naming it) if above $FLOOR.
check() {
  local bin=$1 top
  [ -f "$bin" ] || { echo "build-executor: $bin: no such file" >&2; return 1; }
  top=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
  [ -n "$top" ] || { echo "build-executor: $bin references no glibc symbol versions (static?)" >&2; return 0; }
  if [ "$(printf '%s\n%s\n' "$top" "$FLOOR" | sort -V | tail -n1)" != "$FLOOR" ]; then
    echo "build-executor: $bin needs GLIBC_$top, above the floor GLIBC_$FLOOR:" >&2
    objdump -T "$bin" | grep -F "GLIBC_$top)" | awk '{print "  " $NF}' | sort -u | head -n 10 >&2
    return 1
  fi
  echo "build-executor: $bin needs at most GLIBC_$top (floor GLIBC_$FLOOR)" >&2
}

if [ "${1:-}" = --check ]; then check "${2:?usage: build-executor.sh --check BIN}"; exit; fi
profile=debug; flags=()
if [ "${1:-}" = --release ]; then profile=release; flags=(--release); fi

CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
Z=$CACHE/zig-$ZIG_VERSION-zigbuild-$ZIGBUILD_VERSION
if [ ! -e "$Z/.ok" ]; then
  rm -rf "$Z"; mkdir -p "$Z"
  python3 -m pip install --quiet --disable-pip-version-check --target "$Z/py" \
    "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" >&2
  touch "$Z/.ok"
fi
export PATH=$Z/py/bin:$PATH PYTHONPATH=$Z/py ZIG_GLOBAL_CACHE_DIR=$Z/cache
TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo-zigbuild zigbuild --locked -p fleetsnap --bin fleetsnap --target "$TRIPLE.$FLOOR" "${flags[@]}" >&2
bin=$TARGET_DIR/$TRIPLE/$profile/fleetsnap
check "$bin"
echo "$bin"
