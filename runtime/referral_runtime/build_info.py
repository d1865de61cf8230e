"""What is running: the project's version and the source revision it was built from.

The version is the one in ``pyproject.toml``, read back from the installed
distribution's metadata, so it is written in one place. The revision (the git
commit) is not in the sources: the image build passes it as the ``REVISION``
build argument, which the Dockerfile turns into ``REFERRALS_REVISION``; a
process started any other way reports ``unknown``.

Every console script offers ``--version`` (:func:`add_version_argument`) and
every service exports ``referral_build_info{version,revision} 1``
(:func:`register_build_info`): one line each to wire into a new one.
"""

from __future__ import annotations

import argparse
import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

from prometheus_client import CollectorRegistry, Gauge

#: The distribution ``pyproject.toml`` names.
DISTRIBUTION = "referral-rewards"
#: The environment variable holding the source revision (set by the image build).
REVISION_ENV = "REFERRALS_REVISION"
UNKNOWN = "unknown"


def version() -> str:
    """The installed project's version (``pyproject.toml``), ``unknown`` if not installed."""
    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN


def revision() -> str:
    """The source revision the image was built from (``REFERRALS_REVISION``), or ``unknown``."""
    return os.environ.get(REVISION_ENV, "").strip() or UNKNOWN


def describe(program: str) -> str:
    """One line naming ``program``, its version and its revision (what ``--version`` prints)."""
    return f"{program} {version()} (revision {revision()})"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` option that prints :func:`describe` and exits 0."""
    parser.add_argument("--version", action="version", version=describe(parser.prog))


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """Export ``referral_build_info{version,revision} 1`` on ``registry``.

    Constant 1, so ``count by (version) (referral_build_info)`` shows a rollout's
    progress and a join on it labels any other series with the running version.
    """
    gauge = Gauge(
        "referral_build_info",
        "Always 1: the version (pyproject.toml) and source revision of the running process",
        ["version", "revision"],
        registry=registry,
    )
    gauge.labels(version(), revision()).set(1)
    return gauge
