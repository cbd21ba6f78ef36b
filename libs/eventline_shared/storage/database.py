"""PostgreSQL: connection pools, numbered migrations and driver-error translation."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TypeAlias

import asyncpg

from eventline_shared.errors import AlreadyExists, DeadlineExceeded, EventlineError, Unavailable
from eventline_shared.observability.dependencies import POSTGRESQL, Dependency

Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)
"""A connection of its own or one acquired from a pool: what transactions run on."""

log = logging.getLogger(__name__)

# An arbitrary constant that identifies Eventline's migration lock.
MIGRATION_LOCK_ID = 0x45564C4E  # "EVLN"
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CONNECT_TIMEOUT_S = 3.0


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool connections never change session state, so releasing one needs no reset query.

    asyncpg still rolls back an open transaction on release; skipping its
    default reset (UNLISTEN, RESET ALL, advisory unlock...) saves a round trip
    per query. Code that LISTENs, SETs or takes session advisory locks uses a
    connection of its own, not the pool's.
    """


CACHED_STATEMENT_BYTES = 256 * 1024
"""The longest statement text a connection keeps prepared (asyncpg's default is 15 KiB). Real-time
segments evaluate their segments in one statement (segmentation's ``realtime.observe_many``), 20
to 90 KiB for 10 to 50 segments: prepared again on every call, it was parsed, described and
planned each time (tens of ms) instead of planned once."""


@asynccontextmanager
async def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, wait_s: float = 30.0
) -> AsyncIterator[asyncpg.Pool]:
    """A pool, waiting up to ``wait_s`` for PostgreSQL to accept connections."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT_S,
                reset=_keep_session,
                max_cacheable_statement_size=CACHED_STATEMENT_BYTES,
            )
            break
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("waiting for PostgreSQL", extra={"error": str(exc)})
            await asyncio.sleep(0.5)
    try:
        yield pool
    finally:
        await pool.close()


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with Eventline: (version, name, sql), in version order.

    Each service keeps its own in a folder of ``eventline_shared.storage.migrations``
    (``ingestion/``, ``segmentation/``, ``campaigns/``, ``security/``); they share one database
    and one numbering, so they are applied together, in order, whichever service starts first.
    """
    found = []
    for folder in resources.files("eventline_shared.storage.migrations").iterdir():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _MIGRATION_FILE.match(entry.name)
            if match:
                found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


def migration_label(version: int, name: str) -> str:
    """A migration as its file is named, without ``.sql``: ``0100_segments``."""
    return f"{version:04d}_{name}"


class SchemaBehind(Exception):
    """The database lacks migrations this code needs: started with EVENTLINE_MIGRATE=false
    before ``eventline migrate`` applied them."""

    def __init__(self, missing: list[tuple[int, str]]) -> None:
        self.missing = missing
        labels = ", ".join(migration_label(version, name) for version, name in missing)
        plural = "s" if len(missing) > 1 else ""
        super().__init__(
            f"the database schema is behind this version: missing migration{plural} {labels}. "
            "Run `eventline migrate` (EVENTLINE_MIGRATE=false: this process applies none itself)"
        )


async def applied_migrations(connection: asyncpg.Connection) -> dict[int, str]:
    """The migrations recorded in the database: version to name (none before the first migrate)."""
    if await connection.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    rows = await connection.fetch("SELECT version, name FROM schema_migrations")
    return {row["version"]: row["name"] for row in rows}


async def missing_migrations(connection: asyncpg.Connection) -> list[tuple[int, str]]:
    """The shipped migrations the database has not applied, in order."""
    done = await applied_migrations(connection)
    return [(version, name) for version, name, _ in migrations() if version not in done]


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the missing migrations, each in its own transaction, under an advisory lock.

    Several replicas may start at once: the lock makes them take turns, and the
    later ones find nothing left to do. Returns the versions applied here.
    """
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = await applied_migrations(connection)
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration", extra={"version": version, "migration": name})
            applied.append(version)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def migrate_url(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        return await migrate(connection)
    finally:
        await connection.close()


async def prepare_schema(dsn: str, *, apply: bool) -> None:
    """At a service's start: apply the missing migrations (``apply``: EVENTLINE_MIGRATE), or only
    check that none is missing and raise ``SchemaBehind`` naming them: no DDL from this process."""
    if apply:
        await migrate_url(dsn)
        return
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        missing = await missing_migrations(connection)
    finally:
        await connection.close()
    if missing:
        raise SchemaBehind(missing)


def translate(exc: BaseException) -> EventlineError | None:
    """The client-facing error for a driver error, or None when it is a bug."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return AlreadyExists(f"already exists: {exc.constraint_name or 'unique key'}")
    if isinstance(exc, asyncpg.QueryCanceledError):
        return DeadlineExceeded("the query was cancelled: deadline or statement timeout")
    if isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | asyncpg.CannotConnectNowError
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.TooManyConnectionsError
        | asyncpg.AdminShutdownError
        | asyncpg.ConnectionFailureError,
    ):
        return Unavailable("the database is unavailable, retry later")
    return None


class PostgreSQL(Dependency):
    """PostgreSQL, probed with ``SELECT 1`` on a connection of its own (not one of the pool's)."""

    def __init__(self, dsn: str, *, required: bool = True, name: str = POSTGRESQL) -> None:
        super().__init__(name, required=required)
        self.dsn = dsn
        self._connection: asyncpg.Connection | None = None

    async def probe(self) -> None:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            await self._connection.fetchval("SELECT 1")
        except BaseException:
            # Timed out or broken: never reuse a connection in an unknown state.
            self._connection.terminate()
            self._connection = None
            raise

    def explains(self, exc: BaseException) -> bool:
        return isinstance(translate(exc), Unavailable)

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None
