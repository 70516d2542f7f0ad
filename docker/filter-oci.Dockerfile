# syntax=docker/dockerfile:1
# The filter as an OCI image for Istio's WasmPlugin (url: oci://...): Istio's "Docker"
# Wasm image format, one layer holding a single file, plugin.wasm. Build and push from
# the repository root:
#   docker build -f docker/filter-oci.Dockerfile -t registry.example.com/mm/mm-filter:0.1.0 .
#   docker push registry.example.com/mm/mm-filter:0.1.0
# (or push an already built module with oras: k8s/overlays/istio/README.md)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml ./
RUN cargo --version && rustup target add wasm32-wasip1
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mm-filter --target wasm32-wasip1 \
    && install -D -m 0644 target/wasm32-wasip1/release/mm_filter.wasm /out/mm_filter.wasm

FROM scratch
COPY --from=build /out/mm_filter.wasm ./plugin.wasm
