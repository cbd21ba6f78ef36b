"""``eventline up`` as a user runs it: embedded servers, the services, Ctrl-C, data kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_cli.up import installed_services
from eventline_shared.dev import harness
from eventline_shared.dev.harness import free_port, port_open
from tests.support import server_data_dir

pytestmark = pytest.mark.slow


def urlopen_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


class Up:
    """One ``eventline up`` subprocess with its own ports and data folder."""

    def __init__(self, data_dir: Path, same_ports_as: Up | None = None, **extra: str) -> None:
        if same_ports_as is None:
            self.ports = {spec.name: free_port() for spec in installed_services()}
            self.postgres_port, self.redis_port = free_port(), free_port()
            self.metrics_ports = {name: free_port() for name in self.ports}
        else:  # still reserved for this process by free_port: nothing else took them meanwhile
            self.ports, self.metrics_ports = same_ports_as.ports, same_ports_as.metrics_ports
            self.postgres_port, self.redis_port = same_ports_as.postgres_port, same_ports_as.redis_port
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"EVENTLINE_DATABASE_URL", "EVENTLINE_REDIS_URL"}
        }
        env.update({f"EVENTLINE_{name.upper()}_PORT": str(port) for name, port in self.ports.items()})
        env.update(
            {f"EVENTLINE_{name.upper()}_METRICS_PORT": str(port) for name, port in self.metrics_ports.items()}
        )
        env.update(
            {
                "EVENTLINE_DATA_DIR": str(data_dir),
                "EVENTLINE_EMBEDDED_POSTGRES_PORT": str(self.postgres_port),
                "EVENTLINE_EMBEDDED_REDIS_PORT": str(self.redis_port),
                "EVENTLINE_SHUTDOWN_GRACE_S": "2",
                **extra,
            }
        )
        self.log_path = data_dir.parent / f"up-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventline_cli", "up"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_serving(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        for name, port in self.ports.items():
            try:
                up = await harness.wait_ready(
                    "127.0.0.1",
                    port,
                    http=name == "gateway",
                    timeout_s=max(deadline - time.monotonic(), 0),
                    interval_s=0.2,
                    exited=lambda: self.process.poll() is not None,
                )
            except TimeoutError:
                up = None
            assert up is not False, f"eventline up exited early:\n{self.output()}"
            assert up, f"{name} never became SERVING:\n{self.output()}"

    async def interrupt(self, timeout_s: float = 60.0) -> int:
        self.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"eventline up did not stop:\n{self.output()}"
            await asyncio.sleep(0.1)
        self.log.close()
        if self.process.returncode != 0:
            print(self.output())  # shown by pytest when the test fails
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Not under pytest's tmp_path (see ``server_data_dir``)."""
    with server_data_dir("eventline-up-test-") as parent:
        yield parent / "data"


async def test_up_serves_stops_in_order_on_ctrl_c_and_keeps_the_data(data_dir: Path) -> None:
    first = Up(data_dir)
    try:
        await first.wait_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.ports['ingestion']}") as channel:
            ingestion = ingestion_pb2_grpc.IngestionServiceStub(channel)
            await ingestion.TrackCustomerEvent(
                ingestion_pb2.TrackCustomerEventRequest(event_id="e-1", customer_id="c-1", name="signed_up"),
                timeout=10,
            )
        # The gateway in front of it answers JSON: the same customer's timeline.
        timeline = await asyncio.to_thread(
            urlopen_text, f"http://127.0.0.1:{first.ports['gateway']}/v1/customers/c-1/timeline"
        )
        assert [event["eventId"] for event in json.loads(timeline)["events"]] == ["e-1"]
        # Every service serves /metrics; ingestion's counts the RPC just made, the gateway its request.
        for name, port in first.metrics_ports.items():
            metrics = await asyncio.to_thread(urlopen_text, f"http://127.0.0.1:{port}/metrics")
            if name == "gateway":
                assert 'route="/v1/customers/{customer_id}/timeline"' in metrics
                continue
            assert "# TYPE eventline_rpc_duration_seconds histogram" in metrics, name
            if name == "ingestion":
                assert 'grpc_method="TrackCustomerEvent"' in metrics
        assert (data_dir / "urls.env").read_text().startswith("EVENTLINE_DATABASE_URL=postgresql://")
        assert await first.interrupt() == 0
    finally:
        first.kill()

    output = first.output()
    assert not (data_dir / "urls.env").exists()
    for label in ("postgres", "redis", "ingestion", "gateway", "eventline"):
        assert f"\n{label:<12}| " in output
    # Services stop before Redis, Redis before PostgreSQL.
    assert (
        output.index("ingestion stopped") < output.index("redis stopped") < output.index("postgres stopped")
    )
    assert "everything stopped" in output
    assert not port_open(first.postgres_port)
    assert not port_open(first.redis_port)
    assert not port_open(first.ports["ingestion"])
    assert not port_open(first.ports["gateway"])
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    # The data survives: a second run serves the event stored by the first.
    second = Up(data_dir)
    try:
        await second.wait_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.ports['ingestion']}") as channel:
            ingestion = ingestion_pb2_grpc.IngestionServiceStub(channel)
            timeline = await ingestion.ListTimeline(
                ingestion_pb2.ListTimelineRequest(customer_id="c-1"), timeout=10
            )
        assert [event.event_id for event in timeline.events] == ["e-1"]
        assert await second.interrupt() == 0
    finally:
        second.kill()


async def test_up_refuses_a_second_run_on_the_same_data(data_dir: Path) -> None:
    first = Up(data_dir)
    try:
        await first.wait_serving()
        second = subprocess.run(
            [sys.executable, "-m", "eventline_cli", "up"],
            env={**os.environ, "EVENTLINE_DATA_DIR": str(data_dir)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "another `eventline up` is using" in second.stdout
        assert await first.interrupt() == 0
    finally:
        first.kill()


async def test_up_recovers_from_a_killed_run(data_dir: Path) -> None:
    """SIGKILL leaves the children running; the next run on the same data stops them and starts afresh."""
    first = Up(data_dir)
    try:
        await first.wait_serving()
        first.process.kill()
        first.process.wait()
        assert port_open(first.ports["ingestion"]) and port_open(first.postgres_port)
        second = Up(data_dir, same_ports_as=first)
        try:
            # The old services still answer health checks: wait for this run's banner instead.
            deadline = time.monotonic() + 90
            while "Eventline is up" not in second.output():
                assert second.process.poll() is None, second.output()
                assert time.monotonic() < deadline, second.output()
                await asyncio.sleep(0.2)
            await second.wait_serving()
            output = second.output()
            assert "left running by an earlier run" in output
            assert "PostgreSQL" in output or "postgres" in output
            assert await second.interrupt() == 0
        finally:
            second.kill()
        assert not port_open(first.ports["ingestion"])
        assert not port_open(first.ports["gateway"])
        assert not port_open(first.postgres_port)
        assert not port_open(first.redis_port)
    finally:
        first.kill()


async def cli(suite: Up, data_dir: Path, *args: str) -> tuple[int, str]:
    """The eventline command as a user runs it next to `eventline up` (it finds the suite by env)."""
    env = {key: value for key, value in os.environ.items() if key != "EVENTLINE_DATABASE_URL"}
    env.update({f"EVENTLINE_{name.upper()}_PORT": str(port) for name, port in suite.ports.items()})
    env.update({"EVENTLINE_DATA_DIR": str(data_dir), "COLUMNS": "200"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventline_cli", *args,
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_demo_shows_messages_going_out_after_up(data_dir: Path) -> None:
    """What a newcomer does: `make run`, then `eventline demo` in another terminal."""
    suite = Up(data_dir)
    try:
        await suite.wait_serving()
        code, text = await cli(suite, data_dir, "demo")
        assert code == 0, text + suite.output()
        assert text.count("Subject: Blue kettle is back") == 2
        assert "To: ann@example.com" in text and "To: bob@example.com" in text
        assert "To: cat@example.com" not in text  # no consent: skipped
        assert "Subject: Reset your password" in text
        assert len(list((data_dir / "messages").glob("*-email.txt"))) == 3
        assert await suite.interrupt() == 0
    finally:
        suite.kill()


async def test_up_with_api_keys_required(data_dir: Path) -> None:
    """EVENTLINE_AUTH=true: callers need keys (made with `eventline keys`), services get one of their own."""
    suite = Up(data_dir, EVENTLINE_AUTH="true")
    try:
        await suite.wait_serving()
        code, text = await cli(suite, data_dir, "timeline", "nobody")
        assert code == 1 and "UNAUTHENTICATED" in text, text
        code, text = await cli(suite, data_dir, "keys", "create", "--name", "test", "--scope", "admin")
        assert code == 0, text
        token = text.strip().splitlines()[-1]
        # The back-in-stock campaign needs campaigns to call segmentation: with the run's service key.
        code, text = await cli(suite, data_dir, "--api-key", token, "demo")
        assert code == 0, text + suite.output()
        assert text.count("Subject: Blue kettle is back") == 2
        assert "the services call each other with key" in suite.output()
        assert await suite.interrupt() == 0
    finally:
        suite.kill()
