"""``eventline migrate``: apply this release's database migrations before its services start.

By default each service applies missing migrations when it starts. Where services run
with EVENTLINE_MIGRATE=false (a role without DDL rights, many replicas rolling out), this
command is the one step that changes the schema: a Kubernetes Job, the compose ``migrate``
service, a deploy script. It takes the services' advisory lock, so two runs at once, or a
run beside starting services, apply each migration once.

Exit status: 0 when the schema is up to date (after applying what was missing); 1 when the
database cannot be reached, a migration fails, or (``--check``) a migration is missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click

from eventline_cli.client import fail
from eventline_cli.keys import database_url, url_option
from eventline_shared.storage import database

CONNECT_TIMEOUT_S = 10.0


@dataclass
class Outcome:
    applied: list[int] = field(default_factory=list)
    missing: list[tuple[int, str]] = field(default_factory=list)
    unknown: dict[int, str] = field(default_factory=dict)
    """Recorded in the database but not shipped here: a newer release applied them."""
    failed: tuple[int, str, asyncpg.PostgresError] | None = None


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def run(url: str, *, check: bool) -> Outcome:
    connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    outcome = Outcome()
    try:
        if not check:
            before = await database.applied_migrations(connection)
            try:
                outcome.applied = await database.migrate(connection)
            except asyncpg.PostgresError as exc:
                # Each migration is its own transaction: those before the failed one stay applied,
                # and the failed one is the first still missing.
                after = await database.applied_migrations(connection)
                outcome.applied = sorted(set(after) - set(before))
                version, name = (await database.missing_migrations(connection))[0]
                outcome.failed = (version, name, exc)
        outcome.missing = await database.missing_migrations(connection)
        shipped = {version for version, _, _ in database.migrations()}
        recorded = await database.applied_migrations(connection)
        outcome.unknown = {version: name for version, name in recorded.items() if version not in shipped}
    finally:
        await connection.close()
    return outcome


@click.command()
@click.option(
    "--check", is_flag=True, help="Apply nothing; exit 1 and list the missing migrations if there are any."
)
@url_option
def migrate(check: bool, **kwargs: str | None) -> None:
    """Apply the missing database migrations (under the services' advisory lock; safe to repeat)."""
    url = database_url(kwargs.get("database_url"))
    try:
        outcome = asyncio.run(run(url, check=check))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        fail(f"cannot use the database at {shown(url)}: {error}")
    names = {version: name for version, name, _ in database.migrations()}
    for version in outcome.applied:
        click.echo(f"applied {database.migration_label(version, names[version])}")
    if outcome.unknown:
        labels = ", ".join(database.migration_label(v, n) for v, n in sorted(outcome.unknown.items()))
        click.echo(f"note: the database also has migrations this release does not ship: {labels}")
    if outcome.failed is not None:
        version, name, exc = outcome.failed
        fail(
            [
                f"migration {database.migration_label(version, name)} failed: {exc}",
                "  it was rolled back; the migrations before it stay applied",
            ]
        )
    if outcome.missing:
        missing = [database.migration_label(version, name) for version, name in outcome.missing]
        fail(
            [
                f"the schema is behind: {len(missing)} missing migration(s)",
                *(f"  {label}" for label in missing),
            ]
        )
    latest = max(names)
    done = f"{len(outcome.applied)} applied now" if outcome.applied else "nothing to apply"
    click.echo(
        f"schema up to date at {database.migration_label(latest, names[latest])} "
        f"({len(names)} migrations, {done}) in {shown(url)}"
    )
