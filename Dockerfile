# syntax=docker/dockerfile:1
# One image for every memaudit role; the compose service picks the command:
#   memaudit serve --no-worker   (API)   memaudit worker   (Celery worker)   memaudit migrate   (one-shot)
#
# GPU hosts (default): CUDA wheels of PyTorch; the NVIDIA driver comes from the host through the
# NVIDIA container toolkit, so no CUDA base image is needed (the wheels bundle the CUDA runtime).
# CPU-only image (about 1.5 GB smaller):
#   docker build --build-arg TORCH_VARIANT=cpu -t memaudit:cpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build stage: a virtualenv with torch and the project, no compilers or caches carried over ----
FROM ${PYTHON_IMAGE} AS build

# cu128 | cu126 | cpu ... (any variant published on the PyTorch wheel index for this torch version)
ARG TORCH_VARIANT=cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_VERSION=2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch first, in its own layer: it is by far the largest and changes least often (build cache).
# hadolint ignore=DL3059
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY models ./models
COPY migrations ./migrations
# torch==2.13.0 is already satisfied by the variant above (local labels such as +cu128 match),
# so this does not pull a second torch from PyPI.
RUN pip install --no-cache-dir . \
    && python -c "import memaudit_client, app, workers, models, migrations"

# ---- runtime stage ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="memaudit" \
      org.opencontainers.image.description="Audits generative models for training-data memorization" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MEMAUDIT_DATA_DIR=/var/lib/memaudit/data \
    MEMAUDIT_ARTIFACTS_DIR=/var/lib/memaudit/artifacts \
    MEMAUDIT_HOST=0.0.0.0 \
    MEMAUDIT_PORT=8000

RUN groupadd --system --gid 10001 memaudit \
    && useradd --system --uid 10001 --gid memaudit --home-dir /var/lib/memaudit --shell /usr/sbin/nologin memaudit \
    && mkdir -p /var/lib/memaudit/data /var/lib/memaudit/artifacts /datasets \
    && chown -R memaudit:memaudit /var/lib/memaudit

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/memaudit
EXPOSE 8000
VOLUME ["/var/lib/memaudit/data", "/var/lib/memaudit/artifacts"]

# Meaningful for the API role; compose gives the worker and migrate roles their own check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MEMAUDIT_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["memaudit"]
CMD ["serve", "--no-worker"]
