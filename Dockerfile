# Weft image: weft-coordinator, weft-worker and the weft CLI in /usr/local/bin.
#
#   docker build -t weft:0.1.0 .
#
# The Helm chart (helm/weft) runs /usr/local/bin/weft-coordinator and /usr/local/bin/weft-worker
# with explicit flags, as user 10001 with a read-only root filesystem and /tmp on an emptyDir.

# ---- build ----
FROM rust:1.95-bookworm AS builder

# protoc, for weft-proto's build script.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler=3.21.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cached registry and target directory; the three binaries are copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/weft-coordinator target/release/weft-worker target/release/weft /out/

# ---- runtime ----
# glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="weft" \
      org.opencontainers.image.description="Weft distributed SQL engine: coordinator, worker and CLI" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/weft-coordinator /usr/local/bin/weft-coordinator
COPY --from=builder /out/weft-worker /usr/local/bin/weft-worker
COPY --from=builder /out/weft /usr/local/bin/weft

ENV TMPDIR=/tmp
USER 10001:10001
WORKDIR /tmp

# Coordinator Flight SQL and HTTP (/metrics /healthz /readyz); worker Flight and HTTP.
EXPOSE 50050 51050 50051 51051

# No ENTRYPOINT: the command names the binary (exec form), e.g.
#   docker run weft:0.1.0 /usr/local/bin/weft-coordinator --help
CMD ["/usr/local/bin/weft", "--help"]
