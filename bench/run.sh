#!/usr/bin/env bash
# fleetsnap vs restic vs rustic on one deterministic dataset. Not part of the test suite.
#
#   bench/run.sh [--size-gib N] [--backend local|s3|both] [--tools fleetsnap,restic,rustic]
#                [--keep-work]
#
# Prints one table (operation x backend x tool: seconds, MB/s, peak RSS, ratios to restic from
# this same run, PASS/MISS against the targets of issue 3) and writes it to
# bench/results/<UTC timestamp>.{json,md}. See docs/benchmarks.md for how to read it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${FLEETSNAP_CACHE:-/var/cache/fleetsnap}

SIZE_GIB=2
BACKEND=local
TOOLS=fleetsnap,restic,rustic
KEEP_WORK=0
usage() { sed -n '4,5p' "$0" | sed 's/^# *//' >&2; exit 2; }
die() { echo "bench/run.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --size-gib) SIZE_GIB=${2:?}; shift 2 ;;
    --backend) BACKEND=${2:?}; shift 2 ;;
    --tools) TOOLS=${2:?}; shift 2 ;;
    --keep-work) KEEP_WORK=1; shift ;;
    -h|--help) usage ;;
    *) echo "bench/run.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case $BACKEND in
  local) BACKENDS=(local) ;; s3) BACKENDS=(s3) ;; both) BACKENDS=(local s3) ;;
  *) die "--backend must be local, s3 or both (got '$BACKEND')" ;;
esac
IFS=, read -r -a TOOL_LIST <<<"$TOOLS"
for t in "${TOOL_LIST[@]}"; do
  case $t in fleetsnap|restic|rustic) ;; *) die "unknown tool '$t' (fleetsnap, restic, rustic)" ;; esac
done
[[ $SIZE_GIB =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--size-gib must be a number (got '$SIZE_GIB')"
command -v python3 >/dev/null || die "python3 is required for the dataset generator and the report"
# Ratios are "vs restic": without restic in the run there is nothing to compare to.
[[ ,$TOOLS, == *,restic,* ]] || echo "bench/run.sh: restic is not in --tools; ratios and PASS/MISS will be empty" >&2

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- binaries -------------------------------------------------------------------------------
need=(time)
for t in "${TOOL_LIST[@]}"; do [ "$t" = fleetsnap ] || need+=("$t"); done
[ "$BACKEND" = local ] || need+=(minio mc)
"$HERE/tools.sh" ensure "${need[@]}"
log "building fleetsnap (release)"
(cd "$ROOT" && cargo build --release -p fleetsnap --quiet) || die "cargo build --release -p fleetsnap failed"
FLEETSNAP=$ROOT/target/release/fleetsnap
RESTIC=$("$HERE/tools.sh" path restic)
RUSTIC=$("$HERE/tools.sh" path rustic)
TIME=$("$HERE/tools.sh" path time)

# ---- dataset --------------------------------------------------------------------------------
GEN=$HERE/dataset.py
DATA=$CACHE/bench-data/v$(python3 "$GEN" version)-${SIZE_GIB}gib-seed1
TREE=$DATA/tree
mkdir -p "$DATA"
# A run that died after mutating leaves an undo record; put the cached tree back first.
python3 "$GEN" revert "$TREE" >&2 || { rm -rf "$DATA"; mkdir -p "$DATA"; }
if [ ! -e "$DATA/.ok" ]; then
  log "generating ${SIZE_GIB} GiB dataset in $TREE (cached for later runs)"
  python3 "$GEN" generate "$TREE" --size-gib "$SIZE_GIB"
  touch "$DATA/.ok"
fi
DATA_BYTES=$(find "$TREE" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
DATA_FILES=$(find "$TREE" -type f | wc -l)
log "dataset: $DATA_FILES files, $DATA_BYTES bytes"

# ---- work area, cleanup ---------------------------------------------------------------------
WORK=$(mktemp -d /var/tmp/fleetsnap-bench.XXXXXX)
MINIO_PID=
MUTATED=0
cleanup() {
  local rc=$?
  [ "$MUTATED" = 1 ] && python3 "$GEN" revert "$TREE" >&2 || true
  [ -n "$MINIO_PID" ] && kill "$MINIO_PID" 2>/dev/null && wait "$MINIO_PID" 2>/dev/null || true
  if [ "$KEEP_WORK" = 1 ] || [ $rc -ne 0 ]; then
    echo "bench/run.sh: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
RESULTS=$WORK/results.tsv
: >"$RESULTS"

export RESTIC_PASSWORD=bench-password RUSTIC_PASSWORD=bench-password
# rustic reads profiles from XDG config; point it at an empty one so a user's rustic.toml
# cannot change what is measured.
export XDG_CONFIG_HOME=$WORK/xdg
mkdir -p "$XDG_CONFIG_HOME"

# ---- MinIO ----------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ "$BACKEND" != local ]; then
  MINIO=$("$HERE/tools.sh" path minio)
  MC=$("$HERE/tools.sh" path mc)
  S3_PORT=$(free_port); S3_CONSOLE=$(free_port)
  export AWS_ACCESS_KEY_ID=benchadmin AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
  MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY MINIO_BROWSER=off \
    "$MINIO" server "$WORK/minio" --address "127.0.0.1:$S3_PORT" --console-address "127.0.0.1:$S3_CONSOLE" \
    >"$WORK/minio.log" 2>&1 &
  MINIO_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$S3_PORT/minio/health/live" >/dev/null 2>&1 && break
    kill -0 "$MINIO_PID" 2>/dev/null || die "MinIO exited at startup; log: $WORK/minio.log"
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$S3_PORT/minio/health/live" >/dev/null || die "MinIO did not become live on port $S3_PORT"
  export MC_CONFIG_DIR=$WORK/mc
  "$MC" alias set bench "http://127.0.0.1:$S3_PORT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
  "$MC" mb bench/bench >/dev/null
  log "MinIO on 127.0.0.1:$S3_PORT"
  # rustic's S3 support is opendal; its options only come from a profile file.
  cat >"$WORK/rustic-s3.toml" <<EOF
[repository]
repository = "opendal:s3"
[repository.options]
bucket = "bench"
root = "/rustic"
endpoint = "http://127.0.0.1:$S3_PORT"
region = "us-east-1"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
EOF
fi

# ---- page cache -----------------------------------------------------------------------------
DROP_CACHES=no
if sync && (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then DROP_CACHES=yes; else
  log "cannot drop the page cache (not root, or /proc/sys read-only): reads after the first are warm"
fi
drop_caches() { [ "$DROP_CACHES" = yes ] && sync && echo 3 >/proc/sys/vm/drop_caches || true; }

# ---- per-tool command lines -----------------------------------------------------------------
# cmd_for TOOL BACKEND OP [ARG]: fills the array CMD. Every tool runs with its default
# concurrency, compression and chunker settings; only locations, host name and caches are set.
cmd_for() {
  local tool=$1 be=$2 op=$3 arg=${4:-} repo
  case $be in
    local) repo=$WORK/repo/$tool ;;
    s3) repo=s3:http://127.0.0.1:$S3_PORT/bench/$tool ;;
  esac
  case $tool in
    fleetsnap) CMD=("$FLEETSNAP" -r "$repo") ;;
    restic) CMD=("$RESTIC" -r "$repo" --cache-dir "$WORK/cache/$tool-$be") ;;
    rustic)
      if [ "$be" = s3 ]; then CMD=("$RUSTIC" -P "$WORK/rustic-s3"); else CMD=("$RUSTIC" -r "$repo"); fi
      CMD+=(--cache-dir "$WORK/cache/$tool-$be") ;;
  esac
  case $op in
    init) CMD+=(init) ;;
    backup*) CMD+=(backup --host bench "$TREE") ;;
    restore)
      if [ "$tool" = rustic ]; then CMD+=(restore latest "$arg"); else CMD+=(restore latest --target "$arg"); fi ;;
    check) CMD+=(check --read-data) ;;
    forget-prune) CMD+=(forget --keep-last 1 --prune) ;;
  esac
}

# measure OP BACKEND TOOL [ARG]: one timed run, appended to $RESULTS.
declare -A BROKEN=()
measure() {
  local op=$1 be=$2 tool=$3 arg=${4:-} out rc secs rss load note=
  cmd_for "$tool" "$be" "$op" "$arg"
  out=$WORK/logs/$op-$be-$tool
  mkdir -p "$WORK/logs"
  drop_caches
  load=$(cut -d' ' -f1 /proc/loadavg)
  rc=0
  "$TIME" -f '%e %M' -o "$out.time" "${CMD[@]}" >"$out.log" 2>&1 </dev/null || rc=$?
  # GNU time puts "Command exited with non-zero status N" before its line on failure.
  read -r secs rss < <(tail -n 1 "$out.time")
  if [ $rc -ne 0 ]; then
    note="exit $rc: $(grep -v '^\s*$' "$out.log" | tail -n 1 | cut -c1-160)"
    log "$tool $op ($be) FAILED (exit $rc); log: $out.log"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$be" "$tool" "$secs" "$rss" "$rc" "$load" "$note" >>"$RESULTS"
  log "$(printf '%-16s %-5s %-9s %8ss %8s KiB  load %s' "$op" "$be" "$tool" "$secs" "$rss" "$load")"
  return $rc
}

# Tools run interleaved (phase by phase, and the order rotates each phase) so that a burst of
# load from other work on the machine does not land on one tool only.
PHASE_NO=0
rotated_tools() {
  local n=${#TOOL_LIST[@]} i
  for ((i = 0; i < n; i++)); do echo "${TOOL_LIST[$(( (i + PHASE_NO) % n ))]}"; done
}
phase() {   # phase OP: run OP for every backend and tool that is still healthy
  local op=$1 be tool
  for be in "${BACKENDS[@]}"; do
    for tool in $(rotated_tools); do
      [ -n "${BROKEN[$be-$tool]:-}" ] && continue
      phase_one "$op" "$be" "$tool"
    done
  done
  PHASE_NO=$((PHASE_NO + 1))
}
phase_one() {
  local op=$1 be=$2 tool=$3 target got want
  case $op in
    init|backup-first)
      # Without a repository and a first snapshot nothing later means anything.
      measure "$op" "$be" "$tool" || BROKEN[$be-$tool]=1 ;;
    restore)
      target=$WORK/restore/$be-$tool
      mkdir -p "$target"
      if measure restore "$be" "$tool" "$target"; then
        # restic and fleetsnap restore the absolute source path below the target.
        got=$target$TREE; [ -d "$got" ] || got=$target
        got=$(python3 "$GEN" fingerprint "$got")
        if [ "$got" != "$SOURCE_PRINT" ]; then
          log "$tool restore ($be) does NOT match the source (got $got, want $SOURCE_PRINT)"
          sed -i '$ s/$/restored tree differs from the source/' "$RESULTS"
        fi
      fi
      rm -rf "$target" ;;
    *) measure "$op" "$be" "$tool" || true ;;
  esac
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y%m%dT%H%M%SZ)
log "load average at start: $LOAD_START"
PHASE_NO=0
phase init
phase backup-first
phase backup-nochange
MUTATED=1
python3 "$GEN" mutate "$TREE" >&2
phase backup-1pct
SOURCE_PRINT=$(python3 "$GEN" fingerprint "$TREE")
phase restore
phase check
phase forget-prune
python3 "$GEN" revert "$TREE" >&2
MUTATED=0
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ---------------------------------------------------------------------------------
version_of() { "$@" version 2>/dev/null | head -n 1 || true; }
cat >"$WORK/meta.json" <<EOF
{
  "started_utc": "$STARTED",
  "git_commit": "$(cd "$ROOT" && git rev-parse --short HEAD)",
  "size_gib": $SIZE_GIB,
  "dataset_bytes": $DATA_BYTES,
  "dataset_files": $DATA_FILES,
  "dataset_dir": "$TREE",
  "backends": "$BACKEND",
  "tools": "$TOOLS",
  "cpus": $(nproc),
  "load_start": "$LOAD_START",
  "load_end": "$LOAD_END",
  "drop_caches": "$DROP_CACHES",
  "versions": {
    "fleetsnap": "$("$FLEETSNAP" --version 2>/dev/null | head -n 1)",
    "restic": "$(version_of "$RESTIC")",
    "rustic": "$([ -x "$RUSTIC" ] && "$RUSTIC" --version 2>/dev/null | head -n 1)"
  }
}
EOF
mkdir -p "$HERE/results"
python3 "$HERE/report.py" "$WORK/meta.json" "$RESULTS" "$HERE/results/$STARTED"
