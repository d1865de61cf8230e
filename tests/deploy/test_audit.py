"""`make audit`: the SBOM of the production lock, and a vulnerability scan that says
plainly what it could not check instead of reporting a clean lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from referral_devtools.audit import (
    CLEAN,
    UNCHECKED,
    VULNERABLE,
    read_report,
    unreachable,
    verdict,
)
from referral_devtools.devstack import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def _pins() -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^ ;\\]+)", LOCK.read_text(), re.MULTILINE))


def test_a_clean_report_is_clean_and_a_vulnerable_one_names_what_to_upgrade() -> None:
    clean = read_report({"dependencies": [{"name": "a", "version": "1", "vulns": []}]})
    assert verdict(clean, "pypi")[0] == CLEAN
    status, lines = verdict(
        read_report(
            {
                "dependencies": [
                    {"name": "a", "version": "1", "vulns": []},
                    {"name": "b", "version": "2.0", "vulns": [
                        {"id": "PYSEC-1", "aliases": ["CVE-2027-1"], "fix_versions": ["2.1"]},
                    ]},
                ]
            }
        ),
        "pypi",
    )  # fmt: skip
    assert status == VULNERABLE
    assert lines == ["VULNERABLE b==2.0: PYSEC-1 (CVE-2027-1); fixed in 2.1"]


def test_skipped_packages_are_unchecked_never_clean() -> None:
    # What pip-audit reports, with exit status 0 and "No known vulnerabilities found",
    # when its database knows none of the releases (an index mirror without the JSON API).
    report = {
        "dependencies": [
            {"name": "a", "skip_reason": "Dependency not found on PyPI and could not be audited: a (1)"},
            {"name": "b", "version": "2", "vulns": []},
        ]
    }  # fmt: skip
    status, lines = verdict(read_report(report), "pypi")
    assert status == UNCHECKED
    assert lines[0].startswith("NOT CHECKED: 1 of 2 packages could not be looked up in PyPI")
    assert lines[-1] == "  unchecked: a"
    assert verdict(read_report({"dependencies": []}), "pypi")[0] == UNCHECKED


def test_the_unreachable_host_is_read_off_the_traceback() -> None:
    stderr = (
        "Traceback (most recent call last):\n  ...\nrequests.exceptions.ConnectionError: "
        "HTTPSConnectionPool(host='api.osv.dev', port=443): Max retries exceeded"
    )
    assert unreachable(stderr) == "api.osv.dev"
    assert unreachable("ValueError: something else") is None


def test_make_audit_writes_the_sbom_offline_and_says_it_could_not_scan(tmp_path: Path) -> None:
    # Every request of the scan goes to a closed port on this machine: the database is
    # unreachable, as it is without internet access.
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": "",
           "https_proxy": proxy, "http_proxy": proxy, "no_proxy": ""}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "referral_devtools.audit", "--lock", str(LOCK),
         "--pyproject", str(ROOT / "pyproject.toml"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == UNCHECKED, done.stdout + done.stderr
    assert "NOT CHECKED: the vulnerability database (PyPI's JSON API" in done.stdout
    assert "could not be reached (pypi.org)" in done.stdout
    assert "No known vulnerabilities" not in done.stdout + done.stderr
    bom = json.loads((tmp_path / "sbom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    project = bom["metadata"]["component"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (project["name"], project["version"]) == ("referral-rewards", version)
    components = {c["name"].lower(): c["version"] for c in bom["components"]}
    assert components == _pins()
    assert all(c["purl"].startswith("pkg:pypi/") for c in bom["components"])
