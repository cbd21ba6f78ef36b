"""``eventline keys create|revoke|list``: API keys, managed directly in PostgreSQL.

Key management needs the database, not an RPC: the first admin key cannot be
created through an API that requires one. The database is EVENTLINE_DATABASE_URL,
else the one a running ``eventline up`` wrote to ``<data dir>/urls.env``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import click
from rich.console import Console
from rich.table import Table

from eventline_cli.client import fail
from eventline_shared.security import api_keys
from eventline_shared.server.config import DEFAULT_DATABASE_URL
from eventline_shared.storage import database

T = TypeVar("T")


def database_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    data_dir = Path(os.environ.get("EVENTLINE_DATA_DIR", "") or ".eventline")
    urls = data_dir / "urls.env"
    if urls.exists():
        for line in urls.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "EVENTLINE_DATABASE_URL" and value.strip():
                return value.strip()
    return DEFAULT_DATABASE_URL


def _run(url: str, action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def main() -> T:
        await database.migrate_url(url)
        connection = await asyncpg.connect(url, timeout=10)
        try:
            return await action(connection)
        finally:
            await connection.close()

    try:
        return asyncio.run(main())
    except (OSError, asyncpg.PostgresError) as exc:
        fail(f"cannot use the database at {url}: {exc}")


url_option = click.option(
    "--database-url",
    envvar="EVENTLINE_DATABASE_URL",
    help="PostgreSQL of the suite (default: EVENTLINE_DATABASE_URL, else the running `eventline up`'s).",
)


@click.group()
def keys() -> None:
    """Create, revoke and list API keys (used when the services run with EVENTLINE_AUTH=true)."""


@keys.command()
@click.option("--name", default="", help="What the key is for, for example the integration's name.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(api_keys.SCOPES),
    help="ingest: Track* and UpsertCustomer; read: Get*/List*; admin: everything. Repeatable.",
)
@url_option
def create(name: str, scopes: tuple[str, ...], **kwargs: str | None) -> None:
    """Create a key and print its token (shown only this once)."""
    url = database_url(kwargs.get("database_url"))
    key, token = _run(url, lambda connection: api_keys.create_key(connection, name, scopes))
    click.echo(f"created key {key.key_id} ({', '.join(key.scopes)}); its token, shown only now:", err=True)
    click.echo(token)


@keys.command()
@click.argument("key_id")
@url_option
def revoke(key_id: str, **kwargs: str | None) -> None:
    """Revoke a key (by id or token); calls with it fail within EVENTLINE_AUTH_CACHE_S seconds."""
    url = database_url(kwargs.get("database_url"))
    if not _run(url, lambda connection: api_keys.revoke_key(connection, key_id)):
        fail(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


@keys.command("list")
@url_option
def list_(**kwargs: str | None) -> None:
    """List keys (never their secrets)."""
    url = database_url(kwargs.get("database_url"))
    found = _run(url, api_keys.list_keys)
    table = Table()
    for column in ("key id", "name", "scopes", "created", "revoked"):
        table.add_column(column)
    for key in found:
        table.add_row(
            key.key_id,
            key.name,
            ", ".join(key.scopes),
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    Console(highlight=False).print(table)
