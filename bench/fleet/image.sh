#!/usr/bin/env bash
# The fleet benchmark's host image: the testenv image (tests/testenv/image.sh, unchanged) plus
# one overlay layer with python3 (Ansible's modules need it on the managed hosts; fleetsnap
# does not use it) and journald capped at 4 MiB per host. Hosts mount
#   lowerdir=<layer>:<testenv rootfs>
# so the layer costs ~60 MiB once, not per host. Cache key: this file + the testenv image key.
# Prints two lines: the testenv image directory, then the layer directory.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
BASE=$("$ROOT/tests/testenv/image.sh")
KEY=$( (sha256sum "$0" | cut -c1-12; basename "$BASE") | sha256sum | cut -c1-12)
OUT=$CACHE/images/fleet-layer-$KEY
if [ ! -e "$OUT/.ok" ]; then
  exec 9>"$CACHE/images.lock"; flock 9
  if [ ! -e "$OUT/.ok" ]; then
    rm -rf "$OUT"; mkdir -p "$OUT/layer" "$OUT/work" "$OUT/merged"
    LOG=$OUT.log; t0=$(date +%s)
    {
      mount -t overlay overlay -o "lowerdir=$BASE/rootfs,upperdir=$OUT/layer,workdir=$OUT/work" "$OUT/merged"
      trap 'umount "$OUT/merged/dev" 2>/dev/null; umount "$OUT/merged/proc" 2>/dev/null; umount "$OUT/merged" 2>/dev/null || true' EXIT
      mount --bind /dev "$OUT/merged/dev"; mount -t proc proc "$OUT/merged/proc"
      cp /etc/resolv.conf "$OUT/merged/etc/resolv.conf"
      chroot "$OUT/merged" apt-get update -qq
      DEBIAN_FRONTEND=noninteractive chroot "$OUT/merged" apt-get install -y -qq --no-install-recommends python3
      chroot "$OUT/merged" python3 --version
      mkdir -p "$OUT/merged/etc/systemd/journald.conf.d"
      printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=4M\n' > "$OUT/merged/etc/systemd/journald.conf.d/volatile.conf"
      rm -rf "$OUT/merged"/var/lib/apt/lists/* "$OUT/merged"/var/cache/apt/*.bin "$OUT/merged"/var/cache/apt/archives/*.deb
      rm -f "$OUT/merged/etc/resolv.conf"
      umount "$OUT/merged/dev" "$OUT/merged/proc" "$OUT/merged"; trap - EXIT
      rm -rf "$OUT/work" "$OUT/merged"
    } >"$LOG" 2>&1 || { echo "fleet/image.sh: building the layer failed; log: $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
    touch "$OUT/.ok"
    echo "fleet/image.sh: built $OUT in $(( $(date +%s) - t0 ))s" >&2
  fi
fi
echo "$BASE"
echo "$OUT/layer"
