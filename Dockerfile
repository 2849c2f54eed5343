# syntax=docker/dockerfile:1
# Static binaries on a distroless, non-root base. Dependencies are built in
# their own layer, so a change to src/ does not rebuild them.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
ENV CARGO_TARGET=x86_64-unknown-linux-musl
COPY Cargo.toml Cargo.lock ./
# Dependency layer: build against placeholder sources for every target.
RUN mkdir -p src/bin benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for b in $(sed -n 's/^path = "src\/bin\/\(.*\)"/\1/p' Cargo.toml); do echo 'fn main() {}' > "src/bin/$b"; done \
 && for b in $(sed -n 's/^path = "benches\/\(.*\)"/\1/p' Cargo.toml); do echo 'fn main() {}' > "benches/$b"; done \
 && cargo build --release --locked --target "$CARGO_TARGET" --bins \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target "$CARGO_TARGET" --bins \
 && mkdir /out \
 && find "target/$CARGO_TARGET/release" -maxdepth 1 -type f -perm -u+x -exec cp {} /out/ \;

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/modeldeploy"]
CMD ["operator"]
