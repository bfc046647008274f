#!/usr/bin/env bash
# Builds the Go-based test tools from their Go modules into the cache, one directory per
# component and version:  $FLEETSNAP_CACHE/tools/<name>-<version>/
#   tools.sh [all|NAME...]     NAME = kubernetes etcd minio mc restic helm toxiproxy aemm
# A component is rebuilt only when its directory lacks the ".ok" marker, so a warm run
# takes well under a second. Prints "<name> <version> <seconds>s" for every build.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOFLAGS=-mod=mod GOTOOLCHAIN=local
export CGO_ENABLED=0
mkdir -p "$CACHE/tools"

# wrapper_module DIR MODULE VERSION: a throwaway module that requires MODULE@VERSION, so
# `go build` works even where MODULE's own go.mod has replace lines (go install refuses those).
wrapper_module() {
  local dir=$1 mod=$2 ver=$3
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && go mod init fleetsnap.local/tools >/dev/null 2>&1 && go mod edit -require="$mod@$ver")
}

build_kubernetes() {   # kube-apiserver + kubectl from k8s.io/kubernetes
  local out=$1 w=$1.work v=$KUBERNETES_VERSION
  wrapper_module "$w" k8s.io/kubernetes "$v"
  # k8s.io/kubernetes points its staging modules at ./staging/...; pin each one to the
  # published v0.MINOR.PATCH instead (the usual replace lines, derived from its go.mod).
  local gomod staged
  gomod=$(cd "$w" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staged=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
  for m in $staged; do (cd "$w" && go mod edit -replace="$m=$m@v0.${v#v1.}"); done
  local pkg=k8s.io/component-base/version
  local ld="-s -w -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  (cd "$w" && go build -trimpath -ldflags "$ld" -o "$out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
     && go build -trimpath -ldflags "$ld" -o "$out/kubectl" k8s.io/kubernetes/cmd/kubectl)
}
build_etcd() {
  local out=$1 w=$1.work
  wrapper_module "$w" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
}
build_minio() {
  local out=$1 w=$1.work
  wrapper_module "$w" github.com/minio/minio "$MINIO_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out/minio" github.com/minio/minio)
}
build_mc() {
  local out=$1 w=$1.work
  wrapper_module "$w" github.com/minio/mc "$MC_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out/mc" github.com/minio/mc)
}
build_restic() {
  local out=$1 w=$1.work
  wrapper_module "$w" github.com/restic/restic "$RESTIC_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out/restic" github.com/restic/restic/cmd/restic)
}
build_helm() {
  local out=$1 w=$1.work
  wrapper_module "$w" helm.sh/helm/v3 "$HELM_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
     -o "$out/helm" helm.sh/helm/v3/cmd/helm)
}

build_toxiproxy() {   # fault-injecting TCP proxy for the fault campaign (server + CLI)
  local out=$1 w=$1.work
  wrapper_module "$w" github.com/Shopify/toxiproxy/v2 "$TOXIPROXY_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out/toxiproxy-server" github.com/Shopify/toxiproxy/v2/cmd/server \
     && go build -trimpath -ldflags "-s -w" -o "$out/toxiproxy-cli" github.com/Shopify/toxiproxy/v2/cmd/cli)
}

build_aemm() {   # amazon-ec2-metadata-mock: an instance-metadata service for the host's own AWS chain
  local out=$1 w=$1.work
  wrapper_module "$w" github.com/aws/amazon-ec2-metadata-mock "$AEMM_VERSION"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$out/ec2-metadata-mock" \
     github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock)
}

version_of() {
  case $1 in
    kubernetes) echo "$KUBERNETES_VERSION" ;; etcd) echo "$ETCD_VERSION" ;;
    minio) echo "$MINIO_VERSION" ;; mc) echo "$MC_VERSION" ;;
    restic) echo "$RESTIC_VERSION" ;; helm) echo "$HELM_VERSION" ;;
    toxiproxy) echo "$TOXIPROXY_VERSION" ;; aemm) echo "$AEMM_VERSION" ;;
    *) echo "tools.sh: unknown component '$1'" >&2; exit 2 ;;
  esac
}

ensure() {
  local name=$1 ver out t0
  ver=$(version_of "$name"); out=$CACHE/tools/$name-$ver
  [ -e "$out/.ok" ] && return 0
  command -v go >/dev/null || { echo "tools.sh: go is not installed; cannot build $name" >&2; exit 1; }
  t0=$(date +%s); rm -rf "$out"; mkdir -p "$out"
  if ! "build_$name" "$out" >"$out.log" 2>&1; then
    echo "tools.sh: building $name $ver failed; log: $out.log" >&2; tail -n 20 "$out.log" >&2; exit 1
  fi
  rm -rf "$out.work"; touch "$out/.ok"
  echo "$name $ver built in $(( $(date +%s) - t0 ))s"
}

# Prints the bin directory of a component (for PATH assembly by callers).
if [ "${1:-}" = path ]; then echo "$CACHE/tools/$2-$(version_of "$2")"; exit 0; fi
names=${*:-all}
[ "$names" = all ] && names="etcd restic toxiproxy aemm kubernetes minio mc helm"
for n in $names; do ensure "$n"; done
