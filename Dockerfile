# CPU image of the NTK service. One image for every process of docker-compose.yml:
#   API        python -m service serve --host 0.0.0.0 --port 8000   (the default CMD)
#   scheduler  dask scheduler --port 8786
#   CPU worker dask worker tcp://scheduler:8786 --nthreads 1 ...
# The scheduler and the workers import `core` and `service` (task graphs are unpickled there).
#
# The base is a build argument (a registry mirror or an air-gapped copy, without editing this
# file: `docker build --build-arg BASE_IMAGE=mirror.example/python:3.11.14-slim-bookworm .`, or
# NTK_BASE_IMAGE with compose). Any Debian/Ubuntu image with Python >= 3.11 as `python` and the
# venv module works. The default is pinned by full version tag and by the digest of its
# multi-architecture index; refresh both together (`docker buildx imagetools inspect
# python:3.11.14-slim-bookworm`) and keep docker-compose.yml's default of NTK_BASE_IMAGE equal.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- builder: a virtual environment with the project and its dependencies (wheels only) ----
FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
# binutils (`strip`) for the trim at the end of this stage; it stays in the builder.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
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
# Then drop what a running container never uses (about a third of the venv):
# - pip and setuptools (nothing is installed at run time; a derived image installs in its own
#   builder stage, or runs `python -m ensurepip` first);
# - the packages' own test suites (numba, numpy, scipy, dask, ... ship `tests/` folders);
# - symbol tables of the compiled modules (libllvmlite.so alone carries 19 MB). Not the
#   libraries that auditwheel grafted into `*.libs/`: they were edited by patchelf, and strip
#   corrupts them ("ELF load command address/offset not page-aligned").
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
 && find /opt/venv -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
        -exec strip --strip-unneeded {} + \
 && /opt/venv/bin/python -c "import core, service.app, distributed, numba, scipy.linalg, zarr"

# ---- final: the venv only, non-root ----
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="ntk-service" \
      org.opencontainers.image.description="REST service for Neural Tangent Kernels (API, Dask scheduler and CPU worker)"

# NUMBA_CACHE_DIR is in the image (not /tmp, which may be a tmpfs): the kernel engine is
# compiled into it below, so no container compiles it again on the machine that built the image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NTK_DATA_DIR=/data \
    NTK_HOST=0.0.0.0 \
    NTK_PORT=8000 \
    NUMBA_CACHE_DIR=/opt/numba-cache

# uid/gid 10001 own /data, so a fresh named volume mounted there is writable by the service.
# No VOLUME instruction: compose mounts the named volume `ntk-data` where it is needed, and a
# VOLUME would give every other container (the scheduler) an anonymous volume that outlives it.
RUN groupadd --system --gid 10001 ntk \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin ntk \
 && mkdir -p /app /data /opt/numba-cache \
 && chown 10001:10001 /app /data /opt/numba-cache

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001
# Compile the fused kernel engine (float32 and float64) into numba's cache, as the runtime user
# and against the files as they lie in this image, so the index matches in every container.
# numba keys its cache on the CPU: on another CPU model a process compiles once more (the
# workers' and the API's warm-up do that in a background thread) and adds its entry here.
RUN python -c "from core.kernels import warm_up; warm_up()"
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
