"""The gateway as it runs in production: several worker processes on one port."""

from __future__ import annotations

import aiohttp
import psutil
import pytest

from eventline_shared.dev import harness
from tests.conftest import gateway_env
from tests.processes import ServiceProcess, free_port


@pytest.fixture
def gateway_process(tmp_path):  # type: ignore[no-untyped-def]
    # No service behind it: /healthz answers all the same (liveness is the process's own).
    process = ServiceProcess("gateway", gateway_env(free_port(), free_port(), free_port()), tmp_path)
    yield process
    process.kill()


async def test_workers_serve_one_port_and_stop_together(gateway_process) -> None:  # type: ignore[no-untyped-def]
    gateway_process.start(EVENTLINE_GATEWAY_WORKERS="2")
    workers = await gateway_process.listening_workers(2)
    url = f"http://127.0.0.1:{gateway_process.port}/healthz"
    await harness.wait_http_ready(url, interval_s=0.1)
    # A connection each (no keep-alive across requests): the kernel hands them to either worker.
    for _ in range(8):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(url) as response:
                assert response.status == 200 and (await response.json())["status"] == "SERVING"
    gateway_process.signal()
    assert await gateway_process.exited() == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


async def test_a_bad_variable_stops_the_supervisor_before_any_worker(gateway_process) -> None:  # type: ignore[no-untyped-def]
    gateway_process.start(EVENTLINE_GATEWAY_WORKERS="2", EVENTLINE_POSTMARK_WEBHOOK_AUTH="no-colon")
    assert await gateway_process.exited() != 0
    assert "EVENTLINE_POSTMARK_WEBHOOK_AUTH" in gateway_process.logs()
