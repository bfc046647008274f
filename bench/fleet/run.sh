#!/usr/bin/env bash
# Fleet-scale benchmark (issue 11): the operator against N real nspawn hosts, phase by phase,
# next to Ansible pushing the same end state. A benchmark, not a CI test.
#
#   bench/fleet/run.sh --hosts N [--seed S] [--steady DUR] [--faults DUR] [--fault-kinds K,K]
#                      [--churn K] [--no-restart] [--ansible a0,a1|none] [--ansible-hosts K]
#                      [--phases rollout,steady,faults,churn,restart,ansible] [--quick]
#                      [--operator BIN] [--executor BIN] [--no-build] [--dir D] [--keep]
#                      [--schedule CAL] [--delay DUR] [--rollout-timeout DUR]
#
# Durations are seconds or Ns/Nm. Prints its seed first and a one-line result last; writes
# bench/fleet/results/<UTC>-n<N>.{md,json} (small text only). See docs/benchmarks.md, "Fleet".
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
COMMAND="bench/fleet/run.sh $*"

NHOSTS=50; SEED=; STEADY=900; FAULTS=600; FAULT_KINDS=drop,refuse,stall,hang,slow; CHURN=
RESTART=1; ANSIBLE=a0,a1; ANSIBLE_HOSTS=; PHASES=rollout,steady,faults,churn,restart,ansible
OPERATOR=; EXECUTOR=; BUILD=1; DIR=; KEEP=; SCHEDULE='*:0/5'; DELAY=4m; ROLLOUT_TIMEOUT=1200
QUICK=; ANSIBLE_VERSION=2.19.14; RECOVERY_TIMEOUT=300
secs() { case $1 in *m) echo $(( ${1%m} * 60 )) ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac; }
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) NHOSTS=$2; shift 2 ;; --seed) SEED=$2; shift 2 ;;
    --steady) STEADY=$(secs "$2"); shift 2 ;; --faults) FAULTS=$(secs "$2"); shift 2 ;;
    --fault-kinds) FAULT_KINDS=$2; shift 2 ;; --churn) CHURN=$2; shift 2 ;;
    --no-restart) RESTART=; shift ;; --ansible) ANSIBLE=$2; shift 2 ;;
    --ansible-hosts) ANSIBLE_HOSTS=$2; shift 2 ;; --phases) PHASES=$2; shift 2 ;;
    --quick) QUICK=1; shift ;; --operator) OPERATOR=$2; shift 2 ;; --executor) EXECUTOR=$2; shift 2 ;;
    --no-build) BUILD=; shift ;; --dir) DIR=$2; shift 2 ;; --keep) KEEP=1; shift ;;
    --schedule) SCHEDULE=$2; shift 2 ;; --delay) DELAY=$2; shift 2 ;;
    --rollout-timeout) ROLLOUT_TIMEOUT=$(secs "$2"); shift 2 ;;
    --recovery-timeout) RECOVERY_TIMEOUT=$(secs "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/fleet/run.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [ -n "$QUICK" ]; then   # CI-sized: rollout, a short steady state, one restart; no faults, no Ansible
  STEADY=${QUICK_STEADY:-45}; PHASES=rollout,steady,restart; ANSIBLE=none
  SCHEDULE='*:*:00/20'; DELAY=10s; ROLLOUT_TIMEOUT=180
fi
SEED=${SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
echo "fleet: seed $SEED hosts $NHOSTS phases $PHASES"
has_phase() { [[ ,$PHASES, == *,$1,* ]]; }
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { echo "bench/fleet/run.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, systemd-nspawn, cgroups)"

# ---- components: every one that is missing is named -----------------------------------------
missing=()
for c in socat nsenter systemd-nspawn ip tc nft python3 ssh curl; do command -v "$c" >/dev/null || missing+=("$c"); done
if [[ " ${missing[*]} " == *" nft "* ]]; then
  log "installing nftables (Debian) for the dropped-packets fault"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null 2>&1 || true
  command -v nft >/dev/null && missing=("${missing[@]/nft}")
fi
missing=(${missing[@]+"${missing[@]}"})
[ ${#missing[@]} = 0 ] || die "missing components: ${missing[*]} (tests/testenv/deps.sh installs most; nft is Debian's nftables)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "$BUILD" ] && [ -z "$OPERATOR" ]; then
  log "cargo build --release --workspace --bins"
  (cd "$ROOT" && cargo build --release --workspace --bins --quiet) || die "cargo build --release failed"
fi
OPERATOR=${OPERATOR:-$CARGO_TARGET_DIR/release/fleetsnap-operator}
EXECUTOR_SRC=${EXECUTOR:-$(dirname "$OPERATOR")/fleetsnap}
[ -x "$OPERATOR" ] || die "operator binary missing: $OPERATOR"
[ -x "$EXECUTOR_SRC" ] || die "executor binary missing: $EXECUTOR_SRC"
OPERATOR_GIT=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- operator crds || echo -dirty)

DIR=${DIR:-/var/tmp/fleetsnap-fleet/run-$NHOSTS}
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
PROBE=$DIR/probe
FLEET_LIB=1 . "$HERE/fleet.sh"
fleet_init "$DIR/fleet"
TE=$DIR/testenv
NS=fleet; POLICY=fleet; BUCKET=fleetsnap-fleet; PASSWORD=fleet-repository-password-$SEED
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OPERATOR_PID=; PROBE_PID=

cleanup() {
  local rc=$?
  set +e
  [ -n "$OPERATOR_PID" ] && kill -KILL "$OPERATOR_PID" 2>/dev/null
  [ -n "$PROBE_PID" ] && kill "$PROBE_PID" 2>/dev/null
  if [ -z "$KEEP" ]; then
    log "tearing down (hosts, netns, testenv)"
    fleet_down
    "$ROOT/tests/testenv/testenv.sh" down --dir "$TE" >/dev/null 2>&1
    rm -rf "$DIR/fleet/hosts" "$TE/etcd" "$TE/minio"
  else
    log "kept: $DIR (tear down: FLEET_LIB= bench/fleet/fleet.sh down --dir $DIR/fleet; tests/testenv/testenv.sh down --dir $TE)"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# leftovers of an earlier run in the same directory
fleet_down >/dev/null 2>&1 || true
"$ROOT/tests/testenv/testenv.sh" down --dir "$TE" >/dev/null 2>&1 || true
rm -rf "$PROBE"; mkdir -p "$PROBE"

# ---- control plane + MinIO (testenv, no hosts: the hosts are ours) --------------------------
log "testenv: kube-apiserver, etcd, MinIO"
"$ROOT/tests/testenv/testenv.sh" up --dir "$TE" --hosts 0 >"$DIR/testenv-up.log" 2>&1 || { tail -20 "$DIR/testenv-up.log"; die "testenv up failed"; }
envget() { sed -n "s/^$1='\\(.*\\)'\$/\\1/p" "$TE/env"; }
export KUBECONFIG; KUBECONFIG=$(envget KUBECONFIG)
export MC_CONFIG_DIR; MC_CONFIG_DIR=$(envget MC_CONFIG_DIR)
KUBECTL=$TE/bin/kubectl; MC=$TE/bin/mc
export "MC_HOST_testenv=$(envget MC_HOST_testenv)"
API_PORT=$(envget KUBE_API_PORT); S3_PORT=$(envget S3_PORT)
for c in kube-apiserver etcd minio; do cg_move "$c" "$(cat "$TE/pids/$c")"; done

# ---- hosts ----------------------------------------------------------------------------------
fleet_sysctls
fleet_netns_up "$API_PORT" "$S3_PORT"
IMGOUT=$("$HERE/image.sh"); IMG=$(sed -n 1p <<<"$IMGOUT"); LAYER=$(sed -n 2p <<<"$IMGOUT")
log "booting $NHOSTS hosts"
T_BOOT=$EPOCHREALTIME
fleet_up 1 "$NHOSTS"
BOOT_S=$(fsince "$T_BOOT")
mapfile -t UP < <(sort -n "$FDIR/hosts.up")
[ ${#UP[@]} -gt 0 ] || die "no host came up"
log "${#UP[@]} of $NHOSTS hosts up in $BOOT_S s; MemAvailable $(mem_available_mib) MiB"

# ---- objects --------------------------------------------------------------------------------
"$KUBECTL" apply -f "$ROOT/crds/generated" >/dev/null
for crd in hosts backuprepositories backuppolicies; do "$KUBECTL" wait --for=condition=Established --timeout=60s "crd/$crd.fleetsnap.io" >/dev/null; done
"$KUBECTL" create namespace "$NS" >/dev/null
SEC=$DIR/secrets; mkdir -p "$SEC"; chmod 700 "$SEC"
cp "$IMG/id_ed25519" "$SEC/id_ed25519"; printf '%s' "$PASSWORD" > "$SEC/password"
printf '%s' "$(envget MINIO_ROOT_USER)" > "$SEC/AWS_ACCESS_KEY_ID"; printf '%s' "$(envget MINIO_ROOT_PASSWORD)" > "$SEC/AWS_SECRET_ACCESS_KEY"
"$KUBECTL" -n "$NS" create secret generic ssh-key --from-file=id_ed25519="$SEC/id_ed25519" >/dev/null
"$KUBECTL" -n "$NS" create secret generic repo-password --from-file=password="$SEC/password" >/dev/null
"$KUBECTL" -n "$NS" create secret generic minio --from-file=AWS_ACCESS_KEY_ID="$SEC/AWS_ACCESS_KEY_ID" --from-file=AWS_SECRET_ACCESS_KEY="$SEC/AWS_SECRET_ACCESS_KEY" >/dev/null
"$MC" mb --ignore-existing "testenv/$BUCKET" >/dev/null
HOST_KEY=$(cat "$IMG/host_key.pub")
host_yaml() { local i=$1; printf -- '---\napiVersion: fleetsnap.io/v1alpha1\nkind: Host\nmetadata: {name: %s, labels: {fleet: bench}}\nspec:\n  address: %s\n  port: 22\n  user: root\n  sshKeySecretRef: {name: ssh-key, key: id_ed25519}\n  hostKey: "%s"\n' "$(host_name "$i")" "$(host_addr "$i")" "$HOST_KEY"; }
apply_hosts() { local i f=$DIR/hosts-$1.yaml; shift; : > "$f"; for i in "$@"; do host_yaml "$i" >> "$f"; done; "$KUBECTL" -n "$NS" apply -f "$f" >/dev/null; }
cat > "$DIR/repository.yaml" <<EOF
apiVersion: fleetsnap.io/v1alpha1
kind: BackupRepository
metadata: {name: minio}
spec:
  s3:
    endpoint: http://10.0.2.100:9000
    bucket: $BUCKET
    pathStyle: true
    credentialsSecretRef: {name: minio}
  pathTemplate: "hosts/{hostname}"
  passwordSecretRef: {name: repo-password, key: password}
EOF
"$KUBECTL" -n "$NS" apply -f "$DIR/repository.yaml" >/dev/null
apply_hosts initial "${UP[@]}"
cat > "$DIR/policy.yaml" <<EOF
apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: $POLICY}
spec:
  hostSelector: {matchLabels: {fleet: bench}}
  repositoryRef: {name: minio}
  paths: [/etc/hostname, /etc/os-release]
  tags: [fleet]
  schedule: {onCalendar: "$SCHEDULE", randomizedDelay: "$DELAY", persistent: false}
EOF

# ---- executor: a stripped copy (what a release image would ship) ------------------------------
mkdir -p "$DIR/bin"
cp "$EXECUTOR_SRC" "$DIR/bin/fleetsnap"; strip "$DIR/bin/fleetsnap" 2>/dev/null || true
EXEC_MIB=$(awk -v b="$(stat -c %s "$DIR/bin/fleetsnap")" 'BEGIN{printf "%.1f", b/1048576}')

python3 - "$PROBE/meta.json" <<EOF
import json,sys
json.dump({"hosts": $NHOSTS, "hosts_up": ${#UP[@]}, "seed": $SEED, "boot_s": $BOOT_S,
  "operator_git": "$OPERATOR_GIT", "executor_mib": $EXEC_MIB, "schedule": "$SCHEDULE + $DELAY",
  "command": """$COMMAND""", "started": "$STAMP", "nproc": $(nproc),
  "mem_total_mib": $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo),
  "limit": """$(cat "$FDIR/limit.txt" 2>/dev/null || true)"""}, open(sys.argv[1], "w"))
EOF

# ---- probe ----------------------------------------------------------------------------------
python3 "$HERE/probe.py" watch --out "$PROBE" --env "$TE/env" --ns "$NS" --policy "$POLICY" --cgroot "$CGROOT" \
  >"$DIR/probe.log" 2>&1 &
PROBE_PID=$!
sleep 2

phase() {  # phase NAME start|end|MARK [json fields...]
  local name=$1 ev=$2; shift 2
  python3 -c 'import json,sys,time; d={"t":time.time(),"phase":sys.argv[1],"event":sys.argv[2]}; d.update(json.loads(sys.argv[3]) if len(sys.argv)>3 else {}); print(json.dumps(d))' \
    "$name" "$ev" "$@" >> "$PROBE/phases.jsonl"
}
names_json() { local i out=; for i in "$@"; do out+="\"$(host_name "$i")\","; done; echo "[${out%,}]"; }

# status N_INSTALLED N_SUCCEEDED of the given hosts since time T, from the probe's Host watch
status_since() {   # status_since T HOSTS-JSON
  python3 - "$PROBE/hosts.jsonl" "$1" "$2" <<'EOF'
import json,sys
t0=float(sys.argv[2]); want=set(json.loads(sys.argv[3])); inst=set(); ok=set(); last={}
try:
  for l in open(sys.argv[1]):
    try: r=json.loads(l)
    except ValueError: continue
    if r["host"] in want: last[r["host"]]=r
    if r["t"]<t0 or r["host"] not in want or not r.get("entry"): continue
    if not r.get("err") and (r.get("nr") or r.get("ls")): inst.add(r["host"])
    if r.get("ls") and not r.get("err"): ok.add(r["host"])
except FileNotFoundError: pass
print(len(inst), len(ok))
EOF
}
wait_converged() {   # wait_converged T0 TIMEOUT MODE(installed|success) HOSTS...
  local t0=$1 timeout=$2 mode=$3; shift 3
  local want; want=$(names_json "$@") n=$#
  local start=$EPOCHREALTIME
  while :; do
    read -r ni ns <<<"$(status_since "$t0" "$want")"
    if [ "$mode" = installed ] && [ "$ni" -ge "$n" ]; then return 0; fi
    if [ "$mode" = success ] && [ "$ni" -ge "$n" ] && [ "$ns" -ge "$n" ]; then return 0; fi
    if [ "$(fsince "$start" | cut -d. -f1)" -ge "$timeout" ]; then log "timeout: $ni/$n installed, $ns/$n succeeded"; return 1; fi
    sleep 5
  done
}

operator_start() {
  local log=$DIR/operator.log
  ( cg_enter operator
    exec nsenter --net="/run/netns/$FNS" env RUST_LOG=info,kube=warn \
      FLEETSNAP_MAINTENANCE_S3_ENDPOINT=http://10.0.2.100:9000 \
      "$OPERATOR" --kubeconfig "$KUBECONFIG" --namespace "$NS" --leader-election-namespace "$NS" \
      --metrics-addr 127.0.0.1:18081 --identity fleet-bench --executor-path "$DIR/bin/fleetsnap" ) \
    </dev/null >>"$log" 2>&1 &
  OPERATOR_PID=$!
}
operator_kill() { [ -z "$OPERATOR_PID" ] || { kill -KILL "$OPERATOR_PID" 2>/dev/null || true; wait "$OPERATOR_PID" 2>/dev/null || true; OPERATOR_PID=; }; }

pick() {  # pick COUNT HOSTS...: a seeded sample
  local k=$1; shift
  python3 -c 'import random,sys; r=random.Random(int(sys.argv[1])); xs=sys.argv[3:]; print(" ".join(sorted(r.sample(xs, min(int(sys.argv[2]), len(xs))), key=int)))' "$SEED" "$k" "$@"
}

HEALTHY=("${UP[@]}")
RESULT_NOTES=()

# ---- phase: cold rollout --------------------------------------------------------------------
if has_phase rollout; then
  operator_start
  sleep 3
  log "rollout: policy applied to ${#UP[@]} hosts (operator already running)"
  phase rollout start "{\"expect\": $(names_json "${UP[@]}")}"
  T0=$(python3 -c 'import time; print(time.time())')
  "$KUBECTL" -n "$NS" apply -f "$DIR/policy.yaml" >/dev/null
  if wait_converged "$T0" "$ROLLOUT_TIMEOUT" success "${UP[@]}"; then RESULT_NOTES+=("rollout converged"); else RESULT_NOTES+=("rollout DID NOT converge in ${ROLLOUT_TIMEOUT}s"); fi
  phase rollout end
else
  operator_start; "$KUBECTL" -n "$NS" apply -f "$DIR/policy.yaml" >/dev/null
  wait_converged 0 "$ROLLOUT_TIMEOUT" success "${UP[@]}" || true
fi

# ---- phase: steady state --------------------------------------------------------------------
if has_phase steady; then
  log "steady state for $STEADY s"
  phase steady start "{\"expect\": $(names_json "${UP[@]}")}"
  sleep "$STEADY"
  phase steady end
fi

# ---- phase: 10 % faulty hosts, five kinds ---------------------------------------------------
FAULTY=()
if has_phase faults; then
  IFS=, read -r -a KINDS <<<"$FAULT_KINDS"
  nf=$(( ${#UP[@]} / 10 )); [ "$nf" -ge "${#KINDS[@]}" ] || nf=${#KINDS[@]}
  read -r -a FAULTY <<<"$(pick "$nf" "${UP[@]}")"
  declare -A KIND_OF=()
  k=0; for i in "${FAULTY[@]}"; do KIND_OF[$i]=${KINDS[$((k % ${#KINDS[@]}))]}; k=$((k + 1)); done
  printf '%s\n' "${FAULTY[@]/#/}" | while read -r i; do echo "$(host_name "$i") ${KIND_OF[$i]:-}"; done > "$PROBE/faulty.txt" 2>/dev/null || true
  for i in "${FAULTY[@]}"; do echo "$(host_name "$i") ${KIND_OF[$i]}"; done > "$PROBE/faulty.txt"
  log "faults: ${#FAULTY[@]} hosts ($(tr '\n' ' ' < "$PROBE/faulty.txt")) for $FAULTS s"
  phase faults start "{\"expect\": $(names_json "${UP[@]}"), \"faulty\": $(names_json "${FAULTY[@]}")}"
  for i in "${FAULTY[@]}"; do fault "${KIND_OF[$i]}" "$i" || log "fault ${KIND_OF[$i]} on $i failed"; done
  sleep "$FAULTS"
  phase faults end
  log "healing"
  for i in "${FAULTY[@]}"; do heal "${KIND_OF[$i]}" "$i" || log "heal ${KIND_OF[$i]} on $i failed"; done
  phase recovery start "{\"expect\": $(names_json "${UP[@]}")}"
  T0=$(python3 -c 'import time; print(time.time())')
  wait_converged "$T0" "$RECOVERY_TIMEOUT" installed "${FAULTY[@]}" || RESULT_NOTES+=("faulty hosts not all recovered within ${RECOVERY_TIMEOUT}s of healing")
  phase recovery end
fi

# ---- phase: hosts added and removed ---------------------------------------------------------
if has_phase churn; then
  CHURN=${CHURN:-$(( ${#UP[@]} / 10 > 0 ? ${#UP[@]} / 10 : 1 ))}
  first=$(( $(printf '%s\n' "${UP[@]}" | sort -n | tail -1) + 1 ))
  log "churn: +$CHURN hosts from $first, -$CHURN Host objects"
  fleet_up "$first" "$CHURN"
  mapfile -t NOW_UP < <(sort -n "$FDIR/hosts.up")
  ADDED=(); for i in "${NOW_UP[@]}"; do [ "$i" -ge "$first" ] && ADDED+=("$i"); done
  notfaulty=(); for i in "${UP[@]}"; do [[ " ${FAULTY[*]} " == *" $i "* ]] || notfaulty+=("$i"); done
  read -r -a REMOVED <<<"$(pick "$CHURN" "${notfaulty[@]}")"
  phase churn start "{\"expect\": $(names_json "${ADDED[@]}")}"
  T0=$(python3 -c 'import time; print(time.time())')
  apply_hosts added "${ADDED[@]}"
  for i in "${REMOVED[@]}"; do "$KUBECTL" -n "$NS" delete host "$(host_name "$i")" --wait=false >/dev/null; done
  ok=1; wait_converged "$T0" 600 installed "${ADDED[@]}" || ok=
  phase churn added "{}"
  # removed Hosts: gone from the API (finalizers run)
  for _ in $(seq 1 120); do
    left=0; for i in "${REMOVED[@]}"; do "$KUBECTL" -n "$NS" get host "$(host_name "$i")" >/dev/null 2>&1 && left=$((left + 1)); done
    [ "$left" = 0 ] && break; sleep 5
  done
  phase churn end "{\"removed_left\": $left}"
  [ -n "$ok" ] || RESULT_NOTES+=("added hosts did not converge")
  [ "$left" = 0 ] || RESULT_NOTES+=("$left removed Hosts still present")
  for i in "${REMOVED[@]}"; do host_stop "$i"; done
  mapfile -t UP < <(sort -n "$FDIR/hosts.up")
fi

# ---- phase: operator restart ----------------------------------------------------------------
if has_phase restart && [ -n "$RESTART" ]; then
  log "restart: SIGKILL the operator, start it again"
  operator_kill
  sleep 2
  phase restart start "{\"expect\": $(names_json "${UP[@]}")}"
  operator_start
  # full status again: the policy's status rewritten after the restart with every host counted
  python3 - "$PROBE/policy.jsonl" "$(python3 -c 'import time; print(time.time())')" "${#UP[@]}" 600 <<'EOF' || RESULT_NOTES+=("no full policy status within 600 s of the restart")
import json,sys,time
p,t0,n,timeout=sys.argv[1],float(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4])
while time.time()<t0+timeout:
  for l in open(p):
    try: r=json.loads(l)
    except ValueError: continue
    if r["t"]>t0 and r["type"]=="MODIFIED":
      c=r.get("counts") or {}
      if (c.get("succeeded") or 0)>=n: sys.exit(0)
  time.sleep(3)
sys.exit(1)
EOF
  phase restart end
fi

# ---- phase: Ansible side by side ------------------------------------------------------------
if has_phase ansible && [ "$ANSIBLE" != none ]; then
  . "$HERE/ansible.sh"
  ansible_phase
fi

operator_kill
sleep 6   # last samples
kill "$PROBE_PID" 2>/dev/null || true; PROBE_PID=
mkdir -p "$HERE/results"
OUT=$HERE/results/$STAMP-n${#UP[@]}
python3 "$HERE/probe.py" report --out "$PROBE" --json "$OUT.json" > "$OUT.md"
python3 "$HERE/summary.py" "$OUT.json" >> "$OUT.md"
cat "$OUT.md"
cp "$PROBE/faulty.txt" "$OUT.faulty.txt" 2>/dev/null || true
echo "fleet: RESULT seed=$SEED hosts=${#UP[@]} $(tail -1 "$OUT.md") ${RESULT_NOTES[*]:-} -> ${OUT#$ROOT/}.md"
