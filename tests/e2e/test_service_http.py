"""What every service answers over HTTP, as a real process: the build it runs on
``/metrics`` (``referral_build_info``) and a plain 404 for a path it does not serve."""

from __future__ import annotations

import asyncio
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from referral_devtools.devstack import free_port
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import spawn, terminate

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["referral-consumer", "payout-scheduler", "referral-web"]
#: What a service needs beyond the shared settings to start (referral-web reads the
#: database only: no broker address at all).
EXTRA_ENV = {"referral-web": {"PAGE_SIGNING_KEY": "k" * 32, "KAFKA_BOOTSTRAP_SERVERS": ""}}
UNSERVED = ["/", "/nope", "/metrics/extra", "/healthz/", "/readyz/x", "/v2/codes/ABCD-EFGH"]


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


@pytest.mark.parametrize("service", SERVICES)
async def test_metrics_name_the_build_and_unknown_paths_are_a_plain_404(
    service: str, settings: Settings, tmp_path: Path
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    port = free_port()
    log = tmp_path / f"{service}.log"
    proc = spawn(
        [service],
        settings,
        log,
        HTTP_PORT=str(port),
        REFERRALS_REVISION="0123abc",
        **EXTRA_ENV.get(service, {}),
    )
    try:

        async def serving() -> bool:
            return (await asyncio.to_thread(_get, port, "/healthz"))[0] == 200

        await wait_for(serving, timeout=30)
        status, _, body = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        line = f'referral_build_info{{revision="0123abc",version="{version}"}} 1.0'
        assert line in body.decode().splitlines(), log.read_text()

        for path in UNSERVED:
            status, headers, body = await asyncio.to_thread(_get, port, path)
            assert (status, body) == (404, b"not found"), (service, path, body)
            content_type = {k.lower(): v for k, v in headers.items()}["content-type"]
            assert content_type.startswith("text/plain"), (service, path)
    finally:
        assert await asyncio.to_thread(terminate, proc) == 0, log.read_text()
