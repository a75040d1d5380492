# syntax=docker/dockerfile:1
# Multi-stage build of the llm-scheduler binary; the runtime image (the last stage, the default target) holds
# the binary, CA roots and the examples. The `test` stage is the toolchain the compose `tests` service runs.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p proxy --bin llm-scheduler \
    && cp target/release/llm-scheduler /usr/local/bin/llm-scheduler

# The toolchain that runs scripts/test.sh (docker compose --profile test run --rm tests): the sources are mounted,
# not copied, and Redis is the compose service. procps provides the `kill` the process tests signal with.
FROM rust:1-slim-bookworm AS test
RUN rustup component add rustfmt clippy \
    && apt-get update \
    && apt-get install -y --no-install-recommends procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home llm-scheduler
COPY --from=build /usr/local/bin/llm-scheduler /usr/local/bin/llm-scheduler
COPY examples/ /etc/llm-scheduler/
USER llm-scheduler
EXPOSE 4000
ENTRYPOINT ["llm-scheduler"]
CMD ["--config", "/etc/llm-scheduler/mock-config.yaml", "--host", "0.0.0.0", "--port", "4000"]
