# syntax=docker/dockerfile:1
# Multi-stage build: cargo-chef caches the dependency layer, the runtime image holds only
# the binary and config/ (migrations are embedded in the binary).

FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin analytics-service

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin analytics
WORKDIR /app
COPY --from=builder /app/target/release/analytics-service /usr/local/bin/analytics-service
COPY config ./config
RUN mkdir -p /app/data && chown analytics /app/data
USER analytics
ENV APP_ENV=prod \
    HOST=0.0.0.0 \
    PORT=8006
# 9464: GET /metrics (config/prod.toml), not the public port.
EXPOSE 8006 9464
ENTRYPOINT ["/usr/local/bin/analytics-service"]
CMD ["serve"]
