"""The Python client (clients/python, eventline_client) against the whole suite as processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
from typing import Any

import asyncpg
import grpc
import pytest

from eventline_client import (
    AsyncClient,
    Client,
    CustomerEvent,
    InvalidArgumentError,
    PermissionDeniedError,
    Refused,
    RetryPolicy,
    SystemEvent,
    Tls,
    Tracked,
    UnauthenticatedError,
    UnavailableError,
    from_context,
    from_timestamp,
)
from eventline_shared.security import api_keys
from tests.certificates import Certificates
from tests.e2e.conftest import StartSuite, assert_each_event_once, through_a_cut_connection

pytestmark = pytest.mark.slow


async def test_track_reads_back_every_kind_of_value_and_repeats_are_deduplicated(
    start_suite: StartSuite,
) -> None:
    when = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    context = {
        "sku": "A-1",
        "quantity": 2**62,
        "total": decimal.Decimal("59.90"),
        "ratio": 0.1,
        "gift": True,
        "ships_at": when,
    }
    async with start_suite() as suite, AsyncClient(suite.target) as client:
        first = await client.track("c1", "order_placed", context, when, event_id="order-1")
        again = await client.track("c1", "order_placed", context, when, event_id="order-1")
        generated = await client.track("c1", "viewed")
        system = await client.track_system("back_in_stock", {"sku": "A-1"})
        customer = await client.upsert_customer("c1", email="c1@example.com", email_consent=True)
        timeline = [event async for event in client.timeline("c1", page_size=1)]

    assert not first.deduplicated and again.deduplicated and again.event == first.event
    assert from_timestamp(first.event.occurred_at) == when
    assert from_context(first.event.context) == {**context, "ratio": decimal.Decimal("0.1")}
    assert len(generated.event_id) == 32 and generated.event_id != system.event_id
    assert customer.email == "c1@example.com" and customer.email_consent == 1
    assert [event.event_id for event in timeline] == [generated.event_id, "order-1"]


async def test_50000_events_through_a_cut_connection_arrive_once_and_in_order(
    start_suite: StartSuite, db: asyncpg.Connection, redis_client: Any, stream_key: str
) -> None:
    """track_many of 50,000 events while every connection is cut in the middle: each event
    is stored exactly once, published once, and the outcomes are in input order."""
    events = [CustomerEvent(f"c{i % 500}", "page_viewed", {"seq": i}) for i in range(50_000)]
    retry = RetryPolicy(attempts=20, max_backoff_s=1.0)

    async def send(target: str) -> list[Any]:
        async with AsyncClient(target, retry=retry) as client:
            return await client.track_many(events)

    async with start_suite() as suite:
        outcomes = await through_a_cut_connection(suite, db, send)
        assert len(outcomes) == 50_000
        assert all(isinstance(outcome, Tracked) for outcome in outcomes)
        seqs = [outcome.event.context["seq"].integer_value for outcome in outcomes]
        assert seqs == list(range(50_000))
        await assert_each_event_once(db, redis_client, stream_key, [outcome.event_id for outcome in outcomes])


async def test_invalid_events_raise_typed_errors_with_field_paths(start_suite: StartSuite) -> None:
    async with start_suite() as suite, AsyncClient(suite.target) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            await client.track("c1", "page viewed", {"item-id": "A-1"})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(refused.value.fields) == {"name", 'context["item-id"]'}
        assert not refused.value.retryable

        outcomes = await client.track_many(
            [
                CustomerEvent("c1", "ok_event", event_id="good-1"),
                CustomerEvent("c1", "bad name", {"ok": 1}, event_id="bad-1"),
                SystemEvent("ok_system", {"bad-code": True}, event_id="bad-2"),
                CustomerEvent("c2", "ok_event", event_id="good-2"),
            ]
        )
    assert [outcome.ok for outcome in outcomes] == [True, False, False, True]
    bad_name, bad_code = outcomes[1], outcomes[2]
    assert isinstance(bad_name, Refused) and isinstance(bad_code, Refused)
    assert bad_name.event_id == "bad-1" and isinstance(bad_name.error, InvalidArgumentError)
    assert set(bad_name.error.fields) == {"name"}  # relative to the event, not to the batch
    assert set(bad_code.error.fields) == {'context["bad-code"]'}


async def test_api_keys_and_tls(
    start_suite: StartSuite, db: asyncpg.Connection, certificates: Certificates
) -> None:
    _, ingest = await api_keys.create_key(db, "shop", ["ingest"])
    _, read = await api_keys.create_key(db, "dashboard", ["read"])
    _, service = await api_keys.create_key(db, "campaigns", ["read"])
    tls = Tls.from_files(ca=certificates.ca)
    settings = {
        "EVENTLINE_AUTH": "true",
        "EVENTLINE_TLS_CERT": str(certificates.server_cert),
        "EVENTLINE_TLS_KEY": str(certificates.server_key),
        "EVENTLINE_TLS_CA": str(certificates.ca),
        "EVENTLINE_SERVICE_API_KEY": service,
    }
    credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
    async with start_suite(credentials, **settings) as suite:
        async with AsyncClient(suite.target, tls=tls) as anonymous:
            with pytest.raises(UnauthenticatedError):
                await anonymous.track("c1", "viewed")
        async with AsyncClient(suite.target, tls=tls, api_key=read) as reader:
            with pytest.raises(PermissionDeniedError):
                await reader.track("c1", "viewed")
        async with AsyncClient(suite.target, tls=tls, api_key=ingest) as shop:
            tracked = await shop.track("c1", "viewed", event_id="v1")
            [outcome] = await shop.track_many([CustomerEvent("c1", "viewed", event_id="v2")])
        assert tracked.event.event_id == "v1" and outcome.ok
        # A server certificate from a CA the client does not trust is refused, as is plaintext.
        untrusted = Tls.from_files(ca=certificates.other_ca)
        single = RetryPolicy(attempts=1)
        async with AsyncClient(suite.target, tls=untrusted, api_key=ingest, retry=single) as wrong:
            with pytest.raises(UnavailableError):
                await wrong.track("c1", "viewed")
        async with AsyncClient(suite.target, api_key=ingest, retry=single, channel_retries=0) as plain:
            with pytest.raises(UnavailableError):
                await plain.track("c1", "viewed")


async def test_mutual_tls_and_the_blocking_client(
    start_suite: StartSuite, db: asyncpg.Connection, certificates: Certificates
) -> None:
    settings = {
        "EVENTLINE_TLS_CERT": str(certificates.server_cert),
        "EVENTLINE_TLS_KEY": str(certificates.server_key),
        "EVENTLINE_TLS_CLIENT_CA": str(certificates.ca),
        "EVENTLINE_TLS_CA": str(certificates.ca),
    }
    credentials = grpc.ssl_channel_credentials(
        certificates.ca.read_bytes(),
        certificates.client_key.read_bytes(),
        certificates.client_cert.read_bytes(),
    )
    mutual = Tls.from_files(certificates.ca, certificates.client_cert, certificates.client_key)
    async with start_suite(credentials, **settings) as suite:

        def blocking_calls() -> tuple[Tracked, list[Any], list[str]]:
            with Client(suite.target, tls=mutual) as client:
                tracked = client.track("c1", "viewed", {"page": "/"}, event_id="v1")
                outcomes = client.track_many(CustomerEvent("c1", "clicked", {"n": i}) for i in range(3))
                names = [event.name for event in client.timeline("c1")]
            return tracked, outcomes, names

        tracked, outcomes, names = await asyncio.to_thread(blocking_calls)
        assert tracked.event_id == "v1" and [o.ok for o in outcomes] == [True] * 3
        assert sorted(names) == ["clicked", "clicked", "clicked", "viewed"]
        without_certificate = Tls.from_files(ca=certificates.ca)
        async with AsyncClient(
            suite.target, tls=without_certificate, retry=RetryPolicy(attempts=1)
        ) as client:
            with pytest.raises(UnavailableError):
                await client.track("c1", "viewed")
    stored = await db.fetchval("SELECT context FROM customer_events WHERE event_id = 'v1'")
    assert json.loads(stored) == {"page": "/"}
