#!/usr/bin/env bash
# Second half of ./demo.sh: with testenv up in DIR, install the CRDs, create the demo's
# Secrets, Hosts, BackupRepository and policies (the examples/ scenario on a fast schedule,
# pointed at testenv's MinIO and hosts), start the operator, and wait until every host is
# backed up and verified.
set -euo pipefail
DIR=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
set -a; . "$DIR/env"; set +a
NS=fleetsnap-demo
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

kubectl apply -f crds/generated/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/generated/ >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
mc mb --ignore-existing testenv/fleet-backups >/dev/null

# Secret values come from files, never from a command line.
S=$DIR/demo-secrets; mkdir -p "$S"; chmod 700 "$S"
[ -e "$S/password" ] || head -c 24 /dev/urandom | base64 > "$S/password"
printf '%s' "$MINIO_ROOT_USER" > "$S/ak"; printf '%s' "$MINIO_ROOT_PASSWORD" > "$S/sk"
apply_secret() { kubectl -n "$NS" create secret generic "$@" --dry-run=client -o yaml | kubectl apply -f - >/dev/null; }
apply_secret fleetsnap-ssh --from-file=ssh-privatekey="$SSH_KEY"
apply_secret restic-password --from-file=password="$S/password"
apply_secret minio-creds --from-file=AWS_ACCESS_KEY_ID="$S/ak" --from-file=AWS_SECRET_ACCESS_KEY="$S/sk"

{
  for h in $HOSTS; do
    n=${h#host}; port=$(eval echo "\$HOST${n}_PORT")
    cat <<Y
---
apiVersion: fleetsnap.io/v1alpha1
kind: Host
metadata:
  name: $h
  labels: {env: demo, role: app}
spec:
  address: 127.0.0.1
  port: $port
  hostname: $h.demo.internal
  sshKeySecretRef: {name: fleetsnap-ssh, key: ssh-privatekey}
  hostKey: "$HOST_KEY"
Y
  done
  cat <<Y
---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupRepository
metadata: {name: minio}
spec:
  s3:
    endpoint: $S3_ENDPOINT_FROM_HOSTS
    bucket: fleet-backups
    pathStyle: true
    credentialsSecretRef: {name: minio-creds}
  pathTemplate: "hosts/{hostname}"
  passwordSecretRef: {name: restic-password, key: password}
---
apiVersion: fleetsnap.io/v1alpha1
kind: BackupPolicy
metadata: {name: every-minute}
spec:
  hostSelector: {matchLabels: {env: demo}}
  repositoryRef: {name: minio}
  paths: [/etc]
  excludeCaches: true
  oneFileSystem: true
  tags: [demo]
  schedule: {onCalendar: "*-*-* *:*:00", persistent: true}
  resources: {nice: 10, ioSchedulingClass: idle}
  stalenessWindow: 10m
---
apiVersion: fleetsnap.io/v1alpha1
kind: VerifyPolicy
metadata: {name: verify}
spec:
  backupPolicyRef: {name: every-minute}
  schedule: {onCalendar: "*-*-* *:*:30"}
  readData: {percentage: 100}
  restoreDrill: {enabled: true, sampleFiles: 5, scratchDir: /var/tmp/fleetsnap-drill}
---
apiVersion: fleetsnap.io/v1alpha1
kind: RetentionPolicy
metadata: {name: keep-recent}
spec:
  backupPolicyRef: {name: every-minute}
  keep: {last: 5}
  schedule: {onCalendar: "*-*-* *:00/5:45"}
  runOn: Host
Y
} > "$DIR/demo.yaml"
kubectl -n "$NS" apply -f "$DIR/demo.yaml"

if [ ! -e "$DIR/pids/operator" ] || ! kill -0 "$(cat "$DIR/pids/operator")" 2>/dev/null; then
  MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "$MPORT" > "$DIR/operator.metrics-port"
  # Hosts get a stripped copy: the debug build carries 230 MB of debug info (267 MB → 38 MB
  # measured), which every host would otherwise download and hash.
  cp "$BIN/fleetsnap" "$DIR/bin/fleetsnap-executor.tmp"
  strip "$DIR/bin/fleetsnap-executor.tmp" && mv -f "$DIR/bin/fleetsnap-executor.tmp" "$DIR/bin/fleetsnap-executor"
  setsid "$BIN/fleetsnap-operator" --kubeconfig "$KUBECONFIG" --metrics-addr "127.0.0.1:$MPORT" \
    --executor-path "$DIR/bin/fleetsnap-executor" </dev/null >"$DIR/logs/operator.log" 2>&1 &
  echo $! > "$DIR/pids/operator"
fi

echo "waiting for the first backups and verifications (a minute or two)..."
kubectl -n "$NS" wait --for=condition=Ready --timeout=600s backuppolicy/every-minute verifypolicy/verify >/dev/null \
  || { echo "demo: policies not Ready in time; operator log: $DIR/logs/operator.log" >&2; kubectl -n "$NS" get fleetsnap >&2; exit 1; }

cat <<T

fleetsnap demo is up ($DIR)
  kube-apiserver  $KUBE_APISERVER   (KUBECONFIG=$KUBECONFIG)
  MinIO           $S3_ENDPOINT   (hosts see $S3_ENDPOINT_FROM_HOSTS; mc alias 'testenv')
  operator        log $DIR/logs/operator.log, metrics http://127.0.0.1:$(cat "$DIR/operator.metrics-port")/metrics
  shell setup     source $DIR/env
T
for h in $HOSTS; do echo "  $h           ssh -F $SSH_CONFIG $h"; done
echo
echo "\$ kubectl -n $NS get fleetsnap"
kubectl -n "$NS" get fleetsnap
