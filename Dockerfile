# Build: compile dependencies in their own layer so source edits rebuild only cistern.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Run: a small Debian with CA certificates (upstream is HTTPS) and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cistern cistern \
    && mkdir -p /var/lib/cistern/storage /etc/cistern \
    && chown -R cistern /var/lib/cistern
COPY --from=build /src/target/release/cistern /usr/local/bin/cistern
COPY config.yml /etc/cistern/config.yml
# config.yml caches under ./storage: run from /var/lib/cistern so that is the volume.
WORKDIR /var/lib/cistern
VOLUME /var/lib/cistern/storage
USER cistern
EXPOSE 5000
ENTRYPOINT ["cistern"]
CMD ["--config", "/etc/cistern/config.yml"]
