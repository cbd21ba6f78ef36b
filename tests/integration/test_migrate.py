"""Explicit migrations: ``eventline migrate`` and services started with EVENTLINE_MIGRATE=false.

Real PostgreSQL throughout; the command runs as a process, as a deploy step runs it. A
database "behind" is one an older release migrated: every shipped migration but the latest,
applied by the real runner.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest
import redis.asyncio as redis
from click.testing import CliRunner

from eventline_cli.main import cli
from eventline_shared.environment import ConfigError
from eventline_shared.server.config import CommonSettings
from eventline_shared.storage import database
from tests.conftest import _admin, database_url, service_env
from tests.processes import ROOT

SHIPPED = [(version, name) for version, name, _ in database.migrations()]
LABELS = [database.migration_label(version, name) for version, name in SHIPPED]
LATEST_VERSION, LATEST_NAME = SHIPPED[-1]


async def eventline_migrate(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``eventline migrate`` as a process of its own (the console script's module)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventline_cli",
        "migrate",
        "--database-url",
        url,
        *args,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess([], process.returncode, stdout.decode(), stderr.decode())


async def recorded(url: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        return sorted(await database.applied_migrations(connection))
    finally:
        await connection.close()


async def test_migrate_applies_every_migration_once_and_a_second_run_has_nothing_to_do(
    empty_url: str,
) -> None:
    first = await eventline_migrate(empty_url)
    assert first.returncode == 0, first.stderr
    assert [line.removeprefix("applied ") for line in first.stdout.splitlines()[:-1]] == LABELS
    assert f"schema up to date at {LABELS[-1]}" in first.stdout
    assert await recorded(empty_url) == [version for version, _ in SHIPPED]

    again = await eventline_migrate(empty_url)
    assert again.returncode == 0, again.stderr
    assert "applied" not in again.stdout.replace("applied now", "")
    assert "nothing to apply" in again.stdout
    checked = await eventline_migrate(empty_url, "--check")
    assert checked.returncode == 0, checked.stderr


async def test_check_lists_what_is_missing_applies_nothing_and_fails(empty_url: str) -> None:
    checked = await eventline_migrate(empty_url, "--check")
    assert checked.returncode == 1
    assert f"{len(SHIPPED)} missing migration(s)" in checked.stderr
    assert [line.strip() for line in checked.stderr.splitlines()[1:]] == LABELS
    assert await recorded(empty_url) == []  # not even the bookkeeping table


async def test_two_runs_at_once_apply_each_migration_once(empty_url: str) -> None:
    runs = await asyncio.gather(eventline_migrate(empty_url), eventline_migrate(empty_url))
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    applied = [line for run in runs for line in run.stdout.splitlines() if line.startswith("applied ")]
    assert sorted(line.removeprefix("applied ") for line in applied) == LABELS


async def test_a_failing_migration_is_named_rolled_back_and_the_exit_status_says_so(
    behind_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = database.migrations()
    broken = (9999, "broken", "CREATE TABLE half_done (id int); SELECT 1 / 0;")
    monkeypatch.setattr(database, "migrations", lambda: [*shipped, broken])
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["migrate", "--database-url", behind_url], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"applied {LABELS[-1]}"]  # the one before it stays applied
    assert "migration 9999_broken failed: division by zero" in result.stderr
    assert "schema up to date" not in result.stdout
    assert await recorded(behind_url) == [version for version, _ in SHIPPED]
    connection = await asyncpg.connect(behind_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await connection.close()


async def test_an_unreachable_database_is_a_clear_error_without_its_password() -> None:
    url = "postgresql://eventline:s3cret@127.0.0.1:1/eventline"
    failed = await eventline_migrate(url)
    assert failed.returncode == 1
    assert "cannot use the database at postgresql://eventline:***@127.0.0.1:1/eventline" in failed.stderr
    assert "s3cret" not in failed.stderr + failed.stdout


def test_eventline_migrate_is_a_boolean_that_defaults_to_true() -> None:
    assert CommonSettings.from_env({}, "ingestion", 50051).migrate is True
    assert CommonSettings.from_env({"EVENTLINE_MIGRATE": "false"}, "ingestion", 50051).migrate is False
    with pytest.raises(ConfigError, match="EVENTLINE_MIGRATE must be true or false"):
        CommonSettings.from_env({"EVENTLINE_MIGRATE": "later"}, "ingestion", 50051)


@pytest.mark.parametrize("service", ["ingestion", "segmentation", "campaigns"])
async def test_without_migrate_a_service_refuses_a_schema_behind_and_changes_nothing(
    service: str, behind_url: str, stream_key: str, redis_client: redis.Redis
) -> None:
    served = importlib.import_module(f"eventline_{service}.service")
    settings = importlib.import_module(f"eventline_{service}.settings")
    env = service_env(behind_url, stream_key, EVENTLINE_MIGRATE="false")
    with pytest.raises(database.SchemaBehind) as refused:
        async with served.running(settings.Settings.from_env(env)):
            pytest.fail(f"{service} served on a schema behind its code")
    assert refused.value.missing == [(LATEST_VERSION, LATEST_NAME)]
    assert f"missing migration {LABELS[-1]}" in str(refused.value)
    assert LATEST_VERSION not in await recorded(behind_url)  # no DDL from the service


async def test_without_migrate_a_service_on_an_empty_database_names_every_missing_migration(
    empty_url: str, stream_key: str, redis_client: redis.Redis
) -> None:
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    env = service_env(empty_url, stream_key, EVENTLINE_MIGRATE="false")
    with pytest.raises(database.SchemaBehind) as refused:
        async with running(Settings.from_env(env)):
            pytest.fail("segmentation served without a schema")
    assert [database.migration_label(*missing) for missing in refused.value.missing] == LABELS
    assert await recorded(empty_url) == []


async def test_by_default_a_service_still_migrates_at_start(
    behind_url: str, stream_key: str, redis_client: redis.Redis
) -> None:
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    async with running(Settings.from_env(service_env(behind_url, stream_key)), relay=False):
        assert await recorded(behind_url) == [version for version, _ in SHIPPED]


async def test_replicas_starting_together_migrate_once():
    # A name of this run's own: a fixed one was dropped by other runs on the same server.
    name = f"eventline_test_migrate_race_{uuid.uuid4().hex[:12]}"
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        results = await asyncio.gather(*(database.migrate_url(database_url(name)) for _ in range(4)))
        applied = [version for result in results for version in result]
        expected = [version for version, _, _ in database.migrations()]
        assert sorted(applied) == expected  # each migration applied exactly once, by someone
        connection = await asyncpg.connect(database_url(name))
        try:
            rows = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await connection.close()
        assert [r["version"] for r in rows] == expected
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
