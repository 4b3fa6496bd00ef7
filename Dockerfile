# Build and run the occupancy service.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: built from the manifests and
# stub sources, so a change of the service's code reuses them.
COPY Cargo.toml Cargo.lock ./
COPY crates/occupancy-client/Cargo.toml crates/occupancy-client/
RUN mkdir -p src crates/occupancy-client/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/occupancy-client/src/lib.rs \
 && echo 'fn main() {}' > build.rs && echo 'fn main() {}' > crates/occupancy-client/build.rs \
 && cargo build --release --locked --bin occupancy \
 && rm -rf src build.rs crates/occupancy-client/src crates/occupancy-client/build.rs
COPY . .
# newer than the stubs' build, so cargo rebuilds the service's own crates
RUN touch build.rs src/main.rs src/lib.rs crates/occupancy-client/build.rs crates/occupancy-client/src/lib.rs \
 && cargo build --release --locked --bin occupancy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/occupancy /usr/local/bin/occupancy
USER 65534:65534
# a non-loopback address: serve also needs OCCUPANCY_AUTH_KEYS (a mounted
# key file) or OCCUPANCY_ALLOW_ANONYMOUS=true (README, Security)
ENV OCCUPANCY_LISTEN=0.0.0.0:50051
EXPOSE 50051
# grpc.health.v1 through the binary itself: healthy while SERVING (Redis
# reachable); keep the port in line with OCCUPANCY_LISTEN
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/occupancy", "health", "--endpoint", "127.0.0.1:50051"]
ENTRYPOINT ["/usr/local/bin/occupancy"]
CMD ["serve"]
