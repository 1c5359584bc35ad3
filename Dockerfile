# CPU image of the NTK service. One image for every process of docker-compose.yml:
#   API        python -m service serve --host 0.0.0.0 --port 8000   (the default CMD)
#   scheduler  dask scheduler --port 8786
#   CPU worker dask worker tcp://scheduler:8786 --nthreads 1 ...
# The scheduler and the workers import `core` and `service` (task graphs are unpickled there).
#
# Base pinned by full version tag and by the digest of its multi-architecture index;
# refresh both together (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`).

# ---- builder: a virtual environment with the project and its dependencies (wheels only) ----
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first (their layer survives source edits), read from pyproject.toml.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# The project itself (pure Python; setuptools comes from PyPI as a wheel in the isolated build env).
COPY core ./core
COPY service ./service
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/python -c "import core, service.app, distributed"

# ---- final: the venv only, non-root ----
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

LABEL org.opencontainers.image.title="ntk-service" \
      org.opencontainers.image.description="REST service for Neural Tangent Kernels (API, Dask scheduler and CPU worker)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NTK_DATA_DIR=/data \
    NTK_HOST=0.0.0.0 \
    NTK_PORT=8000 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

# uid/gid 10001 own /data, so a fresh named volume mounted there is writable by the service.
RUN groupadd --system --gid 10001 ntk \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin ntk \
 && mkdir -p /app /data \
 && chown 10001:10001 /app /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
