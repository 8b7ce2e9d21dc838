# syntax=docker/dockerfile:1

# One image for all three services (api, user, consumer); docker-compose.yml
# picks the binary with `command:`.

# ---- build ------------------------------------------------------------------
# The toolchain this workspace is built and tested with (sqlx 0.9 needs 1.94).
FROM rust:1.95-bookworm AS build

# rdkafka compiles its bundled librdkafka with librdkafka's own configure
# script (make and gcc come with this image) and links zlib. No OpenSSL: the
# stack talks plaintext inside the compose network.
RUN apt-get update \
 && apt-get install -y --no-install-recommends zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# sqlx macros, if any, check queries against committed offline data rather
# than a live database: there is none at image build time.
ENV SQLX_OFFLINE=true

# The same script `make` uses, so the image and a local build cannot drift.
# The cache mounts keep downloaded crates and compiled dependencies between
# builds: that is the cached dependency layer. target/ lives only in the cache,
# so the script copies the binaries out to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    scripts/build-services.sh /out

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin callchain

COPY --from=build /out/api /out/user /out/consumer /usr/local/bin/

USER 10001

# Health checks run `<binary> --healthcheck` (exec form): the binary probes
# itself, so the image needs no curl, wget or shell for them. docker-compose.yml
# sets the check of each service; this one fits the default command.
HEALTHCHECK --interval=5s --timeout=3s --retries=20 CMD ["/usr/local/bin/api", "--healthcheck"]
CMD ["api"]
