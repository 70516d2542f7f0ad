# syntax=docker/dockerfile:1
# The pool-manager image. Build from the repository root:
#   docker build -f docker/pool-manager.Dockerfile -t mm-pool-manager:dev .
# (docker/pool-manager.Dockerfile.dockerignore keeps target/, .tools/ and .git/ out of
# the context.)

FROM rust:1-bookworm AS build
WORKDIR /src
# rust-toolchain.toml pins the channel; rustup installs it on the first cargo call.
COPY rust-toolchain.toml ./
RUN cargo --version
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pool-manager --bin pool-manager \
    && install -D -m 0755 target/release/pool-manager /out/pool-manager

FROM debian:bookworm-slim
# ca-certificates for https storage and registries later on; the shell, sed and getent
# of the base image serve the Deployment's init container (k8s/base/pool-manager.yaml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mm \
    && useradd --system --uid 10001 --gid mm --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mm \
    && install -d -o mm -g mm /var/lib/mm /models /srv/models
COPY --from=build /out/pool-manager /usr/local/bin/pool-manager
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/pool-manager"]
CMD ["--help"]
