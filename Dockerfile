# syntax=docker/dockerfile:1.10
#
# amqp-bridge container image.
#
# Build (needs BuildKit, the default builder of Docker ≥ 23):
#   docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t amqp-bridge .
# With podman/buildah add `--format docker`: the default OCI format has no
# HEALTHCHECK and drops it. scripts/container-image.sh builds the
# runtime-prebuilt target that way and tests/container.rs runs it.
# Run:
#   docker run --rm -p 9464:9464 \
#     -v $PWD/bridge.yaml:/etc/amqp-bridge/bridge.yaml:ro \
#     -e ALIYUN_AK -e ALIYUN_SK -e ALIYUN_UID -e CONSUMER_GROUP amqp-bridge
#
# Targets:
#   runtime           (default, last) compiles the bridge in the Rust image and
#                     copies the binary into the Debian runtime image.
#   runtime-prebuilt  the same runtime image around a binary built outside
#                     Docker (glibc ≤ bookworm's 2.36), no Rust image needed:
#                       cargo build --release --locked
#                       docker build --target runtime-prebuilt -t amqp-bridge .
#                     BINARY=path/in/context selects another binary.
#
# Base images are pinned by tag; bump both together (the runtime must have a
# glibc at least as new as the build image's, hence bookworm in both).
ARG RUST_VERSION=1.95.0
ARG DEBIAN_TAG=bookworm-20251229-slim

############################################################ build
FROM rust:${RUST_VERSION}-bookworm AS build
# The bundled librdkafka is compiled with gcc and make, which the rust image
# already carries (it is based on buildpack-deps), and links Debian's OpenSSL
# for Kafka TLS and SCRAM (rdkafka feature `ssl`): libssl-dev and pkg-config,
# also in buildpack-deps; installed here so a slimmer base keeps working.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The commit `amqp-bridge --version` reports. .git is not in the build context,
# so build.rs reads it from this variable.
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT} \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# Not compiled here, but Cargo reads every target of the manifest.
COPY examples ./examples
COPY tests ./tests
# The registry and target dir live in BuildKit cache mounts, so a source change
# recompiles the crate, not its ~300 dependencies. The target dir is not part of
# the image: the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin amqp-bridge \
 && install -D -m 0755 target/release/amqp-bridge /out/amqp-bridge \
 && /out/amqp-bridge --version

############################################################ runtime-base
FROM debian:${DEBIAN_TAG} AS runtime-base
# ca-certificates: the system roots that verify the platform's (and brokers')
# TLS certificates when no ca_file is configured. libssl3: librdkafka's TLS
# (Kafka only; everything else is rustls), linked dynamically so Debian's
# security updates of OpenSSL reach the image on rebuild.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin bridge \
 && mkdir -p /data /etc/amqp-bridge \
 && chown 10001:10001 /data \
 && chmod 0770 /data
COPY LICENSE /usr/share/doc/amqp-bridge/LICENSE
# File sinks and dead letters (relative paths in the config land here).
WORKDIR /data
VOLUME ["/data"]
# /metrics, /healthz, /readyz (telemetry.listen must be 0.0.0.0:9464 in a container).
EXPOSE 9464
# GET /readyz (every sink ready, every source connection attached); the image
# has no curl, the binary does the request. `healthcheck --live` asks /healthz.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["amqp-bridge", "healthcheck"]
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
# SIGTERM drains in-flight messages for shutdown_timeout (20 s by default):
# give the container a longer stop timeout (docker stop -t 30, compose
# stop_grace_period: 30s, k8s terminationGracePeriodSeconds: 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["amqp-bridge", "--log-format", "json"]
CMD ["run", "--config", "/etc/amqp-bridge/bridge.yaml"]

ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="amqp-bridge" \
      org.opencontainers.image.description="Alibaba Cloud IoT Platform AMQP 1.0 subscription to MQTT, Kafka and RocketMQ, acknowledged only after every sink confirmed" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

############################################################ runtime-prebuilt
FROM runtime-base AS runtime-prebuilt
ARG BINARY=target/release/amqp-bridge
COPY --chmod=0755 ${BINARY} /usr/local/bin/amqp-bridge

############################################################ runtime (default)
FROM runtime-base AS runtime
COPY --from=build /out/amqp-bridge /usr/local/bin/amqp-bridge
