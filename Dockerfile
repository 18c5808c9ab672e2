# The one beamflow image: every component, the simulated IOC and the tools are subcommands of
# one binary. Build: docker build -t beamflow .
FROM rust:1.95-slim-bookworm AS build
# libzmq is Debian's, built with CURVE (libsodium); g++ for the crates that build C++; npm
# installs the dashboard's uPlot, pinned by dashboard/package-lock.json, at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make libzmq3-dev npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# With the Kubernetes-aware controller (kube-rs): --scale-workers scales its release's workers.
RUN cargo build --release --locked --bin beamflow --features kubernetes

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libstdc++6 libzmq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin beamflow
COPY --from=build /src/target/release/beamflow /usr/local/bin/beamflow
# Non-root; the root filesystem can be read-only (nothing is written outside mounted volumes).
USER 10001
ENTRYPOINT ["/usr/local/bin/beamflow"]
CMD ["--help"]
