#!/usr/bin/env bash
# Builds a container-tier test-host image of another Debian release once and caches it, for
# the mixed fleet next to image.sh's bookworm hosts:
#
#   ct-image.sh bullseye    systemd 247, glibc 2.31 (LoadCredential=, no encrypted credentials)
#   ct-image.sh trixie      systemd 257, glibc 2.41
#
# rootfs/ only (booted by systemd-nspawn), with systemd, sshd and the console ready line the
# harness waits for, and the bookworm image's root login key and host keys so that one
# ssh_config and known_hosts reach every host. Prints the image directory. The cache key is the
# hash of this file, the suite and the bookworm image it takes its keys from.
set -euo pipefail
SUITE=${1:?usage: ct-image.sh bullseye|trixie}
case $SUITE in bullseye|trixie) ;; *) echo "ct-image.sh: unknown suite $SUITE" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
BASE=$("$HERE/image.sh")
KEY=$( (sha256sum < "$0"; echo "$SUITE $BASE") | sha256sum | cut -c1-12)
OUT=$CACHE/images/$SUITE-$KEY
[ -e "$OUT/.ok" ] && { echo "$OUT"; exit 0; }
exec 9>"$CACHE/images-$SUITE.lock"; flock 9
[ -e "$OUT/.ok" ] && { echo "$OUT"; exit 0; }
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
R=$OUT/rootfs; LOG=$OUT.log
rm -rf "$OUT"; mkdir -p "$OUT"
t0=$(date +%s)
{
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,iproute2,procps \
  "$SUITE" "$R" "$MIRROR"
cp "$BASE/id_ed25519" "$BASE/id_ed25519.pub" "$BASE/host_key.pub" "$OUT/"
install -d -m 700 "$R/root/.ssh"
install -m 600 "$BASE/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
rm -f "$R"/etc/ssh/ssh_host_*
cp -a "$BASE"/rootfs/etc/ssh/ssh_host_* "$R/etc/ssh/"
echo testhost > "$R/etc/hostname"
: > "$R/etc/fstab"
mkdir -p "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$R/etc/systemd/journald.conf.d/volatile.conf"
: > "$R/etc/machine-id"; mkdir -p "$R/var/lib/dbus"; ln -sf /etc/machine-id "$R/var/lib/dbus/machine-id"
cp "$BASE/rootfs/etc/systemd/system/testenv-ready.service" "$R/etc/systemd/system/"
systemctl --root="$R" enable systemd-networkd.service testenv-ready.service
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
         e2scrub_reap.service fstrim.timer getty@tty1.service; do systemctl --root="$R" mask "$u"; done
rm -f "$R"/var/cache/apt/archives/*.deb
rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/*
} >"$LOG" 2>&1 || { echo "ct-image.sh: building the $SUITE image failed; log: $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
touch "$OUT/.ok"
echo "ct-image.sh: built $OUT in $(( $(date +%s) - t0 ))s" >&2
echo "$OUT"
