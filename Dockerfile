# One multi-stage build for both binaries: a full Rust toolchain builds them, a slim Debian
# image runs them (glibc, CA certificates, nothing else).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway -p processor --bins \
 && cargo build --release --locked -p hub-tests --bin replay \
 && mkdir /out && cp target/release/gateway target/release/processor target/release/replay /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 hub
COPY --from=build /out/ /usr/local/bin/
COPY data /usr/share/iot-hub/data
USER hub
