# syntax=docker/dockerfile:1
# Starling's two images, one target each:
#   docker build --target broker   -t ghcr.io/starling-mqtt/starling-broker:0.1.0 .
#   docker build --target operator -t ghcr.io/starling-mqtt/starling-operator:0.1.0 .
# (or `buildah build --target ...`). Both run as the distroless `nonroot` user, UID/GID 65532,
# the UID the chart and the operator's broker pods set. A test (operator/tests/install.rs) keeps
# names, ports, user and version in line with the chart and the CRD defaults.
# Without Docker, scripts/build-images.sh builds the same two images from this file's broker and
# operator stages (labels, user, ports, entrypoint, stop signal) as OCI archives; keep those
# stages to the instructions it understands (e2e/tests/images.rs checks the result).

ARG RUST_VERSION=1.95
ARG VERSION=0.1.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS source
WORKDIR /src
COPY . .

# The same release build as `cargo build --release --locked -p ...` in the README.
FROM source AS build-broker
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=starling-target-broker \
    cargo build --release --locked -p starling-broker \
    && install -D target/release/starling-broker /out/starling-broker

FROM source AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=starling-target-operator \
    cargo build --release --locked -p starling-operator \
    && install -D target/release/starling-operator /out/starling-operator

# MQTT 1883, MQTT over TLS 8883, MQTT over WebSocket 8083, admin HTTP (/healthz /readyz
# /metrics) 9090, gossip 7946 over TCP and UDP.
FROM gcr.io/distroless/cc-debian12:nonroot AS broker
ARG VERSION
LABEL org.opencontainers.image.title="starling-broker" \
      org.opencontainers.image.description="Starling, a distributed MQTT 3.1.1 and 5.0 broker" \
      org.opencontainers.image.source="https://github.com/starling-mqtt/starling" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build-broker /out/starling-broker /usr/local/bin/starling-broker
USER 65532:65532
EXPOSE 1883/tcp 8883/tcp 8083/tcp 9090/tcp 7946/tcp 7946/udp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/starling-broker"]

# HTTP (/healthz /readyz /metrics) 8080.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
ARG VERSION
LABEL org.opencontainers.image.title="starling-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs Starling MQTT clusters from MqttCluster resources" \
      org.opencontainers.image.source="https://github.com/starling-mqtt/starling" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build-operator /out/starling-operator /usr/local/bin/starling-operator
USER 65532:65532
EXPOSE 8080/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/starling-operator"]
CMD ["run"]
