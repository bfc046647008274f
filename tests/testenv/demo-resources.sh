#!/usr/bin/env bash
# Second half of ./demo.sh: with testenv up in DIR, install the CRDs, create the demo's
# Secrets, Hosts, BackupRepository and policies, start the operator, and show the result.
set -euo pipefail
DIR=$1
cd "$(dirname "$0")/../.."
set -a; . "$DIR/env"; set +a
kubectl apply -f crds/generated/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/generated/ >/dev/null
echo
echo "fleetsnap demo environment is up ($DIR)"
echo "  kube-apiserver  $KUBE_APISERVER   (KUBECONFIG=$KUBECONFIG)"
echo "  MinIO           $S3_ENDPOINT   (hosts see $S3_ENDPOINT_FROM_HOSTS; mc alias 'testenv')"
for h in $HOSTS; do
  n=${h#host}; p=$(eval echo "\$HOST${n}_PORT")
  echo "  $h           ssh -F $SSH_CONFIG $h   (127.0.0.1:$p)"
done
echo "  shell setup     source $DIR/env"
echo
kubectl get crd -l '!nonexistent' -o name | grep fleetsnap.io
echo
echo "The operator wiring of the demo lands with the operator; see README.md."
