# syntax=docker/dockerfile:1
#
# ebpf-agent container image: a non-root build stage, a small runtime stage with only the binary.
#
#   docker build -t ebpf-agent:latest .
#
# Run it on a host (no --privileged needed on Linux >= 5.8 with tracefs mounted; the runtime's
# default seccomp profile allows bpf/perf_event_open with these capabilities since Docker 23 and
# containerd 1.6.9):
#
#   docker run --rm --cap-drop=ALL --cap-add=BPF --cap-add=PERFMON \
#     -v /proc:/host/proc:ro -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
#     ebpf-agent:latest run --output json --procfs-root /host/proc
#
# In Kubernetes: deploy/kubernetes/ (README.md, "Running in production").

# --- build -------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build

# The kernel programs build with nightly's rust-src (-Z build-std=core); the userspace with
# 1.95 (the image's default toolchain); `cargo xtask setup` builds bpf-linker with `+stable`.
# Toolchains go into the image's shared RUSTUP_HOME as root; everything after this step runs as
# an unprivileged user, who only reads them.
RUN rustup toolchain install stable --profile minimal \
    && rustup toolchain install nightly --profile minimal --component rust-src \
    && groupadd --gid 10001 builder \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin builder \
    && install -d -o builder -g builder /src

USER 10001:10001
# cargo install (bpf-linker) and the registry cache go to the builder's own CARGO_HOME; rustup's
# proxies (cargo, rustc) stay in the image's /usr/local/cargo/bin.
ENV CARGO_HOME=/home/builder/.cargo \
    PATH=/home/builder/.cargo/bin:/usr/local/cargo/bin:$PATH
WORKDIR /src

COPY --chown=builder:builder . .

# bpf-linker 0.10.4 (`cargo xtask setup --build-only`: it uses rustc's own LLVM, no system LLVM),
# then the release binary with the kernel programs embedded (agent/build.rs, aya-build).
# The target directory is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/home/builder/.cargo/registry,uid=10001,gid=10001 \
    --mount=type=cache,target=/src/target,uid=10001,gid=10001 \
    cargo xtask setup --build-only \
    && cargo build --release --locked -p agent \
    && install -D -m 0755 target/release/ebpf-agent /home/builder/out/ebpf-agent

# --- runtime -----------------------------------------------------------------------------------
# Debian 12 slim: the same glibc as the build stage, nothing added (the binary needs only libc and
# libgcc_s, both essential packages).
FROM debian:bookworm-slim AS runtime

LABEL org.opencontainers.image.title="ebpf-agent" \
      org.opencontainers.image.description="Per-second kernel latency and system metrics (eBPF), pushed to StatsD and Riemann" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY --from=build /home/builder/out/ebpf-agent /usr/local/bin/ebpf-agent

# No USER: the agent runs as uid 0 inside the container so that the capabilities granted by the
# runtime (BPF, PERFMON) are effective (a non-root uid would get them only in its bounding set)
# and so that it can read tracefs (mode 0700, owned by root). Everything else is dropped by the
# runtime: see deploy/kubernetes/daemonset.yaml.
ENTRYPOINT ["/usr/local/bin/ebpf-agent"]
CMD ["run", "--output", "none", "--procfs-root", "/host/proc"]
