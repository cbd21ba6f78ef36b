"""Small helpers for tests: building requests, seeding customers, waiting, reading results."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from tests.conftest import SmtpInbox


def value(v: Any) -> common_pb2.Value:
    if isinstance(v, bool):
        return common_pb2.Value(boolean_value=v)
    if isinstance(v, int):
        return common_pb2.Value(integer_value=v)
    if isinstance(v, str):
        return common_pb2.Value(string_value=v)
    if isinstance(v, dt.datetime):
        out = common_pb2.Value()
        out.timestamp_value.FromDatetime(v)
        return out
    raise TypeError(v)


def customer_event(
    customer_id: str, name: str, event_id: str | None = None, **context: Any
) -> ingestion_pb2.TrackCustomerEventRequest:
    return ingestion_pb2.TrackCustomerEventRequest(
        event_id=event_id or uuid.uuid4().hex,
        customer_id=customer_id,
        name=name,
        context={k: value(v) for k, v in context.items()},
    )


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, by field path."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def wait_for_entries(redis_client, stream_key: str, count: int, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Wait until the relay has published ``count`` entries to the stream."""
    deadline = time.monotonic() + timeout_s
    while await redis_client.xlen(stream_key) < count:
        assert time.monotonic() < deadline, "the relay did not publish in time"
        await asyncio.sleep(0.01)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout_s``.

    ``timeout_s`` is a deadline for a condition that must come, never a measure of
    speed: make it generous (tens of seconds), since a loaded machine is slow, not wrong.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll the coroutine ``check`` (a query, a call) until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def numbered(prefix: str, i: int) -> str:
    """The id of the i-th seeded customer: ``<prefix>0000``…"""
    return f"{prefix}{i:04d}"


async def add_email_customers(
    db: asyncpg.Connection, prefix: str, count: int, consent: Callable[[int], int] = lambda i: 1
) -> list[str]:
    """Customers ``numbered(prefix, i)`` with an e-mail address (and ``consent(i)``); their addresses."""
    rows = [(numbered(prefix, i), f"{numbered(prefix, i)}@example.com", consent(i)) for i in range(count)]
    await db.copy_records_to_table(
        "customers", records=rows, columns=["customer_id", "email", "email_consent"]
    )
    return [address for _, address, _ in rows]


def system_campaign(event_name: str, action: campaigns_pb2.Action) -> campaigns_pb2.Campaign:
    return campaigns_pb2.Campaign(
        display_name=event_name,
        trigger=campaigns_pb2.Trigger(system_event=campaigns_pb2.SystemEventTrigger(event_name=event_name)),
        actions=[action],
    )


def message_ids_by_recipient(inbox: SmtpInbox) -> dict[str, set[str]]:
    """For each address the test SMTP server received mail for: the Message-IDs it got."""
    found: dict[str, set[str]] = {}
    for to, message_id in inbox.addressed:
        found.setdefault(to, set()).add(message_id)
    return found


async def delivery_statuses(db: asyncpg.Connection) -> dict[int, int]:
    """How many deliveries the ledger holds in each status."""
    return dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status"))
