#!/usr/bin/env bash
# The fleet benchmark's hosts (tier "real"): N systemd-nspawn containers from the testenv image
# (+ bench/fleet/image.sh's python3 layer), each on a disk-backed overlayfs, all on one bridge
# with a /16 (10.88.0.0/16), so N is not capped at 244. Everything that talks to the hosts
# (operator, Ansible, the harness's ssh) runs inside the bridge's network namespace: no port
# forward per host.
#
#   fleet.sh up   --dir D --hosts N [--first K]   boot hosts K..K+N-1 (parallel batches)
#   fleet.sh stop --dir D I...                   power off host I, remove its overlay
#   fleet.sh down --dir D                        every host, the netns, the cgroups, sysctls
#   fleet.sh fault --dir D KIND I...             KIND: drop refuse stall hang slow
#   fleet.sh heal  --dir D KIND I...
#   fleet.sh ssh   --dir D I CMD                 run CMD on host I (from inside the netns)
#   fleet.sh netns-up --dir D [--api-port P] [--s3-port P]
#
# Sourced by run.sh for its functions (FLEET_LIB=1). Cgroups: every container under
# <hier>/fleetsnap-fleet/<id>/hosts/hI in the systemd, unified, memory and cpuacct hierarchies,
# so the hosts' CPU and memory are accounted as one component.
set -euo pipefail
FLEET_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLEET_ROOT=$(cd "$FLEET_HERE/../.." && pwd)

fleet_init() {   # fleet_init DIR
  FDIR=$1; mkdir -p "$FDIR"; FDIR=$(cd "$FDIR" && pwd)
  FID=$(printf '%s' "$FDIR" | sha256sum | cut -c1-6)
  FNS=fsb$FID
  CGROOT=fleetsnap-fleet/$FID
  mkdir -p "$FDIR/hosts" "$FDIR/pids" "$FDIR/logs"
}
fsince() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
ffail() { echo "fleet: $*" >&2; exit 1; }

host_name() { printf 'host-%04d' "$1"; }
host_addr() { echo "10.88.$(( $1 / 250 )).$(( $1 % 250 + 2 ))"; }

# cg_path HIER REL; cg_enter REL (the calling shell, so what it execs inherits)
cg_hiers() { local h; for h in systemd unified memory cpuacct; do [ -d "/sys/fs/cgroup/$h" ] && echo "$h"; done; return 0; }
cg_enter() { local h; for h in $(cg_hiers); do mkdir -p "/sys/fs/cgroup/$h/$CGROOT/$1"; echo "$BASHPID" > "/sys/fs/cgroup/$h/$CGROOT/$1/cgroup.procs"; done; }
cg_move() {  # cg_move REL PID: move an already running process (CPU is counted from then on)
  local h; for h in memory cpuacct; do [ -d "/sys/fs/cgroup/$h" ] || continue
    mkdir -p "/sys/fs/cgroup/$h/$CGROOT/$1"; echo "$2" > "/sys/fs/cgroup/$h/$CGROOT/$1/cgroup.procs" 2>/dev/null || true; done; }

fssh() {   # fssh I CMD...: ssh as root to host I from inside the netns
  local i=$1; shift
  nsenter --net="/run/netns/$FNS" ssh -F "$FDIR/ssh_config" "root@$(host_addr "$i")" "$@"
}

fleet_ssh_config() {
  local img=$1
  cat > "$FDIR/ssh_config" <<CFG
Host *
  User root
  IdentityFile $img/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $FDIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 20
  LogLevel ERROR
CFG
  echo "10.88.*.* $(cat "$img/host_key.pub")" > "$FDIR/known_hosts"
}

# The netns with the bridge, the MinIO forward (hosts see it at 10.0.2.100:9000, as in testenv)
# and the API server forward (inside the netns 127.0.0.1:<api port> reaches the machine's
# 127.0.0.1:<api port>, so the admin kubeconfig and the certificate SANs work unchanged).
fleet_netns_up() {   # fleet_netns_up API_PORT S3_PORT (either may be empty)
  local api=$1 s3=$2
  ip netns add "$FNS" || ffail "cannot create netns $FNS (left over? run: fleet.sh down --dir $FDIR)"
  ip -n "$FNS" link add br0 type bridge
  ip -n "$FNS" addr add 10.88.0.1/16 dev br0
  ip -n "$FNS" addr add 10.0.2.100/32 dev br0
  ip -n "$FNS" link set br0 up; ip -n "$FNS" link set lo up
  if [ -n "$s3" ]; then
    fdaemon s3fwd-host socat "UNIX-LISTEN:$FDIR/s3.sock,fork" "TCP:127.0.0.1:$s3"
    fdaemon s3fwd-ns nsenter --net="/run/netns/$FNS" socat "TCP-LISTEN:9000,bind=10.0.2.100,reuseaddr,fork" "UNIX-CONNECT:$FDIR/s3.sock"
  fi
  if [ -n "$api" ]; then
    fdaemon apifwd-host socat "UNIX-LISTEN:$FDIR/api.sock,fork" "TCP:127.0.0.1:$api"
    fdaemon apifwd-ns nsenter --net="/run/netns/$FNS" socat "TCP-LISTEN:$api,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$FDIR/api.sock"
  fi
}
fdaemon() { local name=$1; shift; setsid "$@" </dev/null >"$FDIR/logs/$name.log" 2>&1 & echo $! > "$FDIR/pids/$name"; }

# Host-global sysctls: raised for the run, the old values restored by fleet_down. The
# neighbour table thresholds are global on this kernel (not per netns); the default
# gc_thresh3 = 1024 would cap the bridge at ~1,000 hosts.
FLEET_SYSCTLS="fs.inotify.max_user_instances=65536 fs.inotify.max_user_watches=1048576
net.ipv4.neigh.default.gc_thresh1=1024 net.ipv4.neigh.default.gc_thresh2=4096 net.ipv4.neigh.default.gc_thresh3=8192"
fleet_sysctls() {
  local kv
  if [ ! -e "$FDIR/sysctl.saved" ]; then
    for kv in $FLEET_SYSCTLS; do echo "${kv%%=*}=$(sysctl -n "${kv%%=*}")"; done > "$FDIR/sysctl.saved"
  fi
  for kv in $FLEET_SYSCTLS; do sysctl -qw "$kv"; done
}

host_start() {   # host_start I  (IMG, LAYER set)
  local i=$1 h name addr; h=$FDIR/hosts/h$i; name=$(host_name "$i"); addr=$(host_addr "$i")
  mkdir -p "$h/upper" "$h/work" "$h/merged"
  mountpoint -q "$h/merged" || mount -t overlay overlay \
    -o "lowerdir=$LAYER:$IMG/rootfs,upperdir=$h/upper,workdir=$h/work" "$h/merged"
  mkdir -p "$h/merged/etc/systemd/network"
  printf '[Match]\nName=host0\n[Network]\nAddress=%s/16\nGateway=10.88.0.1\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    "$addr" > "$h/merged/etc/systemd/network/20-host0.network"
  ( cg_enter "hosts/h$i"
    exec nsenter --net="/run/netns/$FNS" systemd-nspawn --quiet --boot --directory="$h/merged" \
      --machine="fsb$FID-h$i" --register=no --keep-unit --console=read-only \
      --network-bridge=br0 systemd.hostname="$name" ) </dev/null >"$FDIR/logs/h$i.console" 2>&1 &
  echo $! > "$FDIR/pids/h$i"
}

host_ready() {   # host_ready I TIMEOUT: console marker, then one patient ssh
  local i=$1 t0=$EPOCHREALTIME
  until grep -q "TESTENV-READY" "$FDIR/logs/h$i.console" 2>/dev/null; do
    kill -0 "$(cat "$FDIR/pids/h$i")" 2>/dev/null || { echo "h$i: nspawn exited" >&2; return 1; }
    [ "$(fsince "$t0" | cut -d. -f1)" -lt "$2" ] || { echo "h$i: no ready marker after $2 s" >&2; return 1; }
    sleep 0.5
  done
  timeout 120 nsenter --net="/run/netns/$FNS" ssh -F "$FDIR/ssh_config" "root@$(host_addr "$i")" true </dev/null || { echo "h$i: ssh failed" >&2; return 1; }
}

host_init_pid() { pgrep -P "$(cat "$FDIR/pids/h$1")" | head -1; }

mem_available_mib() { awk '/MemAvailable/{print int($2/1024)}' /proc/meminfo; }

# fleet_up FIRST COUNT: boot in batches of BATCH (default 16) with one readiness waiter per
# host; stops early (and says why) when MemAvailable drops below MIN_AVAIL_MIB (3072).
# Writes the booted indices to $FDIR/hosts.up (appends).
fleet_up() {
  local first=$1 count=$2 batch=${BATCH:-16} i j t0=$EPOCHREALTIME last=$(( $1 + $2 - 1 )) pids ok=0
  [ -n "${IMG:-}" ] || { local out; out=$("$FLEET_HERE/image.sh"); IMG=$(sed -n 1p <<<"$out"); LAYER=$(sed -n 2p <<<"$out"); }
  fleet_ssh_config "$IMG"
  for ((i = first; i <= last; i += batch)); do
    local avail; avail=$(mem_available_mib)
    if [ "$avail" -lt "${MIN_AVAIL_MIB:-3072}" ]; then
      echo "fleet: LIMIT: stopped booting at host $i: MemAvailable ${avail} MiB < ${MIN_AVAIL_MIB:-3072} MiB" | tee -a "$FDIR/limit.txt" >&2
      break
    fi
    pids=()
    for ((j = i; j < i + batch && j <= last; j++)); do host_start "$j"; done
    for ((j = i; j < i + batch && j <= last; j++)); do host_ready "$j" 300 & pids+=("$!:$j"); done
    for p in "${pids[@]}"; do
      if wait "${p%%:*}"; then echo "${p#*:}" >> "$FDIR/hosts.up"; ok=$((ok + 1))
      else echo "fleet: LIMIT: host ${p#*:} did not come up" | tee -a "$FDIR/limit.txt" >&2; fi
    done
    echo "fleet: $ok hosts up after $(fsince "$t0") s (MemAvailable $(mem_available_mib) MiB, load $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
}

host_stop() {   # host_stop I: orderly poweroff (SIGTERM to nspawn), fallback SIGKILL of its init
  local i=$1 f=$FDIR/pids/h$i pid h=$FDIR/hosts/h$i
  if [ -e "$f" ]; then
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$(pgrep -P "$pid")" 2>/dev/null || true; fi
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$f"
  fi
  if [ -d "$h" ]; then umount "$h/merged" 2>/dev/null || umount -l "$h/merged" 2>/dev/null || true; rm -rf "$h"; fi
  local hh; for hh in $(cg_hiers); do rmdir "/sys/fs/cgroup/$hh/$CGROOT/hosts/h$i" 2>/dev/null || \
    find "/sys/fs/cgroup/$hh/$CGROOT/hosts/h$i" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  sed -i "/^$i\$/d" "$FDIR/hosts.up" 2>/dev/null || true
}

fleet_down() {
  local f i p stops=() n=0
  for f in "$FDIR"/pids/h[0-9]*; do
    [ -e "$f" ] || continue; i=${f##*/h}
    host_stop "$i" & stops+=($!); n=$((n + 1))
    if [ $((n % 32)) = 0 ]; then for p in "${stops[@]}"; do wait "$p" || true; done; stops=(); fi
  done
  for p in "${stops[@]}"; do wait "$p" || true; done
  for d in "$FDIR"/hosts/h*; do [ -d "$d" ] || continue; umount "$d/merged" 2>/dev/null || umount -l "$d/merged" 2>/dev/null || true; rm -rf "$d"; done
  for f in "$FDIR"/pids/*; do [ -e "$f" ] || continue; kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  local h; for h in $(cg_hiers); do
    [ -d "/sys/fs/cgroup/$h/$CGROOT" ] && find "/sys/fs/cgroup/$h/$CGROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "/sys/fs/cgroup/$h/fleetsnap-fleet" 2>/dev/null || true
  done
  ip netns del "$FNS" 2>/dev/null || true
  rm -f "$FDIR/s3.sock" "$FDIR/api.sock" "$FDIR/hosts.up"
  if [ -e "$FDIR/sysctl.saved" ]; then
    local kv; for kv in $(cat "$FDIR/sysctl.saved"); do sysctl -qw "$kv" || true; done
    rm -f "$FDIR/sysctl.saved"
  fi
}

# ---- faults ---------------------------------------------------------------------------------
# drop:   nft in the host's netns drops every incoming packet to port 22 (SYNs and established
#         sessions: a cloud VM behind a closed security group)
# refuse: sshd stopped and its sessions killed: connections get RST at once
# stall:  sessions killed, the listening sshd SIGSTOPped: TCP connects, no banner ever comes
# hang:   /usr/bin/systemctl replaced by `sleep infinity` (logins work, commands hang)
# slow:   every systemctl call sleeps 3 s first, and egress is shaped to 1 Mbit/s (tbf);
#         (this kernel has no sch_netem, so no added RTT)
host_nsenter() { local pid; pid=$(host_init_pid "$1"); shift; nsenter -t "$pid" "$@"; }
fault() {
  local kind=$1 i=$2 m=$FDIR/hosts/h$2/merged
  case $kind in
    drop) host_nsenter "$i" -n nft -f - <<'NFT'
table inet fsbfault {
  chain sshdrop {
    type filter hook input priority 0; policy accept;
    tcp dport 22 drop
  }
}
NFT
      ;;
    refuse) host_nsenter "$i" -a sh -c 'systemctl stop ssh.service ssh.socket 2>/dev/null; pkill -KILL -x sshd; true' ;;
    stall) host_nsenter "$i" -a sh -c 'for p in $(pgrep -x sshd); do [ "$p" = "$(cat /run/sshd.pid)" ] || kill -KILL "$p"; done; kill -STOP "$(cat /run/sshd.pid)"' ;;
    hang) [ -e "$m/usr/bin/systemctl.fleet-real" ] || mv "$m/usr/bin/systemctl" "$m/usr/bin/systemctl.fleet-real"
      printf '#!/bin/sh\nexec sleep infinity\n' > "$m/usr/bin/systemctl"; chmod 755 "$m/usr/bin/systemctl" ;;
    slow) [ -e "$m/usr/bin/systemctl.fleet-real" ] || mv "$m/usr/bin/systemctl" "$m/usr/bin/systemctl.fleet-real"
      printf '#!/bin/sh\nsleep 3\nexec /usr/bin/systemctl.fleet-real "$@"\n' > "$m/usr/bin/systemctl"; chmod 755 "$m/usr/bin/systemctl"
      host_nsenter "$i" -n tc qdisc replace dev host0 root tbf rate 1mbit burst 16kbit latency 400ms ;;
    *) ffail "unknown fault kind $kind (drop refuse stall hang slow)" ;;
  esac
}
heal() {
  local kind=$1 i=$2 m=$FDIR/hosts/h$2/merged
  case $kind in
    drop) host_nsenter "$i" -n nft delete table inet fsbfault 2>/dev/null || true ;;
    refuse) host_nsenter "$i" -a systemctl start ssh.service ;;
    stall) host_nsenter "$i" -a sh -c 'kill -CONT "$(cat /run/sshd.pid)"' ;;
    hang|slow)
      [ -e "$m/usr/bin/systemctl.fleet-real" ] && mv -f "$m/usr/bin/systemctl.fleet-real" "$m/usr/bin/systemctl"
      # the hung commands (sleep infinity) are the fault's own processes: end them
      [ "$kind" = slow ] || host_nsenter "$i" -a sh -c 'pkill -x sleep; true'
      [ "$kind" = hang ] || host_nsenter "$i" -n tc qdisc del dev host0 root 2>/dev/null || true ;;
  esac
}

if [ -z "${FLEET_LIB:-}" ]; then
  cmd=${1:-}; shift || true
  D=; N=0; FIRST=1; API=; S3=; ARGS=()
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) D=$2; shift 2 ;; --hosts) N=$2; shift 2 ;; --first) FIRST=$2; shift 2 ;;
      --api-port) API=$2; shift 2 ;; --s3-port) S3=$2; shift 2 ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  [ -n "$D" ] || ffail "--dir is required"
  fleet_init "$D"
  case $cmd in
    netns-up) fleet_sysctls; fleet_netns_up "$API" "$S3" ;;
    up) fleet_sysctls; fleet_up "$FIRST" "$N" ;;
    stop) for i in "${ARGS[@]}"; do host_stop "$i"; done ;;
    down) fleet_down ;;
    fault) k=${ARGS[0]}; for i in "${ARGS[@]:1}"; do fault "$k" "$i"; done ;;
    heal) k=${ARGS[0]}; for i in "${ARGS[@]:1}"; do heal "$k" "$i"; done ;;
    ssh) fssh "${ARGS[0]}" "${ARGS[@]:1}" ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
fi
