#!/usr/bin/env bash
# Installs the Debian packages the test environment needs (idempotent; quiet when all present).
set -euo pipefail
PKGS=(debootstrap systemd-container qemu-system-x86 qemu-utils socat openssl iproute2 e2fsprogs
      openssh-client restic rclone curl prometheus lua5.4 lua-cjson postgresql-client python3
      faketime strace binutils)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
