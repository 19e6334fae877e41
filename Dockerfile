# Build: docker build -t amqp-bridge .
# Run:   docker run --rm -v $PWD/bridge.yaml:/etc/amqp-bridge/bridge.yaml \
#          -e ALIYUN_AK -e ALIYUN_SK amqp-bridge
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin amqp-bridge

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 bridge
COPY --from=build /src/target/release/amqp-bridge /usr/local/bin/amqp-bridge
USER bridge
EXPOSE 9464
ENTRYPOINT ["amqp-bridge", "--log-format", "json"]
CMD ["run", "--config", "/etc/amqp-bridge/bridge.yaml"]
