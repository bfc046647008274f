#!/usr/bin/env bash
# testenv: a complete, real local environment for fleetsnap's tests and demo.
#
#   testenv.sh up   [--dir D] [--hosts N] [--tier ct|vm] [--host-os LIST] [--no-kube] [--no-s3]
#                   [--hold]
#   testenv.sh down [--dir D]
#   testenv.sh host-stop|host-start [--dir D] hostI
#   testenv.sh apiserver-stop|apiserver-start|apiserver-restart [--dir D]
#   testenv.sh etcd-stop|etcd-start [--dir D]
#                                        SIGKILL / restart a control-plane component on its
#                                        port, with its data (etcd) kept
#   testenv.sh env  [--dir D]            print the environment file (source it in a shell)
#
# `up` starts, on 127.0.0.1 only: etcd + kube-apiserver (generated certs, admin kubeconfig),
# MinIO (root user; mc configured), and N test hosts booted from the cached Debian image with
# systemd + sshd — nspawn containers (tier ct, default) or qemu VMs (tier vm) — in a private
# network namespace with no route out. Hosts reach MinIO as http://10.0.2.100:9000.
# --host-os (container tier) gives host i the i-th entry of a comma-separated LIST, the rest
# bookworm: bookworm, bullseye or trixie (ct-image.sh) boot their systemd; nosystemd is the
# bookworm rootfs with sshd as the container's only process (no init system, no systemd).
# With --hold it stays in the foreground until its stdin closes (the Rust harness keeps that
# pipe; when the test binary exits for any reason the environment is torn down).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
DIR=${FLEETSNAP_TESTENV_DIR:-/var/tmp/fleetsnap-testenv/demo}
NHOSTS=3; TIER=ct; KUBE=1; S3=1; HOLD=; HOST_OS=

cmd=${1:-}; shift || true
while [ $# -gt 0 ]; do
  case $1 in
    --dir) DIR=$2; shift 2 ;; --hosts) NHOSTS=$2; shift 2 ;; --tier) TIER=$2; shift 2 ;;
    --host-os) HOST_OS=$2; shift 2 ;;
    --no-kube) KUBE=; shift ;; --no-s3) S3=; shift ;; --hold) HOLD=1; shift ;;
    -*) echo "testenv: unknown option $1" >&2; exit 2 ;;
    *) ARG=$1; shift ;;
  esac
done
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
ID=$(printf '%s' "$DIR" | sha256sum | cut -c1-6)   # names netns, machines, cgroups
NS=fs$ID
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
fail() { echo "testenv: $*" >&2; exit 1; }

free_ports() { python3 -c '
import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"; }

# daemon NAME CMD...: start a long-running process detached from this shell, log to
# $DIR/logs/NAME.log, pid in $DIR/pids/NAME.
daemon() {
  local name=$1; shift
  mkdir -p "$DIR/logs" "$DIR/pids"
  setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  echo $! > "$DIR/pids/$name"
}

# await NAME TIMEOUT CHECK...: poll a readiness condition; name the component and its log
# when it dies or times out.
await() {
  local name=$1 timeout=$2 t0=$EPOCHREALTIME; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ -e "$DIR/pids/$name" ] && ! kill -0 "$(cat "$DIR/pids/$name")" 2>/dev/null; then
      tail -n 15 "$DIR/logs/$name.log" >&2 || true
      fail "$name exited during startup; log: $DIR/logs/$name.log"
    fi
    [ "$(since "$t0" | cut -d. -f1)" -lt "$timeout" ] || fail "$name not ready after ${timeout}s; log: $DIR/logs/$name.log"
    sleep 0.2
  done
}

# The env file is both shell-sourceable and trivially parsed by the Rust harness: KEY='value'.
envget() { sed -n "s/^$1='\\(.*\\)'\$/\\1/p" "$DIR/env"; }
# `NAME='value'` is what the parsers read (tests/src, bench/fleet, `sed`); the separate
# `export NAME` makes `source <dir>/env` hand the value to kubectl, mc and restic too.
envset() { printf "%s='%s'\nexport %s\n" "$1" "$2" "$1" >> "$DIR/env"; }

tools() {
  "$HERE/tools.sh" etcd kubernetes minio mc restic
  mkdir -p "$DIR/bin"
  local t
  for t in etcd:etcd kubernetes:kube-apiserver kubernetes:kubectl minio:minio mc:mc restic:restic; do
    ln -sfn "$("$HERE/tools.sh" path "${t%%:*}")/${t#*:}" "$DIR/bin/${t#*:}"
  done
  ln -sfn /usr/bin/restic "$DIR/bin/restic-0.14"
  ln -sfn /usr/bin/rclone "$DIR/bin/rclone"
}

# ---------------------------------------------------------------- kube-apiserver + etcd
pki() {
  local p=$DIR/pki; mkdir -p "$p"; cd "$p"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=fleetsnap-testenv-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  cert() {  # cert NAME SUBJECT USAGE [SAN]
    openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    # Always X.509 v3 with explicit usages: rustls (the operator's TLS stack) rejects v1
    # certificates, which openssl produces when no extensions are given.
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$3" > "$1.ext"
    if [ -n "${4:-}" ]; then printf 'subjectAltName=%s\n' "$4" >> "$1.ext"; fi
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  cert apiserver /CN=kube-apiserver serverAuth "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
  cert admin "/CN=testenv-admin/O=system:masters" clientAuth
  openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

# etcd and kube-apiserver are started by functions of their own, from ports recorded in the
# env file, so the control-plane verbs below restart them exactly as `up` started them.
etcd_start() {
  daemon etcd "$DIR/bin/etcd" --name testenv --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$(envget ETCD_PORT)" --advertise-client-urls "http://127.0.0.1:$(envget ETCD_PORT)" \
    --listen-peer-urls "http://127.0.0.1:$(envget ETCD_PEER_PORT)" --initial-advertise-peer-urls "http://127.0.0.1:$(envget ETCD_PEER_PORT)" \
    --initial-cluster "testenv=http://127.0.0.1:$(envget ETCD_PEER_PORT)" --unsafe-no-fsync --log-level warn
  await etcd 60 curl -sf "http://127.0.0.1:$(envget ETCD_PORT)/health"
}

apiserver_start() {
  local p=$DIR/pki
  daemon kube-apiserver "$DIR/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$(envget ETCD_PORT)" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$(envget KUBE_API_PORT)" \
    --cert-dir "$DIR/pki" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$p/sa.pub" \
    --service-account-signing-key-file "$p/sa.key" --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 --enable-priority-and-fairness=false --profiling=false \
    --disable-admission-plugins ServiceAccount
  await kube-apiserver 120 "$DIR/bin/kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /readyz
}

# component_kill NAME: SIGKILL a control-plane daemon (a crash, no graceful shutdown) and
# wait until it is gone, so a restart can bind the same port. Its log is kept as NAME.log.N.
component_kill() {
  local f=$DIR/pids/$1 pid n=1
  [ -e "$f" ] || fail "$1 is not running"
  pid=$(cat "$f")
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$pid" 2>/dev/null || fail "$1 (pid $pid) survived SIGKILL"
  rm -f "$f"
  while [ -e "$DIR/logs/$1.log.$n" ]; do n=$((n + 1)); done
  mv "$DIR/logs/$1.log" "$DIR/logs/$1.log.$n"
}

kube_up() {
  local etcd_port peer_port api_port
  read -r etcd_port peer_port api_port <<<"$(free_ports 3)"
  envset ETCD_PORT "$etcd_port"
  envset ETCD_PEER_PORT "$peer_port"
  envset KUBE_API_PORT "$api_port"
  pki
  etcd_start
  local p=$DIR/pki
  cat > "$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$p/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$p/admin.crt", client-key: "$p/admin.key"}
contexts:
- name: testenv
  context: {cluster: testenv, user: admin, namespace: default}
current-context: testenv
KC
  apiserver_start
  envset KUBECONFIG "$DIR/kubeconfig"
  envset KUBE_APISERVER "https://127.0.0.1:$api_port"
  envset KUBE_CA_FILE "$p/ca.crt"
}

# ---------------------------------------------------------------- MinIO
s3_up() {
  local api_port console_port
  read -r api_port console_port <<<"$(free_ports 2)"
  mkdir -p "$DIR/minio"
  local user=testenv-root pass
  pass=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  MINIO_ROOT_USER=$user MINIO_ROOT_PASSWORD=$pass MINIO_BROWSER=off \
    daemon minio "$DIR/bin/minio" server "$DIR/minio/data" --address "127.0.0.1:$api_port" \
      --console-address "127.0.0.1:$console_port" --quiet
  await minio 60 curl -sf "http://127.0.0.1:$api_port/minio/health/live"
  envset S3_ENDPOINT "http://127.0.0.1:$api_port"
  envset S3_ENDPOINT_FROM_HOSTS "http://10.0.2.100:9000"
  envset S3_PORT "$api_port"
  envset MINIO_ROOT_USER "$user"
  envset MINIO_ROOT_PASSWORD "$pass"
  envset MC_CONFIG_DIR "$DIR/mc"
  envset MC_HOST_testenv "http://$user:$pass@127.0.0.1:$api_port"
}

# ---------------------------------------------------------------- test hosts
IMG=
ssh_config() {
  local i port; : > "$DIR/ssh_config"
  for i in $(seq 1 "$NHOSTS"); do
    port=$(cat "$DIR/hosts/host$i.port")
    printf 'Host host%s\n  HostName 127.0.0.1\n  Port %s\n' "$i" "$port" >> "$DIR/ssh_config"
  done
  cat >> "$DIR/ssh_config" <<CFG
Host *
  User root
  IdentityFile $IMG/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 30
  LogLevel ERROR
CFG
  echo "[127.0.0.1]:* $(cat "$IMG/host_key.pub")" > "$DIR/known_hosts"
}

# The service forward every host sees at 10.0.2.100:9000 (MinIO on the host's loopback).
ct_net_up() {
  ip netns add "$NS" || fail "cannot create network namespace $NS (left over? run: $0 down --dir $DIR)"
  ip -n "$NS" link add br0 type bridge
  ip -n "$NS" addr add 10.0.3.1/24 dev br0
  ip -n "$NS" addr add 10.0.2.100/32 dev br0
  ip -n "$NS" link set br0 up; ip -n "$NS" link set lo up
  # Suites that serve something else to the hosts forward it into this namespace too.
  envset NETNS "$NS"
  if [ -n "$S3" ]; then
    local port; port=$(envget S3_PORT)
    daemon s3fwd-host socat "UNIX-LISTEN:$DIR/s3.sock,fork" "TCP:127.0.0.1:$port"
    daemon s3fwd-ns nsenter --net="/run/netns/$NS" socat "TCP-LISTEN:9000,bind=10.0.2.100,reuseaddr,fork" "UNIX-CONNECT:$DIR/s3.sock"
  fi
}

cg_dirs() { local h; for h in systemd unified; do [ -d "/sys/fs/cgroup/$h" ] && echo "/sys/fs/cgroup/$h/fleetsnap-testenv/$ID/$1"; done; return 0; }

# The OS of host I (--host-os), recorded at `up` so that host-start boots the same one.
host_os() { local os; os=$(cut -d, -f"$1" <<<"$HOST_OS,"); echo "${os:-bookworm}"; }

ct_start() {   # ct_start I
  local i=$1 port os root; port=$(cat "$DIR/hosts/host$i.port")
  os=$(cat "$DIR/hosts/host$i.os" 2>/dev/null || echo bookworm)
  case $os in
    bookworm|nosystemd) root=$IMG/rootfs ;;
    bullseye|trixie) root=$("$HERE/ct-image.sh" "$os")/rootfs ;;
    *) fail "host$i: unknown --host-os entry $os" ;;
  esac
  printf '[Match]\nName=host0\n[Network]\nAddress=10.0.3.%s/24\nGateway=10.0.3.1\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    $((10 + i)) > "$DIR/hosts/host$i.network"
  : > "$DIR/logs/host$i.log" 2>/dev/null || { mkdir -p "$DIR/logs"; : > "$DIR/logs/host$i.log"; }
  # Without systemd as PID 1 on the machine, nspawn cannot get its own scope: each container
  # must start from its own cgroup, or their systemd instances share (and kill) one tree.
  # `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the cgroup mounts).
  local cgs; cgs=$(cg_dirs "host$i")
  if [ "$os" = nosystemd ]; then
    # No init: the container's one process configures its address and becomes sshd.
    local a=10.0.3.$((10 + i))
    ( for c in $cgs; do mkdir -p "$c"; echo "$BASHPID" > "$c/cgroup.procs"; done
      exec nsenter --net="/run/netns/$NS" systemd-nspawn --quiet --directory="$root" \
        --machine="fs$ID-h$i" --volatile=overlay --register=no --keep-unit --console=read-only \
        --network-bridge=br0 --hostname="host$i" \
        /bin/sh -c "ip link set lo up && ip addr add $a/24 dev host0 && ip link set host0 up &&
          ip route add default via 10.0.3.1 && mkdir -p /run/sshd && /usr/sbin/sshd -t &&
          echo 'TESTENV-READY host$i' && exec /usr/sbin/sshd -D -e" ) </dev/null >"$DIR/logs/host$i.log" 2>&1 &
  else
  ( for c in $cgs; do mkdir -p "$c"; echo "$BASHPID" > "$c/cgroup.procs"; done
    exec nsenter --net="/run/netns/$NS" systemd-nspawn --quiet --boot --directory="$root" \
      --machine="fs$ID-h$i" --volatile=overlay --register=no --keep-unit --console=read-only \
      --network-bridge=br0 --bind-ro="$DIR/hosts/host$i.network:/etc/systemd/network/20-host0.network" \
      systemd.hostname="host$i" ) </dev/null >"$DIR/logs/host$i.log" 2>&1 &
  fi
  echo $! > "$DIR/pids/host$i"
  daemon "host$i-sshfwd" socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" \
    "EXEC:nsenter --net=/run/netns/$NS socat STDIO TCP\:10.0.3.$((10 + i))\:22"
}

vm_start() {   # vm_start I
  local i=$1 port accel cpu slow=""; port=$(cat "$DIR/hosts/host$i.port")
  [ -e "$DIR/hosts/host$i.qcow2" ] || qemu-img create -q -f qcow2 -F qcow2 -b "$IMG/base.qcow2" "$DIR/hosts/host$i.qcow2"
  # /dev/kvm on this machine kind is PVM (kvm_pvm), which cannot run a stock kernel: real KVM
  # only with kvm_intel/kvm_amd. Under TCG cap the code cache and raise systemd's timeouts.
  if [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; then accel=kvm; cpu=host
  else accel=tcg,tb-size=64; cpu=max; slow=systemd.default_timeout_start_sec=600; fi
  echo "$accel" > "$DIR/hosts/host$i.accel"
  local net="user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22"
  if [ -n "$S3" ]; then
    net+=",guestfwd=tcp:10.0.2.100:9000-cmd:socat - TCP:127.0.0.1:$(envget S3_PORT)"
  fi
  : > "$DIR/logs/host$i.log"
  qemu-system-x86_64 -name "host$i" -machine q35 -accel "$accel" -cpu "$cpu" -smp 1 -m 512 \
    -nodefaults -no-user-config -display none \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet mitigations=off systemd.hostname=host$i $slow" \
    -drive "id=hd0,if=none,file=$DIR/hosts/host$i.qcow2,format=qcow2,discard=unmap" -device virtio-blk-pci,drive=hd0 \
    -netdev "$net" -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
    -serial "file:$DIR/logs/host$i.log" -monitor none -qmp "unix:$DIR/hosts/host$i.qmp,server=on,wait=off" \
    -daemonize -pidfile "$DIR/pids/host$i"
}

host_wait() {   # host_wait I TIMEOUT
  local i=$1
  await "host$i" "$2" grep -q "TESTENV-READY host$i" "$DIR/logs/host$i.log"
  await "host$i" "$2" timeout 300 ssh -F "$DIR/ssh_config" -o ConnectTimeout=240 "host$i" true
}

hosts_up() {
  IMG=$("$HERE/image.sh")
  mkdir -p "$DIR/hosts" "$DIR/pids" "$DIR/logs"
  local ports i; read -r -a ports <<<"$(free_ports "$NHOSTS")"
  for i in $(seq 1 "$NHOSTS"); do echo "${ports[$((i-1))]}" > "$DIR/hosts/host$i.port"; done
  for i in $(seq 1 "$NHOSTS"); do host_os "$i" > "$DIR/hosts/host$i.os"; done
  [ -z "$HOST_OS" ] || [ "$TIER" = ct ] || fail "--host-os needs the container tier"
  ssh_config
  if [ "$TIER" = ct ]; then
    sysctl -qw fs.inotify.max_user_instances=8192   # ~10 containers exhaust the default 128
    ct_net_up
    for i in $(seq 1 "$NHOSTS"); do ct_start "$i"; done
    for i in $(seq 1 "$NHOSTS"); do host_wait "$i" 120; done
  else
    for i in $(seq 1 "$NHOSTS"); do vm_start "$i"; done
    local pids=() rc=0
    for i in $(seq 1 "$NHOSTS"); do host_wait "$i" 900 & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ $rc = 0 ] || fail "not every VM came up"
  fi
  envset HOSTS "$(seq -f 'host%g' -s ' ' 1 "$NHOSTS")"
  envset HOST_TIER "$TIER"
  for i in $(seq 1 "$NHOSTS"); do envset "HOST${i}_PORT" "$(cat "$DIR/hosts/host$i.port")"; done
  for i in $(seq 1 "$NHOSTS"); do envset "HOST${i}_OS" "$(cat "$DIR/hosts/host$i.os")"; done
  envset SSH_CONFIG "$DIR/ssh_config"
  envset SSH_KEY "$IMG/id_ed25519"
  envset SSH_KNOWN_HOSTS "$DIR/known_hosts"
  envset HOST_KEY "$(cat "$IMG/host_key.pub")"
  envset IMAGE_DIR "$IMG"
}

host_stop() {   # host_stop I: orderly poweroff, then the container's init / qemu by pid
  local i=$1 f pid
  f=$DIR/pids/host$i
  [ -e "$f" ] || return 0
  pid=$(cat "$f")
  if [ "$(envget HOST_TIER)" = vm ]; then
    timeout 20 ssh -F "$DIR/ssh_config" "host$i" 'systemctl poweroff --no-block' >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill "$pid" 2>/dev/null || true
  else
    [ -e "$DIR/pids/host$i-sshfwd" ] && { kill "$(cat "$DIR/pids/host$i-sshfwd")" 2>/dev/null || true; rm -f "$DIR/pids/host$i-sshfwd"; }
    kill -TERM "$pid" 2>/dev/null || true     # nspawn -b turns SIGTERM into an orderly poweroff
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    # never SIGKILL nspawn itself (the container would be orphaned): kill its init instead
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$(pgrep -P "$pid")" 2>/dev/null || true; fi
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$f"
}

down() {
  local f i p stops=()
  [ -d "$DIR/pids" ] || { ip netns del "$NS" 2>/dev/null || true; return 0; }
  for f in "$DIR"/pids/host[0-9]*; do
    [ -e "$f" ] || continue
    case $f in *-sshfwd) continue ;; esac
    i=${f##*/host}; host_stop "$i" & stops+=($!)
  done
  # wait only for the stops: the daemons are children of this shell too
  for p in "${stops[@]}"; do wait "$p" || true; done
  for f in "$DIR"/pids/*; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$DIR"/pids/*; do   # etcd/minio/apiserver: give them a moment, then be firm
    [ -e "$f" ] || continue
    for _ in $(seq 1 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$(cat "$f")" 2>/dev/null || true; rm -f "$f"
  done
  local h; for h in systemd unified; do
    [ -d "/sys/fs/cgroup/$h/fleetsnap-testenv/$ID" ] && find "/sys/fs/cgroup/$h/fleetsnap-testenv/$ID" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ip netns del "$NS" 2>/dev/null || true
  rm -f "$DIR/s3.sock"
  # Keep the logs for a post-mortem; drop the bulk (etcd, MinIO objects, VM disk overlays).
  rm -rf "$DIR/etcd" "$DIR/minio/data" "$DIR"/hosts/*.qcow2
}

up() {
  local t0=$EPOCHREALTIME
  [ ! -e "$DIR/env" ] || down
  rm -rf "$DIR/env" "$DIR/pids" "$DIR/etcd" "$DIR/minio" "$DIR/hosts" "$DIR/logs"
  mkdir -p "$DIR/logs" "$DIR/pids"
  "$HERE/deps.sh"
  tools
  envset TESTENV_DIR "$DIR"
  echo "PATH=\"$DIR/bin:\$PATH\"" >> "$DIR/env"
  trap 'echo "testenv: startup failed, tearing down" >&2; down' EXIT
  [ -z "$KUBE" ] || kube_up
  [ -z "$S3" ] || s3_up
  [ "$NHOSTS" = 0 ] || hosts_up
  trap - EXIT
  echo "testenv: up in $(since "$t0") s ($DIR)" >&2
}

case $cmd in
  up)
    up
    if [ -n "$HOLD" ]; then
      trap 'down; exit 0' TERM INT
      echo "TESTENV-READY $DIR"
      cat >/dev/null || true          # until our owner closes stdin (or dies)
      down
    fi ;;
  down) down ;;
  host-stop) host_stop "${ARG#host}" ;;
  host-start)
    IMG=$(envget IMAGE_DIR); TIER=$(envget HOST_TIER)
    S3=$(grep -q '^S3_PORT=' "$DIR/env" && echo 1 || true)
    if [ "$TIER" = ct ]; then ct_start "${ARG#host}"; else vm_start "${ARG#host}"; fi
    host_wait "${ARG#host}" 900 ;;
  apiserver-stop) component_kill kube-apiserver ;;
  apiserver-start) apiserver_start ;;
  apiserver-restart) component_kill kube-apiserver; apiserver_start ;;
  etcd-stop) component_kill etcd ;;
  etcd-start) etcd_start ;;
  env) cat "$DIR/env" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
