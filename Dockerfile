# syntax=docker/dockerfile:1
# The operator (modeldeploy), the kubectl plugin and the demo model server as
# static (musl) binaries on a distroless, non-root base, for linux/amd64 and
# linux/arm64:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t IMAGE --push .
#
# The build stage runs on the builder's own platform ($BUILDPLATFORM) and
# cross-compiles to each target platform's Rust target with cargo-zigbuild
# (zig as the C compiler and linker that ring's C and assembly need): arm64 is
# never built under emulation, and needs no QEMU. Dependencies are built in
# their own layer, so a change to src/ does not rebuild them.
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG TARGETARCH
# zig and cargo-zigbuild as pinned PyPI packages (the venv module itself comes
# with the base image's Debian release).
ARG ZIG_VERSION=0.15.2
ARG ZIGBUILD_VERSION=0.24.1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/zig \
 && /opt/zig/bin/pip install --no-cache-dir "ziglang==${ZIG_VERSION}" "cargo-zigbuild==${ZIGBUILD_VERSION}"
# cargo-zigbuild finds zig through `python3 -m ziglang` of this venv.
ENV PATH=/opt/zig/bin:$PATH
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "no Rust target for TARGETARCH=$TARGETARCH (amd64 and arm64 are built)" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY demo/Cargo.toml ./demo/
# Declared bench targets must exist for cargo to read the manifest; they are
# not built here.
COPY benches ./benches
# Dependency layer: build the dependencies against placeholder sources.
RUN mkdir -p src demo/src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs demo/src/lib.rs \
 && cargo zigbuild --release --locked --target "$(cat /rust-target)" --bins \
 && rm -rf src demo/src
COPY src ./src
# The demo model server's crate; its binary, modeldeploy-demo, is a target of
# the root package (src/bin), so it lands next to modeldeploy below.
COPY demo/src ./demo/src
RUN touch src/main.rs src/lib.rs demo/src/lib.rs \
 && target="$(cat /rust-target)" \
 && cargo zigbuild --release --locked --target "$target" --bins \
 && mkdir /out \
 && find "target/$target/release" -maxdepth 1 -type f -perm -u+x -exec cp {} /out/ \;

# The target platform's variant of the base image.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/modeldeploy"]
CMD ["operator"]
