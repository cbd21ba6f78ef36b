"""A PostgreSQL primary and a hot standby streaming from it, on loopback, for read-replica tests.

Both run from the system's PostgreSQL binaries (``find_postgres_bin``, as the embedded
servers do). The primary is dedicated to the test rather than the machine's server,
whose pg_hba.conf allows no replication connections (and whose WAL a paused standby
would hold back for everyone). The standby is a ``pg_basebackup -R`` of it: a real
streaming replica, whose replay the test can pause to make it lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from eventline_shared.dev.embedded import EmbeddedPostgres, find_postgres_bin, with_database
from tests.support import eventually, server_data_dir


class StreamingReplica:
    """``primary`` and its ``standby``; URLs name the maintenance database unless given one."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self._logs = [open(base / f"{name}.log", "ab") for name in ("primary", "standby")]
        self.primary = EmbeddedPostgres(
            "postgresql-primary", base / "primary", log_file=self._logs[0], durable=False
        )
        self.standby = EmbeddedPostgres(
            "postgresql-standby", base / "standby", log_file=self._logs[1], durable=False
        )

    async def start(self) -> None:
        await self.primary.start()
        backup = await asyncio.create_subprocess_exec(
            str(find_postgres_bin() / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
            *("-D", str(self.standby.data_dir), "-R", "-X", "stream", "-c", "fast"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await backup.communicate()
        assert backup.returncode == 0, f"pg_basebackup failed: {output.decode(errors='replace')}"
        await self.standby.start()  # standby.signal and primary_conninfo were written by -R
        assert await self._standby_fetch("SELECT pg_is_in_recovery()") is True

    async def stop(self) -> None:
        await self.standby.stop()
        await self.primary.stop()
        for log in self._logs:
            log.close()

    def urls(self, database: str) -> tuple[str, str]:
        """(primary, standby) URLs of ``database``."""
        return with_database(self.primary.url, database), with_database(self.standby.url, database)

    async def _standby_fetch(self, sql: str, *args: object) -> object:
        connection = await asyncpg.connect(self.standby.url)
        try:
            return await connection.fetchval(sql, *args)
        finally:
            await connection.close()

    async def caught_up(self) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        connection = await asyncpg.connect(self.primary.url)
        try:
            # The insert position, not pg_current_wal_lsn() (the write position): the primary runs
            # with synchronous_commit off, so a commit just acknowledged may not be written yet, and
            # a standby "caught up" to the write position could miss it (seen under load).
            written = await connection.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        finally:
            await connection.close()

        async def replayed() -> bool:
            return bool(await self._standby_fetch("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", written))

        await eventually(replayed, 120, "the standby did not replay the primary's WAL")

    async def pause(self) -> None:
        """Stop the standby's replay (it keeps receiving WAL): from now on it lags."""
        await self._standby_fetch("SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            return await self._standby_fetch("SELECT pg_get_wal_replay_pause_state()") == "paused"

        await eventually(paused, 120, "the standby's replay did not pause")

    async def resume(self) -> None:
        await self._standby_fetch("SELECT pg_wal_replay_resume()")


@contextlib.asynccontextmanager
async def streaming_replica() -> AsyncIterator[StreamingReplica]:
    """The pair, in a folder of its own outside pytest's tmp_path (``server_data_dir``), removed after."""
    with server_data_dir("eventline-replica-") as base:
        pair = StreamingReplica(base)
        try:
            await pair.start()
            yield pair
        finally:
            await pair.stop()
