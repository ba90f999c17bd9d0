# walvault container image: build with cargo, run on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system walvault
COPY --from=build /src/target/release/walvault /usr/local/bin/walvault
USER walvault
ENTRYPOINT ["walvault"]
