"""What the benchmarks share: where PostgreSQL and Redis are, fresh databases, service processes
on loopback, and waiting until they serve."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
import redis.asyncio as redis

from eventline_shared.dev import harness
from eventline_shared.dev.harness import free_port as free_port
from eventline_shared.storage import database
from eventline_shared.streams import stream

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("EVENTLINE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

T = TypeVar("T")


class ImpossibleFigure(Exception):
    """A measured figure that cannot be true: the method, not the system, is wrong."""


def impossible_unless(holds: bool, what: str) -> None:
    if not holds:
        raise ImpossibleFigure(what)


def figures_or_exit(measure: Coroutine[Any, Any, T], script: str) -> T:
    """Run the benchmark's ``measure``; when it finds an impossible figure, say so on stderr
    and exit with status 2 instead of printing figures."""
    try:
        return asyncio.run(measure)
    except ImpossibleFigure as impossible:
        print(f"{script}: impossible measurement, no figures printed: {impossible}", file=sys.stderr)
        sys.exit(2)


def command_line(doc: str | None, quick: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line: its module docstring as the help, and ``--quick`` when the
    benchmark has a short run (``quick`` says what that run is)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def db_url(name: str, server_url: str = POSTGRES_URL) -> str:
    """The URL of database ``name`` on the PostgreSQL server of ``server_url``."""
    return server_url.rsplit("/", 1)[0] + "/" + name


_MIGRATE_WITH_ITS_CODE = """
import asyncio, sys
try:
    from eventline_shared.storage import database
except ImportError:  # a tree from before the shared packages were named
    from eventline_shared import database
asyncio.run(database.migrate_url(sys.argv[1]))
"""


async def fresh_database(name: str, server_url: str = POSTGRES_URL, python_path: str | None = None) -> str:
    """Drop and re-create database ``name``, migrated; returns its URL. With ``python_path``
    (another checkout's code, first on the path) the migrations are that checkout's."""
    await drop_database(name, server_url)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = db_url(name, server_url)
    if python_path:
        migrating = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _MIGRATE_WITH_ITS_CODE, url, env={**os.environ, "PYTHONPATH": python_path}
        )
        if await migrating.wait():
            raise RuntimeError(f"migrating {name} with the code of {python_path} failed")
    else:
        await database.migrate_url(url)
    return url


async def drop_database(name: str, server_url: str = POSTGRES_URL) -> None:
    """Drop database ``name`` (a run's own, see ``fresh_database``), closing its connections."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def start_service(service: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """``python -m eventline_<service>`` with ``env`` added to this process's environment."""
    return harness.start_service(service, env, cwd=ROOT)


async def serving(port: int, timeout_s: float = 30.0) -> None:
    """Return once the service on ``port`` reports SERVING; ``TimeoutError`` after ``timeout_s``."""
    await harness.wait_serving_at(f"127.0.0.1:{port}", timeout_s=timeout_s)


def stop(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM every process (they finish in-flight calls), then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)


async def consumed(client: stream.Client, keys: list[str], group: str) -> bool:
    """Whether the group has read and acknowledged everything on every partition."""
    for key in keys:
        for info in await client.xinfo_groups(key):
            if info["name"] in (group, group.encode()) and (info["pending"] or info.get("lag")):
                return False
    return True


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children (worker processes), in seconds."""
    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def backend_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend (same host) by pid."""
    found = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        found[pid] = times.user + times.system
    return found


async def database_backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend (same host) connected to the database of ``url``, by pid."""
    connection = await asyncpg.connect(url)
    try:
        pids = [
            row[0]
            for row in await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
    finally:
        await connection.close()
    return backend_cpu(pids)


def backend_cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds the backends used between two ``backend_cpu`` readings (one started meanwhile
    counts from zero; one that ended meanwhile is lost)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def redis_cpu_seconds(url: str = REDIS_URL) -> float:
    """CPU seconds used so far by the Redis server of ``url`` (same host; shared with every other
    user of that server, so only a quiet server gives a figure of one benchmark's own)."""
    client = redis.Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return cpu_seconds(int(info["process_id"]))
