"""`make audit`: what the production lock puts in the image, and what is known against it.

Two steps over ``requirements.lock``:

1. An SBOM (CycloneDX JSON, by ``cyclonedx-py requirements``): made from the
   lock and ``pyproject.toml`` alone, so it always runs, offline included.
2. A scan for known vulnerabilities (``pip-audit``), which needs its
   vulnerability database: PyPI's JSON API (``pypi``, the default) or OSV
   (``AUDIT_SERVICE=osv``). Nothing is cached to fall back on, so when the
   database cannot be reached, or answers for only some of the packages, the
   scan says so and which packages went unchecked, and fails: an unchecked
   package is not a clean one. pip-audit itself reports such a run as "No known
   vulnerabilities found" with exit status 0.

Exit status: 0 every package checked and none vulnerable; 1 known
vulnerabilities (listed); 2 the scan could not check everything (the SBOM is
written all the same); 3 the SBOM could not be made.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLEAN, VULNERABLE, UNCHECKED, NO_SBOM = 0, 1, 2, 3
SERVICES = {
    "pypi": "PyPI's JSON API (https://pypi.org/pypi/<package>/<version>/json)",
    "osv": "OSV (https://api.osv.dev)",
}


@dataclass
class Scan:
    """What a pip-audit report says about each package of the lock."""

    checked: list[str] = field(default_factory=list)
    vulnerable: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)


def read_report(report: dict[str, Any]) -> Scan:
    """Sort pip-audit's JSON report (``-f json``) into checked, vulnerable and unchecked."""
    scan = Scan()
    for dependency in report.get("dependencies", []):
        if "skip_reason" in dependency:  # pip-audit names no version then; the reason does
            scan.unchecked[dependency["name"]] = dependency["skip_reason"]
            continue
        name = f"{dependency['name']}=={dependency['version']}"
        scan.checked.append(name)
        if dependency.get("vulns"):
            scan.vulnerable[name] = dependency["vulns"]
    return scan


def unreachable(stderr: str) -> str | None:
    """The host pip-audit failed to reach, from its traceback; None for any other failure."""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if not re.match(r"requests\.exceptions\.\w+", last):
        return None
    host = re.search(r"host='([^']+)'", last)
    return host[1] if host else "its vulnerability database"


def verdict(scan: Scan, service: str) -> tuple[int, list[str]]:
    """The exit status and the lines that say plainly what was and was not found."""
    database = SERVICES[service]
    lines = []
    for name, vulns in sorted(scan.vulnerable.items()):
        for vuln in vulns:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            aliases = ", ".join(vuln.get("aliases") or [])
            lines.append(
                f"VULNERABLE {name}: {vuln['id']}" + (f" ({aliases})" if aliases else "")
                + f"; fixed in {fixed}"
            )  # fmt: skip
    total = len(scan.checked) + len(scan.unchecked)
    if scan.unchecked:
        reasons = sorted(set(scan.unchecked.values()))
        lines.append(
            f"NOT CHECKED: {len(scan.unchecked)} of {total} packages could not be looked up in "
            f"{database}; their known vulnerabilities are unknown, not absent."
        )
        if all(reason.startswith("Dependency not found") for reason in reasons):
            lines.append(
                "  The database answered 'not found' for each of them: the index reached here "
                "serves packages but not the vulnerability records of their releases (a mirror "
                "or a proxy). Run `make audit` where the database is reachable, or try "
                "AUDIT_SERVICE=osv."
            )
            lines.append("  unchecked: " + ", ".join(sorted(scan.unchecked)))
        else:
            lines += [f"  {name}: {reason}" for name, reason in sorted(scan.unchecked.items())]
    if scan.vulnerable:
        status = VULNERABLE
    elif scan.unchecked or not total:
        status = UNCHECKED
    else:
        status = CLEAN
        lines.append(f"no known vulnerabilities in the {total} packages (database: {database})")
    return status, lines


def make_sbom(bin_dir: Path, lock: Path, pyproject: Path, out: Path) -> str:
    """Write the CycloneDX SBOM of ``lock``; returns a one-line summary."""
    subprocess.run(
        [
            str(bin_dir / "cyclonedx-py"),
            "requirements",
            str(lock),
            "--pyproject",
            str(pyproject),
            "--output-reproducible",
            "--of",
            "JSON",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    bom = json.loads(out.read_text())
    root = bom["metadata"]["component"]
    return (
        f"SBOM: {out} (CycloneDX {bom['specVersion']}, {root['name']} {root['version']}, "
        f"{len(bom.get('components', []))} components, made offline from {lock.name})"
    )


def scan_lock(bin_dir: Path, lock: Path, service: str, out: Path) -> tuple[int, list[str]]:
    """Run pip-audit over ``lock`` (hash-checked, no resolution by pip) and judge its report."""
    done = subprocess.run(
        [
            str(bin_dir / "pip-audit"),
            "--requirement",
            str(lock),
            "--require-hashes",
            "--disable-pip",
            "--vulnerability-service",
            service,
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if not out.exists():
        host = unreachable(done.stderr)
        if host is not None:
            return UNCHECKED, [
                f"NOT CHECKED: the vulnerability database ({SERVICES[service]}) could not be "
                f"reached ({host}): no package of {lock.name} was checked for known "
                "vulnerabilities.",
                f"  {done.stderr.strip().splitlines()[-1]}",
            ]
        tail = done.stderr.strip().splitlines()[-3:] or ["(no output)"]
        return UNCHECKED, ["NOT CHECKED: pip-audit failed:", *(f"  {line}" for line in tail)]
    return verdict(read_report(json.loads(out.read_text())), service)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make audit", description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--out", type=Path, default=Path("build/audit"))
    parser.add_argument(
        "--service", choices=sorted(SERVICES), default=os.environ.get("AUDIT_SERVICE", "pypi")
    )
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    args.out.mkdir(parents=True, exist_ok=True)
    sbom, report = args.out / "sbom.cdx.json", args.out / "vulnerabilities.json"
    for stale in (sbom, report):
        stale.unlink(missing_ok=True)
    try:
        print(make_sbom(bin_dir, args.lock, args.pyproject, sbom))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        print(f"SBOM FAILED: {type(exc).__name__}: {exc} {stderr.strip()}", file=sys.stderr)
        return NO_SBOM
    status, lines = scan_lock(bin_dir, args.lock, args.service, report)
    for line in lines:
        print(line, flush=True)
    if report.exists():
        print(f"pip-audit report: {report}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
