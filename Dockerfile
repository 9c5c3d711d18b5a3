# syntax=docker/dockerfile:1
#
# lstm-serve images.
#
#   CPU (default, the last stage):  docker build -t lstm-serve:0.1.0 .
#   GPU (CUDA 13, cuDNN 9):         docker build --target gpu -t lstm-serve:0.1.0-gpu .
#
# Both images hold only the serving dependencies of pyproject.toml (no torch, no dev tools) in a virtualenv at
# /opt/venv, with the bundled model inside the installed `model` package, and run as UID 10001.
# tests/deploy/dockerfile.py reads this file: keep the stage names and the `# lstm-serve:install` marker.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------------
# builder: a virtualenv with the package and its core dependencies only.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
# Unset in a plain `docker build`. deploy/image/build.sh (buildah) sets them for this stage only, pointing at what
# it mounts at build time, never into a layer: a CA bundle for pip to trust and a local wheel directory to install
# from instead of the index.
ARG PIP_CERT
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# lstm-serve:install — the serving install, exactly as a user runs it from a checkout (no extras).
RUN pip install --no-cache-dir .

# ---------------------------------------------------------------------------------------------------------------
# gpu-base: Ubuntu 24.04 with CUDA 13 and cuDNN 9 runtime libraries (what onnxruntime-gpu 1.31 links against) and
# its Python (3.12; the project needs >= 3.11).
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive
# The distribution's Python is pinned by the base image tag; pinning apt versions would break at every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# gpu-builder: the same serving install, then the CPU onnxruntime wheel swapped for onnxruntime-gpu (both provide
# the `onnxruntime` module, so one must go; its dependencies are the same, hence --no-deps).
FROM gpu-base AS gpu-builder
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# python3-venv follows the python3 of gpu-base, pinned by its tag (as above).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
RUN pip install --no-cache-dir . \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir --no-deps "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"

# gpu: `docker build --target gpu`; run with `docker run --gpus all` (NVIDIA Container Toolkit). With
# LSTM_SERVE_PROVIDER=auto the server takes CUDAExecutionProvider when a GPU is visible and falls back to CPU.
FROM gpu-base AS gpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    LSTM_SERVE_HOST=0.0.0.0 \
    LSTM_SERVE_PORT=8000 \
    LSTM_SERVE_PROVIDER=auto
RUN groupadd --system --gid 10001 lstm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin lstm
COPY --from=gpu-builder /opt/venv /opt/venv
# Fail the build, not the first request, if the model is not bundled or torch came in with the dependencies.
RUN python -P -c "import importlib.util as u, sys; from model.paths import BUNDLED_MODEL as m; \
assert m.is_file(), f'bundled model missing: {m}'; sys.exit('torch is installed' if u.find_spec('torch') else 0)"
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LSTM_SERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------------------------
# runtime (default target): the CPU image.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    LSTM_SERVE_HOST=0.0.0.0 \
    LSTM_SERVE_PORT=8000 \
    LSTM_SERVE_PROVIDER=cpu
RUN groupadd --system --gid 10001 lstm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin lstm
COPY --from=builder /opt/venv /opt/venv
# Fail the build, not the first request, if the model is not bundled or torch came in with the dependencies.
RUN python -P -c "import importlib.util as u, sys; from model.paths import BUNDLED_MODEL as m; \
assert m.is_file(), f'bundled model missing: {m}'; sys.exit('torch is installed' if u.find_spec('torch') else 0)"
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LSTM_SERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
