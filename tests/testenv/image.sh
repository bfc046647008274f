#!/usr/bin/env bash
# Builds the test-host image once and caches it: a Debian bookworm root filesystem with
# systemd, sshd, a kernel and PostgreSQL (installed, not started), for both host tiers:
#   rootfs/                   booted by systemd-nspawn (container tier)
#   base.qcow2 vmlinuz initrd.img   booted by qemu (VM tier)
#   id_ed25519 known_hosts    root's login key and the image's (shared) host key
# Prints the image directory. The cache key is the hash of this file, so any change to
# what goes into the image rebuilds it; a warm call costs nothing.
set -euo pipefail
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
KEY=$(sha256sum "$0" | cut -c1-12)
OUT=$CACHE/images/bookworm-$KEY
[ -e "$OUT/.ok" ] && { echo "$OUT"; exit 0; }
exec 9>"$CACHE/images.lock"; flock 9            # concurrent test binaries build it once
[ -e "$OUT/.ok" ] && { echo "$OUT"; exit 0; }
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
R=$OUT/rootfs; LOG=$OUT.log
rm -rf "$OUT"; mkdir -p "$OUT"
t0=$(date +%s)
{
# systemd-creds, logind sessions for ssh logins, a kernel for the VM tier, PostgreSQL for the
# database scenario, and the few tools the operator's host steps use (sha256sum is coreutils).
PKGS=systemd,systemd-sysv,udev,dbus,libpam-systemd,openssh-server,iproute2,procps,zstd
PKGS+=,linux-image-cloud-amd64,initramfs-tools,postgresql,ca-certificates
debootstrap --variant=minbase --include="$PKGS" bookworm "$R" "$MIRROR"

ssh-keygen -q -t ed25519 -N '' -C fleetsnap-testenv -f "$OUT/id_ed25519"
install -d -m 700 "$R/root/.ssh"
install -m 600 "$OUT/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
cut -d' ' -f1,2 "$R/etc/ssh/ssh_host_ed25519_key.pub" > "$OUT/host_key.pub"

echo testhost > "$R/etc/hostname"
echo "# / is mounted rw by the kernel command line (VMs) or by nspawn" > "$R/etc/fstab"
mkdir -p "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$R/etc/systemd/journald.conf.d/volatile.conf"
# Every host must generate its own machine id (and so its own systemd-creds host key).
: > "$R/etc/machine-id"; ln -sf /etc/machine-id "$R/var/lib/dbus/machine-id"
# VM tier: qemu user networking, static address, no DHCP wait.
cat > "$R/etc/systemd/network/10-vm.network" <<'NET'
[Match]
Name=en* eth*
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
# sshd is Type=notify, so once this unit ran, sshd listens: the harness waits for this line on
# the console instead of polling ssh (half-open logins pile up on slow guests).
cat > "$R/etc/systemd/system/testenv-ready.service" <<'UNIT'
[Unit]
Description=Announce on the console that sshd is up
After=ssh.service systemd-networkd.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "TESTENV-READY $(hostname)" > /dev/console'
[Install]
WantedBy=multi-user.target
UNIT
systemctl --root="$R" enable systemd-networkd.service testenv-ready.service
systemctl --root="$R" disable postgresql.service
systemctl --root="$R" mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer getty@tty1.service
# VM tier boots the cloud kernel directly; only virtio modules are needed to find /dev/vda.
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk virtio_net virtio_rng > "$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all
cp -L "$R/vmlinuz" "$OUT/vmlinuz"; cp -L "$R/initrd.img" "$OUT/initrd.img"
rm -f "$R"/var/cache/apt/archives/*.deb
rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/*
mkfs.ext4 -q -L root -d "$R" "$OUT/base.raw" 3G
qemu-img convert -O qcow2 "$OUT/base.raw" "$OUT/base.qcow2"; rm -f "$OUT/base.raw"
} >"$LOG" 2>&1 || { echo "image.sh: building the host image failed; log: $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
touch "$OUT/.ok"
echo "image.sh: built $OUT in $(( $(date +%s) - t0 ))s" >&2
echo "$OUT"
