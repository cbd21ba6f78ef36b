"""What the benchmarks share: where PostgreSQL and Redis are, fresh databases, service processes
on loopback, and waiting until they serve."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eventline_shared import database

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("EVENTLINE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def db_url(name: str, server_url: str = POSTGRES_URL) -> str:
    """The URL of database ``name`` on the PostgreSQL server of ``server_url``."""
    return server_url.rsplit("/", 1)[0] + "/" + name


async def fresh_database(name: str, server_url: str = POSTGRES_URL) -> str:
    """Drop and re-create database ``name``, migrated; returns its URL."""
    await drop_database(name, server_url)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await database.migrate_url(db_url(name, server_url))
    return db_url(name, server_url)


async def drop_database(name: str, server_url: str = POSTGRES_URL) -> None:
    """Drop database ``name`` (a run's own, see ``fresh_database``), closing its connections."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(service: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """``python -m eventline_<service>`` with ``env`` added to this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", f"eventline_{service}"], env={**os.environ, **env}, cwd=ROOT
    )


async def serving(port: int, timeout_s: float = 30.0) -> None:
    """Return once the service on ``port`` reports SERVING; raise after ``timeout_s``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(int(timeout_s / 0.1)):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the service on port {port} did not start")


def stop(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM every process (they finish in-flight calls), then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)
