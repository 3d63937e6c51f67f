# syntax=docker/dockerfile:1.7
#
# xaiserve server image, CPU (default) or GPU:
#   docker build -t xaiserve:0.1.0-cpu .
#   docker build --build-arg VARIANT=gpu -t xaiserve:0.1.0-gpu .
#   docker run --rm -p 50051:50051 -p 9464:9464 --read-only --tmpfs /tmp \
#       -v "$PWD/models:/models:ro" xaiserve:0.1.0-cpu
#
# Stages (BuildKit builds only those the chosen VARIANT needs):
#   python-cpu  python:3.11-slim (Debian)                          runtime base, VARIANT=cpu
#   python-gpu  CUDA + cuDNN runtime (Ubuntu) + CPython 3.11        runtime base, VARIANT=gpu
#   builder     python-${VARIANT} + /opt/venv: torch, xaiserve and xaiserve-client at the locked versions
#   runtime     python-${VARIANT} + /opt/venv, non-root, read-only-root friendly
#
# Base images are pinned by version tag; pin them by digest (@sha256:...) in your registry mirror.
# The GPU base's CUDA major must match the CUDA build of the onnxruntime-gpu and torch wheels:
# both are CUDA 13 here (onnxruntime-gpu 1.31.1's CUDA provider needs libcudart.so.13 and
# libcublas.so.13; cuDNN 9 comes from the base).

ARG VARIANT=cpu
ARG PYTHON_VERSION=3.11.14
ARG CPU_BASE=python:3.11.14-slim-bookworm
ARG GPU_BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG UV_VERSION=0.13.8

# ---------------------------------------------------------------------------------------------
FROM ${CPU_BASE} AS python-cpu
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends tini ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    ln -sf /usr/local/bin/python3.11 /usr/local/bin/xaiserve-python

# uv only fetches a relocatable CPython 3.11 for the GPU base (Ubuntu 24.04 ships 3.12).
FROM ${CPU_BASE} AS uv
ARG UV_VERSION
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

FROM ${GPU_BASE} AS python-gpu
ARG PYTHON_VERSION
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends tini ca-certificates; \
    rm -rf /var/lib/apt/lists/*
RUN --mount=from=uv,source=/usr/local/bin/uv,target=/usr/local/bin/uv \
    set -eux; \
    UV_PYTHON_INSTALL_DIR=/opt/python uv python install "${PYTHON_VERSION}"; \
    py="$(UV_PYTHON_INSTALL_DIR=/opt/python uv python find --no-project "${PYTHON_VERSION}")"; \
    ln -sf "$py" /usr/local/bin/python3.11; \
    ln -sf "$py" /usr/local/bin/xaiserve-python; \
    /usr/local/bin/xaiserve-python --version

# ---------------------------------------------------------------------------------------------
FROM python-${VARIANT} AS builder
ARG VARIANT
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_GPU=https://download.pytorch.org/whl/cu130
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The venv points at the interpreter's real path (not a symlink), present in the runtime too.
RUN "$(readlink -f "$(command -v xaiserve-python)")" -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The lock files (`make lock`) pin every version this image installs: requirements/cpu.txt is
# also what CI tests; requirements/gpu.txt has onnxruntime-gpu instead of onnxruntime.
WORKDIR /src
COPY requirements/ requirements/

# torch first, at the locked version, from the PyTorch index for the variant (CPU wheels are
# ~10x smaller than CUDA ones); its own layer, so code changes do not re-download it.
RUN set -eux; \
    case "${VARIANT}" in \
        cpu) index="${TORCH_INDEX_CPU}" ;; \
        gpu) index="${TORCH_INDEX_GPU}" ;; \
        *) echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac; \
    lock="requirements/${VARIANT}.txt"; \
    torch="$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$lock")"; \
    vision="$(sed -n 's/^torchvision==\([^ ;]*\).*/\1/p' "$lock")"; \
    pip install --index-url "$index" "torch==${torch}" "torchvision==${vision}"; \
    python -c "import torch; assert torch.__version__.split('+')[0] == '${torch}', torch.__version__"

# .dockerignore lets in only what the install needs (pyproject, sources, protos, lock, models).
COPY . .
# Both distributions (the client carries the stubs and the `xaiserve` command) with the
# variant's extra: `cpu` brings onnxruntime, `gpu` brings onnxruntime-gpu instead, never both.
# torch's CUDA libraries came with torch from the PyTorch index, so their PyPI pins (nvidia-*,
# triton) are left out of the constraints. `pip check` fails the build on any broken requirement.
RUN set -eux; \
    grep -v -E '^(nvidia-|triton|cuda-)' "requirements/${VARIANT}.txt" > /tmp/constraints.txt; \
    pip install -c /tmp/constraints.txt ./clients/python ".[${VARIANT}]"; \
    pip check; \
    python -c "import torch, onnxruntime, xaiserve, xaiserve_client; print('torch', torch.__version__, 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())"; \
    test -x /opt/venv/bin/xaiserve

# ---------------------------------------------------------------------------------------------
FROM python-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="xaiserve" \
      org.opencontainers.image.description="gRPC service that explains image classifiers" \
      io.xaiserve.variant="${VARIANT}"

RUN set -eux; \
    groupadd --system --gid 10001 xaiserve; \
    useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin xaiserve; \
    mkdir -p /models /var/lib/xaiserve /artifacts /opt/xaiserve; \
    chown -R 10001:10001 /var/lib/xaiserve /artifacts

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/xaiserve-entrypoint
COPY --chmod=0755 docker/healthcheck.py /opt/xaiserve/healthcheck.py
# The bundled demo model: the content of a fresh /models volume; mount your repository over it.
# Owned by root: the server only reads the model repository.
COPY models/ /models/

# Writes go only to /tmp (HOME, caches) and the volumes: runs with a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE \
    XAISERVE_HOST=0.0.0.0 \
    XAISERVE_PORT=50051 \
    XAISERVE_METRICS_PORT=9464 \
    XAISERVE_MODELS_DIR=/models \
    XAISERVE_DATA_DIR=/var/lib/xaiserve \
    XAISERVE_ARTIFACTS=/artifacts

# /var/lib/xaiserve: the SQLite state store of a single container (a fleet sets
# XAISERVE_STATE_URL=postgresql://…); /artifacts: support sets and reports (writable).
VOLUME ["/models", "/var/lib/xaiserve", "/artifacts"]
EXPOSE 50051 9464
USER 10001:10001
WORKDIR /tmp

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/xaiserve/healthcheck.py", "--quiet"]

# tini is PID 1: forwards SIGTERM to the server (the entrypoint exec's it) and reaps zombies.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/xaiserve-entrypoint"]
CMD ["serve"]
STOPSIGNAL SIGTERM
