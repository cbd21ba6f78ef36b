"""Small helpers for tests: building requests, seeding customers, waiting, reading results."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventline_shared.streams import stream
from eventline_shared.streams.stream import StreamEntry

if TYPE_CHECKING:
    from tests.conftest import SmtpInbox


@contextlib.contextmanager
def server_data_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder for a server's data, outside pytest's tmp_path, removed afterwards.

    As root, PostgreSQL runs as another user that must traverse every parent of its data
    folder, and every pytest session that starts resets /tmp/pytest-of-<user> to mode 0700:
    a folder under tmp_path becomes unreachable to it whenever another session starts.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def value(v: Any) -> common_pb2.Value:
    if isinstance(v, bool):
        return common_pb2.Value(boolean_value=v)
    if isinstance(v, int):
        return common_pb2.Value(integer_value=v)
    if isinstance(v, Decimal):
        return common_pb2.Value(decimal_value=str(v))
    if isinstance(v, str):
        return common_pb2.Value(string_value=v)
    if isinstance(v, dt.datetime):
        out = common_pb2.Value()
        out.timestamp_value.FromDatetime(v)
        return out
    raise TypeError(v)


def attribute_equals(code: str, text: str) -> segmentation_pb2.Filter:
    """A filter: the customer's attribute ``code`` equals the string ``text``."""
    return segmentation_pb2.Filter(
        customer=segmentation_pb2.CustomerCondition(
            attribute=segmentation_pb2.Predicate(
                field=code,
                operator=segmentation_pb2.OPERATOR_EQUALS,
                value=segmentation_pb2.Operand(literal=common_pb2.Value(string_value=text)),
            )
        )
    )


def customer_event(
    customer_id: str, name: str, event_id: str | None = None, **context: Any
) -> ingestion_pb2.TrackCustomerEventRequest:
    return ingestion_pb2.TrackCustomerEventRequest(
        event_id=event_id or uuid.uuid4().hex,
        customer_id=customer_id,
        name=name,
        context={k: value(v) for k, v in context.items()},
    )


def packed_entry(customer_id: str, event_id: str, name: str = "A") -> bytes:
    """A stream entry of a customer event, packed for ``stream.Appender`` (no service needed)."""
    payload = common_pb2.Event(
        event_id=event_id, kind=common_pb2.EVENT_KIND_CUSTOMER, customer_id=customer_id, name=name
    ).SerializeToString()
    return stream.pack_entry(customer_id, event_id, name, payload, "")


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


def plan_scans(plan: Any) -> dict[str, list[str]]:
    """The node types that read each table in an EXPLAIN (FORMAT JSON) plan, in plan order (a
    table read twice is listed twice)."""
    found: dict[str, list[str]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            found.setdefault(node["Relation Name"], []).append(node["Node Type"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def wait_for_entries(redis_client, stream_key: str, count: int, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Wait until the relay has published ``count`` entries to the stream."""
    deadline = time.monotonic() + timeout_s
    while await redis_client.xlen(stream_key) < count:
        assert time.monotonic() < deadline, "the relay did not publish in time"
        await asyncio.sleep(0.01)


async def wait_for_events(redis_client, stream_key: str, *event_ids: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Wait until the relay has published these events to the stream.

    By event id, not by a count of entries: other events (an unsubscribe's ``unsubscribed``,
    a system event) may be in the stream too and reach a count before these are published.
    """
    wanted = set(event_ids)
    deadline = time.monotonic() + timeout_s
    while not wanted <= {
        StreamEntry.from_fields(i, f).event_id for i, f in await redis_client.xrange(stream_key)
    }:
        assert time.monotonic() < deadline, f"the relay did not publish {sorted(wanted)} in time"
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


async def session_waits_for_a_lock(db: asyncpg.Connection, what: str, timeout_s: float = 60) -> None:
    """Wait until a session of ``db``'s database waits for a lock (a row's, a key's, a transaction's).
    ``db`` may be in a transaction: the sessions' states are read afresh each time, not from the
    snapshot PostgreSQL keeps for the rest of a transaction."""

    async def waiting() -> bool:
        await db.execute("SELECT pg_stat_clear_snapshot()")
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
        )

    await eventually(waiting, timeout_s, what)


async def outbox_drained(db: asyncpg.Connection, timeout_s: float = 60) -> None:
    """Wait until the relay has published (and deleted) every outbox row."""

    async def empty() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM event_outbox") == 0)

    await eventually(empty, timeout_s, "the outbox never drained")


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
    """For each address the test SMTP server received mail for: the Message-IDs it got (a copy).

    Cheap enough to poll: the inbox indexed the headers as the messages arrived."""
    return {recipient: set(ids) for recipient, ids in inbox.ids_by_recipient.items()}


async def delivery_statuses(db: asyncpg.Connection) -> dict[int, int]:
    """How many deliveries the ledger holds in each status."""
    return dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status"))


class Sender:
    """One active e-mail campaign and a way to trigger it for a customer and wait for its delivery."""

    def __init__(
        self, campaigns: Any, ingestion: Any, server: Any, redis_client: Any, stream_key: str
    ) -> None:
        self.campaigns, self.ingestion, self.server = campaigns, ingestion, server
        self.redis_client, self.stream_key = redis_client, stream_key
        self.triggered = 0

    async def start(self, action: campaigns_pb2.Action | None = None, transactional: bool = False) -> str:
        """Create and activate the campaign: an e-mail unless ``action`` says otherwise."""
        campaign = campaigns_pb2.Campaign(
            display_name="Back in stock",
            trigger=campaigns_pb2.Trigger(
                customer_event=campaigns_pb2.CustomerEventTrigger(event_name="item_watched")
            ),
            transactional=transactional,
            actions=[
                action
                or campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Hi", text_body="Back!"))
            ],
        )
        created = await self.campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
        await self.campaigns.ActivateCampaign(
            campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
        )
        self.campaign_id = created.campaign.campaign_id
        return str(self.campaign_id)

    async def trigger(self, customer_id: str) -> campaigns_pb2.Delivery:
        """Trigger the campaign for a customer; its delivery once recorded and finished."""
        self.triggered += 1
        event_id = f"watch-{self.triggered}"
        await self.ingestion.TrackCustomerEvent(customer_event(customer_id, "item_watched", event_id))
        await wait_for_events(self.redis_client, self.stream_key, event_id)
        await self.server.consumer.drain()
        reply = await self.campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(event_id=event_id))
        [delivery] = reply.deliveries
        return delivery


async def upsert_contact(ingestion: Any, customer_id: str, email: str = "", phone: str = "") -> None:
    """A customer with this e-mail address (or phone number) who consents to e-mail and SMS."""
    granted = common_pb2.CONSENT_GRANTED
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id=customer_id, email=email, phone=phone, email_consent=granted, sms_consent=granted
            )
        )
    )
