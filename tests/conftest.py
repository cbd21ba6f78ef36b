"""Fixtures shared by the whole suite: real PostgreSQL, Redis and gRPC servers.

PostgreSQL isolation: one template database is built from the migrations per
session; each test gets ``CREATE DATABASE … TEMPLATE`` (fast). Redis
isolation: each test gets its own stream keys, deleted afterwards.

Redis: the single server of EVENTLINE_TEST_REDIS_URL, or, for a test that asks
``@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)``,
also a real 6-node Redis Cluster (``eventline_shared/dev/embedded_cluster.py``, started once per
session when a test first needs it).

``make test`` points EVENTLINE_TEST_POSTGRES_URL and EVENTLINE_TEST_REDIS_URL at
reachable servers (starting embedded ones when needed); without them the
machine's defaults are used.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2_grpc

from eventline_shared.dev.embedded_cluster import RedisClusterNodes
from eventline_shared.storage import database
from eventline_shared.streams import stream
from tests.processes import free_port

POSTGRES_URL = os.environ.get("EVENTLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

pytest_plugins = ["tests.certificates"]  # the `certificates` fixture of the TLS tests


def database_url(name: str) -> str:
    base, _, _ = POSTGRES_URL.rpartition("/")
    query = ""
    if "?" in POSTGRES_URL:
        query = "?" + POSTGRES_URL.split("?", 1)[1]
    return f"{base}/{name}{query}"


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    name = f"eventline_template_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(database.migrate_url(database_url(name)))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def db_url(template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"eventline_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield database_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_url() -> AsyncIterator[str]:
    """A database of this test's own with no Eventline schema at all."""
    name = f"eventline_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    yield database_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def behind_url(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database an older release migrated: every shipped migration but the latest."""
    older = database.migrations()[:-1]
    with monkeypatch.context() as patch:
        patch.setattr(database, "migrations", lambda: older)
        await database.migrate_url(empty_url)
    return empty_url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


@pytest.fixture
def stream_key() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:events"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster of 6 nodes (3 masters, 3 replicas) on loopback."""
    nodes = RedisClusterNodes(Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """EVENTLINE_REDIS_URL of this test: the single server, or the cluster when parametrized so."""
    if getattr(request, "param", "single") == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        return cluster.url
    return REDIS_URL


@pytest.fixture
async def redis_client(stream_key: str, redis_url: str) -> AsyncIterator[stream.Client]:
    client = stream.connect(redis_url)
    try:
        yield client
        # The stream's partitions and dead-letter streams: "{test:…:events}:dead" has the prefix inside.
        prefix = stream_key.rsplit(":", 1)[0]
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*")]
        for key in keys:  # one by one: on a cluster they live in different slots
            await client.delete(key)
    finally:  # closed even when the clean-up fails: an unclosed connection's ResourceWarning is an error
        await client.aclose()


def service_env(db_url: str, stream_key: str, **extra: str) -> dict[str, str]:
    """The environment a service of this test runs with: its database, stream and port 0
    (Redis: the single server unless ``extra`` says EVENTLINE_REDIS_URL)."""
    env = {
        "EVENTLINE_DATABASE_URL": db_url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": stream_key,
        "EVENTLINE_INGESTION_PORT": "0",
        "EVENTLINE_SEGMENTATION_PORT": "0",
        "EVENTLINE_CAMPAIGNS_PORT": "0",
        "EVENTLINE_SHUTDOWN_GRACE_S": "2",
    }
    env.update(extra)
    return env


@pytest.fixture
async def ingestion_server(db_url: str, stream_key: str, redis_url: str, redis_client: stream.Client):  # type: ignore[no-untyped-def]
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    settings = Settings.from_env(service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url))
    async with running(settings) as served:
        yield served


@pytest.fixture
async def ingestion(ingestion_server) -> AsyncIterator[ingestion_pb2_grpc.IngestionServiceStub]:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as channel:
        yield ingestion_pb2_grpc.IngestionServiceStub(channel)


@pytest.fixture
async def segmentation_server(db_url: str, stream_key: str):  # type: ignore[no-untyped-def]
    """Segmentation without its background work on real-time segments (its consumer group would
    read the test's stream too): tests call ``realtime`` and ``consumer`` themselves."""
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    settings = Settings.from_env(service_env(db_url, stream_key))
    async with running(settings, background=False) as served:
        yield served


@pytest.fixture
async def segmentation(segmentation_server):  # type: ignore[no-untyped-def]
    from eventline.segmentation.v1 import segmentation_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{segmentation_server.port}") as channel:
        yield segmentation_pb2_grpc.SegmentationServiceStub(channel)


# --- Campaigns: a real SMTP server (aiosmtpd), a local HTTP provider, the campaign service ---


class SmtpInbox:
    """What the test SMTP server received, parsed; ``arrived`` is set on every message."""

    def __init__(self) -> None:
        import email.message

        self.messages: list[email.message.EmailMessage] = []
        self.ids_by_recipient: dict[str, set[str]] = {}
        """Each recipient's Message-IDs, read once as a message arrives: reading the headers of every
        message again on each poll of a wait (an address parse each) blocks the event loop the
        service under test shares for seconds on a loaded machine once a thousand messages are in."""
        self.arrived = asyncio.Event()
        self.port = 0
        self.reply = "250 OK"
        """The reply to DATA; anything else refuses the message (and records nothing)."""
        self.connections: list[asyncio.Transport] = []
        """Every connection clients opened, in order (closing one drops that client)."""
        self.gate: asyncio.Semaphore | None = None
        """When set, each message waits for a permit (``allow``) before it is accepted."""

    def hold(self) -> None:
        """Accept no message until ``allow`` says how many."""
        self.gate = asyncio.Semaphore(0)

    def allow(self, count: int) -> None:
        assert self.gate is not None
        for _ in range(count):
            self.gate.release()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        import email
        import email.policy

        if self.gate is not None:
            await self.gate.acquire()
        if self.reply != "250 OK":
            return self.reply
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        self.messages.append(message)  # type: ignore[arg-type]
        self.ids_by_recipient.setdefault(str(message["To"]), set()).add(str(message["Message-ID"]))
        self.arrived.set()
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        async def enough() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpInbox]:
    from aiosmtpd.smtp import SMTP

    inbox = SmtpInbox()

    class Counted(SMTP):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            inbox.connections.append(transport)  # type: ignore[arg-type]
            super().connection_made(transport)

    server = await asyncio.get_running_loop().create_server(
        lambda: Counted(inbox, hostname="smtp.test"), "127.0.0.1", 0
    )
    inbox.port = server.sockets[0].getsockname()[1]
    yield inbox
    server.close()
    await server.wait_closed()


class HttpProvider:
    """A minimal HTTP/1.1 server that records every request and counts connections;
    ``fail_next`` replies 503 that many times, then every reply is ``status``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.fail_next = 0
        self.status = "200 OK"
        self.reply_body = b"ok"
        self.body_pause_s = 0.0
        """When set, the reply's body arrives in two parts this far apart, as over a real network."""
        self.connections = 0
        self.open: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                path = line.decode().split(" ")[1]
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, text = header.decode().partition(":")
                    headers[name.strip().lower()] = text.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((path, headers, body))
                status = "503 Service Unavailable" if self.fail_next > 0 else self.status
                self.fail_next = max(0, self.fail_next - 1)
                reply, half = self.reply_body, len(self.reply_body) // 2
                head = f"HTTP/1.1 {status}\r\nContent-Length: {len(reply)}\r\n\r\n".encode()
                if self.body_pause_s:
                    writer.write(head + reply[:half])
                    await writer.drain()
                    await asyncio.sleep(self.body_pause_s)
                    writer.write(reply[half:])
                else:
                    writer.write(head + reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Close the connections clients still keep alive."""
        writers = list(self.open)
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


@pytest.fixture
async def http_provider() -> AsyncIterator[HttpProvider]:
    provider = HttpProvider()
    server = await asyncio.start_server(provider.handle, "127.0.0.1", 0)
    provider.port = server.sockets[0].getsockname()[1]
    yield provider
    server.close()
    await provider.close()


CampaignsEnv = Callable[..., dict[str, str]]


@pytest.fixture
def campaigns_env(  # type: ignore[no-untyped-def]
    db_url: str, stream_key: str, redis_url: str, segmentation_server, smtp_server, http_provider, tmp_path
) -> CampaignsEnv:
    """The campaign service's environment in this test: its database and stream, the real
    segmentation, SMTP and HTTP servers, short timeouts; ``campaigns_env(NAME="value")`` adds
    or overrides settings."""

    def env(**extra: str) -> dict[str, str]:
        settings = dict(
            EVENTLINE_SEGMENTATION_ADDR=f"127.0.0.1:{segmentation_server.port}",
            EVENTLINE_SMTP_HOST="127.0.0.1",
            EVENTLINE_SMTP_PORT=str(smtp_server.port),
            EVENTLINE_SMS_URL=f"http://127.0.0.1:{http_provider.port}/sms",
            EVENTLINE_PUSH_URL=f"http://127.0.0.1:{http_provider.port}/push",
            EVENTLINE_PROVIDER_SECRET="test-secret",
            EVENTLINE_CAMPAIGNS_SINK_DIR=str(tmp_path / "sink"),
            EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="0",
            EVENTLINE_CAMPAIGNS_MAX_ATTEMPTS="3",
            EVENTLINE_CAMPAIGNS_POLL_S="0.1",
            EVENTLINE_CAMPAIGNS_PARTITION_LEASE_MS="1500",
            EVENTLINE_REDIS_URL=redis_url,
        )
        return service_env(db_url, stream_key, **{**settings, **extra})

    return env


@pytest.fixture
async def campaigns_server(campaigns_env: CampaignsEnv, redis_client):  # type: ignore[no-untyped-def]
    """The campaign service without its background consumer: tests call ``consumer.drain()``."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    env = campaigns_env()
    async with running(Settings.from_env(env), consume=False) as served:
        yield served


@pytest.fixture
async def campaigns(campaigns_server) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:  # type: ignore[no-untyped-def]
    """A client of ``campaigns_server`` (its consumer stopped: tests drain it)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_server.port}") as channel:
        yield campaigns_pb2_grpc.CampaignServiceStub(channel)


# --- The HTTP/JSON gateway in front of the three services ---


def gateway_env(
    ingestion_port: int, segmentation_port: int, campaigns_port: int, **extra: str
) -> dict[str, str]:
    """The gateway's environment: port 0 and the three services of this test."""
    env = {
        "EVENTLINE_GATEWAY_PORT": "0",
        "EVENTLINE_INGESTION_ADDR": f"127.0.0.1:{ingestion_port}",
        "EVENTLINE_SEGMENTATION_ADDR": f"127.0.0.1:{segmentation_port}",
        "EVENTLINE_CAMPAIGNS_ADDR": f"127.0.0.1:{campaigns_port}",
        "EVENTLINE_SHUTDOWN_GRACE_S": "2",
    }
    env.update(extra)
    return env


@pytest.fixture
async def gateway_server(ingestion_server, segmentation_server, campaigns_server):  # type: ignore[no-untyped-def]
    """The gateway, in this process, before real ingestion, segmentation and campaign services
    (the campaign consumer runs only when a test drains it)."""
    from eventline_gateway.service import running
    from eventline_gateway.settings import Settings

    env = gateway_env(ingestion_server.port, segmentation_server.port, campaigns_server.port)
    async with running(Settings.from_env(env)) as served:
        yield served


@asynccontextmanager
async def secured_suite(db_url: str, stream_key: str, **gateway_extra: str) -> AsyncIterator[str]:
    """Ingestion and segmentation requiring keys, a gateway before them (campaigns absent);
    the gateway's base URL."""
    from eventline_gateway.service import running as running_gateway
    from eventline_gateway.settings import Settings as GatewaySettings
    from eventline_ingestion.service import running as running_ingestion
    from eventline_ingestion.settings import Settings as IngestionSettings
    from eventline_segmentation.service import running as running_segmentation
    from eventline_segmentation.settings import Settings as SegmentationSettings

    env = service_env(db_url, stream_key, EVENTLINE_AUTH="true")
    async with (
        running_ingestion(IngestionSettings.from_env(env)) as ingestion,
        running_segmentation(SegmentationSettings.from_env(env)) as segmentation,
        running_gateway(
            GatewaySettings.from_env(
                gateway_env(ingestion.port, segmentation.port, free_port(), **gateway_extra)
            )
        ) as gateway,
    ):
        yield f"http://127.0.0.1:{gateway.port}"


single_and_cluster = pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
"""Run a test against the single Redis server and against the Redis Cluster."""
