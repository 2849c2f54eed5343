# syntax=docker/dockerfile:1
# Static binaries on a distroless, non-root base. Dependencies are built in
# their own layer, so a change to src/ does not rebuild them.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
ENV CARGO_TARGET=x86_64-unknown-linux-musl
COPY Cargo.toml Cargo.lock ./
COPY demo/Cargo.toml ./demo/
# Declared bench targets must exist for cargo to read the manifest; they are
# not built here.
COPY benches ./benches
# Dependency layer: build the dependencies against placeholder sources.
RUN mkdir -p src demo/src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs demo/src/lib.rs \
 && cargo build --release --locked --target "$CARGO_TARGET" --bins \
 && rm -rf src demo/src
COPY src ./src
# The demo model server's crate; its binary, modeldeploy-demo, is a target of
# the root package (src/bin), so it lands next to modeldeploy below.
COPY demo/src ./demo/src
RUN touch src/main.rs src/lib.rs demo/src/lib.rs \
 && cargo build --release --locked --target "$CARGO_TARGET" --bins \
 && mkdir /out \
 && find "target/$CARGO_TARGET/release" -maxdepth 1 -type f -perm -u+x -exec cp {} /out/ \;

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/modeldeploy"]
CMD ["operator"]
