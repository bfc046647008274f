# syntax=docker/dockerfile:1
# fleetsnap operator image: the operator binary plus the executor binary it installs on hosts.
#
#   docker build -t ghcr.io/fleetsnap/fleetsnap:0.1.0 .
#
# The executor's sha256 is computed at build time and written next to it
# (/usr/local/lib/fleetsnap/fleetsnap.sha256); the entrypoint passes it to the operator as
# --executor-sha256 unless the Deployment already does (Helm value executor.sha256). Hosts
# verify the same checksum before they ever execute the binary.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole workspace (tests/ is a member, so it must be present); cargo's registry and the
# target directory are cache mounts, so rebuilds after a source edit are incremental.
# The executor is linked against glibc 2.17 (zig via cargo-zigbuild, from PyPI) so that it
# runs on every supported host; deploy/build-executor.sh refuses a binary that needs more.
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip binutils \
    && rm -rf /var/lib/apt/lists/*
COPY . .
ENV PIP_BREAK_SYSTEM_PACKAGES=1 FLEETSNAP_CACHE=/var/cache/fleetsnap
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/var/cache/fleetsnap \
    cargo build --release --locked -p fleetsnap-operator \
    && CARGO_TARGET_DIR=/src/target deploy/build-executor.sh --release \
    && mkdir -p /out \
    && cp target/release/fleetsnap-operator target/x86_64-unknown-linux-gnu/release/fleetsnap /out/ \
    && cd /out && sha256sum fleetsnap > fleetsnap.sha256 \
    && ./fleetsnap --version && ./fleetsnap-operator --version

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to the API server and S3; openssh-client: the operator's SSH transport
# (the openssh crate drives the system ssh binary with ControlMaster multiplexing).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 fleetsnap \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fleetsnap
COPY --from=builder /out/fleetsnap-operator /usr/local/bin/fleetsnap-operator
COPY --from=builder /out/fleetsnap /usr/local/lib/fleetsnap/fleetsnap
COPY --from=builder /out/fleetsnap.sha256 /usr/local/lib/fleetsnap/fleetsnap.sha256
COPY --chmod=0755 <<'SH' /usr/local/bin/fleetsnap-entrypoint
#!/bin/sh
# Pass the build-time checksum of the bundled executor unless the caller pinned one.
set -eu
case " $* " in
  *" --executor-sha256 "*|*" --executor-sha256="*) exec /usr/local/bin/fleetsnap-operator "$@" ;;
esac
sum=$(cut -d' ' -f1 /usr/local/lib/fleetsnap/fleetsnap.sha256)
exec /usr/local/bin/fleetsnap-operator --executor-sha256 "$sum" "$@"
SH
RUN chmod 0755 /usr/local/lib/fleetsnap/fleetsnap \
    && chmod 0444 /usr/local/lib/fleetsnap/fleetsnap.sha256 \
    && (cd /usr/local/lib/fleetsnap && sha256sum -c fleetsnap.sha256)
USER 65532:65532
ENV HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/fleetsnap-entrypoint"]
CMD ["--metrics-addr", "0.0.0.0:8080", "--executor-path", "/usr/local/lib/fleetsnap/fleetsnap"]

LABEL org.opencontainers.image.source="https://github.com/fleetsnap/fleetsnap" \
      org.opencontainers.image.title="fleetsnap" \
      org.opencontainers.image.description="fleetsnap operator with the bundled, checksum-pinned executor" \
      org.opencontainers.image.licenses="Apache-2.0"
