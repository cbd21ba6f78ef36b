"""Fixtures shared by the whole suite: real PostgreSQL, Redis and gRPC servers.

PostgreSQL isolation: one template database is built from the migrations per
session; each test gets ``CREATE DATABASE … TEMPLATE`` (fast). Redis
isolation: each test gets its own stream keys, deleted afterwards.

``make test`` points EVENTLINE_TEST_POSTGRES_URL and EVENTLINE_TEST_REDIS_URL at
reachable servers (starting embedded ones when needed); without them the
machine's defaults are used.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from eventline.ingestion.v1 import ingestion_pb2_grpc

from eventline_shared import database

POSTGRES_URL = os.environ.get("EVENTLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


@pytest.fixture
def stream_key() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:events"


@pytest.fixture
async def redis_client(stream_key: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    prefix = stream_key.rsplit(":", 1)[0]
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def service_env(db_url: str, stream_key: str, **extra: str) -> dict[str, str]:
    """The environment a service of this test runs with: its database, stream and port 0."""
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
async def ingestion_server(db_url: str, stream_key: str, redis_client: redis.Redis):  # type: ignore[no-untyped-def]
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    settings = Settings.from_env(service_env(db_url, stream_key))
    async with running(settings) as served:
        yield served


@pytest.fixture
async def ingestion(ingestion_server) -> AsyncIterator[ingestion_pb2_grpc.IngestionServiceStub]:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}") as channel:
        yield ingestion_pb2_grpc.IngestionServiceStub(channel)
