# fraudpipe: one image per device kind, built from this one Dockerfile.
#
#   docker build --target cpu -t fraudpipe:0.1.0 .
#   docker build --target gpu -t fraudpipe:0.1.0-gpu .
#
# Every stage of the pipeline runs the same image with the same entrypoint (`fraudpipe`); the
# Helm chart only passes arguments (`worker --stage=<stage> --device=<cpu|gpu> --config ...`).
# So there is nothing stage-specific in here: the gpu image is the cpu image plus CUDA and the
# `gpu` extra (cupy-cuda12x) and an OpenCL loader, used by stages with `device: gpu`. Both
# install the locked set (requirements/{cpu,gpu}.txt, exported from uv.lock by `make lock`).
#
# Base images are build args, so a mirror or a local image can stand in for them
# (--build-arg CPU_BASE=... / GPU_BASE=...); the defaults are fully qualified, so podman and
# buildah need no short-name configuration. CPU_BASE must provide python3 >= 3.11 with the
# venv module; the interpreter may live in /usr/local/bin (python:*) or /usr/bin (Debian).
# The package index is the base's pip default (PyPI); to use another one, pass
# --build-arg PIP_INDEX_URL=... and/or PIP_EXTRA_INDEX_URL=...; behind a TLS-intercepting
# proxy, mount its CA bundle and name it with --build-arg PIP_CERT=... (build stages only:
# none of it reaches the final image).
#
# Each target = a build stage that makes a virtualenv in /opt/fraudpipe, and a final stage on
# the same base that copies only that venv (its bin/python links to the base's interpreter).

ARG CPU_BASE=docker.io/library/python:3.11-slim-bookworm
# CUDA 12 runtime (cupy-cuda12x is a CUDA 12 build).
ARG GPU_BASE=docker.io/nvidia/cuda:12.9.1-runtime-ubuntu24.04
ARG VERSION=0.1.0
# No URL is recorded in the project yet: pass --build-arg SOURCE_URL=<repository URL>.
ARG SOURCE_URL=""


# ---------------------------------------------------------------------------- cpu: build ---
FROM ${CPU_BASE} AS cpu-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/fraudpipe \
 && /opt/fraudpipe/bin/python -m pip install --no-cache-dir --upgrade pip
ENV PATH=/opt/fraudpipe/bin:$PATH
WORKDIR /src
# Dependencies first, from the lock (requirements/cpu.txt: every version pinned, every file's
# hash checked; scripts/lock.py), in their own layer: editing src/ does not reinstall them.
COPY requirements/cpu.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
# Non-editable install of fraudpipe alone (its dependencies are the lock's); then drop
# pip/setuptools/wheel (build tools) from the venv and byte-compile everything (unchecked-hash
# .pyc: valid whatever the file times, so a read-only root filesystem never recompiles).
RUN pip install --no-cache-dir --no-deps . \
 && pip check \
 && fraudpipe --help > /dev/null \
 && python -m pip uninstall -y pip setuptools wheel \
 && { python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/fraudpipe/lib \
      || echo "compileall: some third-party files do not compile (pip ignores them too)"; }


# ---------------------------------------------------------------------------- gpu: build ---
# CUDA images have no Python: install the distribution's python3 (3.12 on Ubuntu 24.04) in a
# stage that both the gpu build and the gpu image start from, so the venv's interpreter exists.
# libgomp1: LightGBM's wheel links the system OpenMP runtime (it is not in the wheel).
# ocl-icd-libopencl1 and nvidia.icd: LightGBM's GPU learner is OpenCL; the NVIDIA container
# runtime mounts the driver's libnvidia-opencl.so.1, which the ICD file registers.
FROM ${GPU_BASE} AS gpu-python
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 ocl-icd-libopencl1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /etc/OpenCL/vendors \
 && echo libnvidia-opencl.so.1 > /etc/OpenCL/vendors/nvidia.icd

FROM gpu-python AS gpu-build
ARG DEBIAN_FRONTEND=noninteractive
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/fraudpipe \
 && /opt/fraudpipe/bin/python -m pip install --no-cache-dir --upgrade pip
ENV PATH=/opt/fraudpipe/bin:$PATH
WORKDIR /src
COPY requirements/gpu.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps . \
 && pip check \
 && fraudpipe --help > /dev/null \
 && python -m pip uninstall -y pip setuptools wheel \
 && { python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/fraudpipe/lib \
      || echo "compileall: some third-party files do not compile (pip ignores them too)"; }


# ------------------------------------------------------------------------------ gpu image ---
FROM gpu-python AS gpu
ARG VERSION
ARG SOURCE_URL
LABEL org.opencontainers.image.title="fraudpipe" \
      org.opencontainers.image.description="Real-time fraud detection pipeline over durable file queues (CUDA 12 image)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric uid/gid 10001 so that runAsNonRoot can verify it. The data directory belongs to it
# for `docker run` without a volume; in Kubernetes the shared volume is mounted there.
# The base interpreter's stdlib is byte-compiled too (no-op where the distro already did it).
RUN groupadd --gid 10001 fraudpipe \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --no-log-init \
      --shell /usr/sbin/nologin fraudpipe \
 && mkdir -p /mnt/flashblade && chown 10001:10001 /mnt/flashblade \
 && python3 -m compileall -q -j 0 -x '/(test|tests|idle_test)/' \
      "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
COPY --from=gpu-build /opt/fraudpipe /opt/fraudpipe
ENV PATH=/opt/fraudpipe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FRAUDPIPE_DATA_DIR=/mnt/flashblade
WORKDIR /tmp
USER 10001:10001
# Smoke test as the runtime user: every module imports (GPU packages stay lazy: no GPU here).
# A throwaway HOME and TMPDIR: onnxruntime writes ids to ~/.cache and $TMPDIR on import.
RUN export HOME="$(mktemp -d)" && export TMPDIR="$HOME" \
 && python -c "import importlib, pkgutil, fraudpipe; [importlib.import_module(m.name) for m in pkgutil.walk_packages(fraudpipe.__path__, 'fraudpipe.') if m.name != 'fraudpipe.__main__']" \
 && rm -rf "$HOME"
# Prometheus metrics and health endpoints.
EXPOSE 9108
ENTRYPOINT ["fraudpipe"]
CMD ["--help"]


# ------------------------------------------------------------------------------ cpu image ---
# Last stage: a plain `docker build .` gives the cpu image.
FROM ${CPU_BASE} AS cpu
ARG VERSION
ARG SOURCE_URL
ARG DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="fraudpipe" \
      org.opencontainers.image.description="Real-time fraud detection pipeline over durable file queues." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp1: LightGBM's wheel links the system OpenMP runtime (python:*-slim and a minimal
# Debian lack it). User, data directory and stdlib byte-compiling: as in the gpu image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 fraudpipe \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --no-log-init \
      --shell /usr/sbin/nologin fraudpipe \
 && mkdir -p /mnt/flashblade && chown 10001:10001 /mnt/flashblade \
 && python3 -m compileall -q -j 0 -x '/(test|tests|idle_test)/' \
      "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
COPY --from=cpu-build /opt/fraudpipe /opt/fraudpipe
ENV PATH=/opt/fraudpipe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FRAUDPIPE_DATA_DIR=/mnt/flashblade
WORKDIR /tmp
USER 10001:10001
# Smoke test as the runtime user: every module imports (GPU packages stay lazy: no GPU here).
# A throwaway HOME and TMPDIR: onnxruntime writes ids to ~/.cache and $TMPDIR on import.
RUN export HOME="$(mktemp -d)" && export TMPDIR="$HOME" \
 && python -c "import importlib, pkgutil, fraudpipe; [importlib.import_module(m.name) for m in pkgutil.walk_packages(fraudpipe.__path__, 'fraudpipe.') if m.name != 'fraudpipe.__main__']" \
 && rm -rf "$HOME"
# Prometheus metrics and health endpoints.
EXPOSE 9108
ENTRYPOINT ["fraudpipe"]
CMD ["--help"]
