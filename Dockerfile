# caje on Fly.io under LiteFS 0.5.
# Build: docker build -t caje .   (Cargo.lock is committed; the build is --locked)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin caje --bin slow_server \
 && strip target/release/caje target/release/slow_server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates fuse3 sqlite3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=flyio/litefs:0.5 /usr/local/bin/litefs /usr/local/bin/litefs
COPY --from=build /src/target/release/caje /usr/local/bin/caje
# slow_server is the demo origin; the same image runs it (see README, "Deploying").
COPY --from=build /src/target/release/slow_server /usr/local/bin/slow_server
COPY litefs.yml /etc/litefs.yml
COPY deploy/caje.fly.toml /etc/caje.toml
# LiteFS runs as root, mounts /litefs, then starts caje through its `exec:` section.
ENTRYPOINT ["litefs", "mount"]
