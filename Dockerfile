# stormwatch: build with the pinned toolchain, run on a slim Debian.
#
#   docker build -t stormwatch .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 9464:9464 stormwatch \
#     serve --otlp-grpc 0.0.0.0:4317 --otlp-http 0.0.0.0:4318 --admin 0.0.0.0:9464
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# librdkafka is built from source by rdkafka (cmake-free, with the image's gcc/make/zlib).
RUN cargo build --release --locked -p stormwatch && cp target/release/stormwatch /usr/local/bin/stormwatch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/stormwatch --create-home stormwatch
COPY --from=build /usr/local/bin/stormwatch /usr/local/bin/stormwatch
USER stormwatch
WORKDIR /var/lib/stormwatch
# OTLP gRPC, OTLP HTTP, admin (/healthz, /metrics): the engine's default ports.
EXPOSE 4317 4318 9464
# Baselines (models/) live here; mount a volume to keep them across restarts.
VOLUME ["/var/lib/stormwatch/models"]
ENTRYPOINT ["stormwatch"]
CMD ["serve", "--otlp-grpc", "0.0.0.0:4317", "--otlp-http", "0.0.0.0:4318", "--admin", "0.0.0.0:9464"]
