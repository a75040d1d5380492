# syntax=docker/dockerfile:1
# Multi-stage build of the llm-scheduler binary; the runtime image holds the binary, CA roots and the examples.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p proxy --bin llm-scheduler \
    && cp target/release/llm-scheduler /usr/local/bin/llm-scheduler

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
