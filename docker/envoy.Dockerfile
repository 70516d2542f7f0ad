# syntax=docker/dockerfile:1
# The gateway image: Envoy 1.40 with the model_router filter at the path the bootstrap
# (envoy/gateway.yaml.tmpl, FILTER_WASM) loads it from in Kubernetes. Build from the
# repository root:
#   docker build -f docker/envoy.Dockerfile -t mm-envoy:dev .
# The bootstrap itself is not baked in: the Deployment mounts the gateway-envoy ConfigMap
# at /etc/envoy/config/ (k8s/base/gateway.yaml).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml ./
RUN cargo --version && rustup target add wasm32-wasip1
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mm-filter --target wasm32-wasip1 \
    && install -D -m 0644 target/wasm32-wasip1/release/mm_filter.wasm /out/mm_filter.wasm

FROM envoyproxy/envoy:v1.40.0
COPY --from=build /out/mm_filter.wasm /etc/envoy/filter/mm_filter.wasm
EXPOSE 8080
