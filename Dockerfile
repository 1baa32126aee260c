# nfpi: the workflow and its pinned environment in one image; `snakemake` is the entrypoint.
#
#   docker build -t nfpi .                                    # CUDA runtime base, CUDA torch wheel from PyPI
#   docker run --rm --gpus all -v "$PWD/results:/opt/nfpi/results" nfpi --profile profiles/local all
#   docker run --rm            -v "$PWD/results:/opt/nfpi/results" nfpi --profile profiles/local all   # CPU
#
# Build arguments:
#   BASE_IMAGE       any Debian/Ubuntu image with apt (default: NVIDIA's CUDA runtime). The torch wheel
#                    ships its own CUDA libraries; the CUDA base adds the driver-facing pieces
#                    (and NVIDIA_* variables the container toolkit reads).
#   TORCH_INDEX_URL  an extra pip index for torch, e.g. https://download.pytorch.org/whl/cpu for a small
#                    CPU-only image (~1 GB instead of ~7 GB); torch==2.14.1 also matches 2.14.1+cpu.
#   EXTRA_INDEX_URL, FIND_LINKS   local wheel mirrors (space-separated), used by scripts/container-test.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
ARG EXTRA_INDEX_URL=""
ARG FIND_LINKS=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python from the base's own distribution (3.11 on Debian 12, 3.12 on Ubuntu 24.04), in a venv:
# PEP 668 forbids pip in the system interpreter and the venv keeps the pins separate from apt's.
# Versions are whatever the chosen base ships (the Python pins are in requirements-lock.txt).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Dependencies first (their layer is reused while only the code changes). requirements.txt holds the
# direct pins; requirements-lock.txt, as constraints, pins everything they pull in.
# pip trusts the system CA bundle, or the host's when the build mounts it at /run/host-ca.crt
# (`-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro`: TLS-intercepting proxies).
COPY requirements.txt requirements-lock.txt /opt/nfpi/
# (URLs have no spaces, so the option list is a plain word list: SC2086 on purpose.)
# hadolint ignore=SC2086
RUN if [ -r /run/host-ca.crt ]; then export PIP_CERT=/run/host-ca.crt; else export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    opts=""; for u in ${TORCH_INDEX_URL} ${EXTRA_INDEX_URL}; do opts="$opts --extra-index-url $u"; done; \
    for f in ${FIND_LINKS}; do opts="$opts --find-links $f"; done; \
    pip install --no-cache-dir $opts \
        -r /opt/nfpi/requirements.txt -c /opt/nfpi/requirements-lock.txt \
    && pip check

# The project: the package (installed, so stage modules import from anywhere) and the workflow.
# DL3013: this installs the project itself; --no-deps, its dependencies are the pinned layer above.
COPY . /opt/nfpi
# hadolint ignore=DL3013,SC2086
RUN if [ -r /run/host-ca.crt ]; then export PIP_CERT=/run/host-ca.crt; else export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    opts=""; for u in ${EXTRA_INDEX_URL}; do opts="$opts --extra-index-url $u"; done; \
    for f in ${FIND_LINKS}; do opts="$opts --find-links $f"; done; \
    pip install --no-cache-dir --no-deps $opts /opt/nfpi \
    && rm -rf /opt/nfpi/build /opt/nfpi/*.egg-info \
    && useradd --uid 1000 --create-home --shell /bin/bash nfpi \
    && mkdir -p /opt/nfpi/results \
    && chown nfpi:nfpi /opt/nfpi /opt/nfpi/results \
    && chmod 0777 /opt/nfpi /opt/nfpi/results

# Caches in /tmp so that `docker run --user "$(id -u):$(id -g)"` (any uid) works as well as uid 1000.
ENV XDG_CACHE_HOME=/tmp/nfpi-cache \
    MPLCONFIGDIR=/tmp/nfpi-cache/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# numeric, so that runtimes that check "non-root" without reading /etc/passwd see it (user nfpi)
USER 1000:1000
WORKDIR /opt/nfpi
# results/<run>/ lands on the host through this volume
VOLUME ["/opt/nfpi/results"]
ENTRYPOINT ["snakemake"]
CMD ["--profile", "profiles/local", "all"]
