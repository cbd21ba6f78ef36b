"""Segmentation reads from a real streaming replica; a triggered campaign still sees its event.

The whole suite runs here against a dedicated primary with a hot standby (tests/replica.py):
ingestion and the campaign service on the primary, segmentation with
EVENTLINE_SEGMENTATION_READ_DATABASE_URL on the standby. The standby's replay is paused
to make it lag, as a replica under load or behind a slow network does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.segmentation.v1 import segmentation_pb2 as seg
from prometheus_client import REGISTRY

from eventline_shared.storage import database
from tests.conftest import service_env
from tests.integration.test_campaigns import GRANTED, deliveries, email_campaign, start, upsert
from tests.replica import StreamingReplica, streaming_replica
from tests.support import customer_event, violations, wait_for_events


@pytest.fixture
async def replication() -> AsyncIterator[StreamingReplica]:
    async with streaming_replica() as pair:
        yield pair


@pytest.fixture
async def db_url(replication: StreamingReplica) -> str:
    """This module's database: on the dedicated primary, migrated, and replayed by the standby."""
    name = f"eventline_replica_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(replication.primary.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    primary_url, _ = replication.urls(name)
    await database.migrate_url(primary_url)
    await replication.caught_up()
    return primary_url


@pytest.fixture
async def segmentation_server(db_url: str, stream_key: str, replication: StreamingReplica):  # type: ignore[no-untyped-def]
    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    _, standby_url = replication.urls(db_url.rsplit("/", 1)[1])
    env = service_env(
        db_url, stream_key, EVENTLINE_SEGMENTATION_READ_DATABASE_URL=standby_url, EVENTLINE_MIGRATE="false"
    )
    async with running(Settings.from_env(env)) as served:
        yield served


def matches_on_primary() -> float:
    return REGISTRY.get_sample_value("eventline_segmentation_matches_on_primary_total") or 0.0


PURCHASED = seg.Filter(event=seg.EventCondition(name="Purchased"))
"""Customers who purchased at least once: the audience of a campaign triggered by a purchase."""


async def test_a_triggered_campaign_sees_its_event_while_the_replica_lags(  # type: ignore[no-untyped-def]
    replication, campaigns, campaigns_server, ingestion, segmentation, redis_client, stream_key, smtp_server
) -> None:
    await upsert(ingestion, "buyer", email="buyer@example.com", email_consent=GRANTED)
    campaign_id = await start(
        campaigns, email_campaign(event_name="Purchased", text="Thanks", audience=PURCHASED)
    )
    await replication.caught_up()
    await replication.pause()

    await ingestion.TrackCustomerEvent(customer_event("buyer", "Purchased", "p1"))
    await wait_for_events(redis_client, stream_key, "p1")

    # Reads go to the replica, which has not replayed the purchase: it sees no buyer yet.
    assert (await segmentation.CountCustomers(seg.CountCustomersRequest(filter=PURCHASED))).count == 0
    stale = await segmentation.MatchCustomer(seg.MatchCustomerRequest(filter=PURCHASED, customer_id="buyer"))
    assert stale.matched is False
    # The campaign's match names its trigger event, so it is evaluated on the primary.
    before = matches_on_primary()
    await campaigns_server.consumer.drain()
    (recorded,) = await deliveries(campaigns, campaign_id=campaign_id)
    assert recorded.status != campaigns_pb2.DELIVERY_STATUS_SKIPPED, recorded.reason
    await smtp_server.wait_for(1)
    (delivery,) = await deliveries(campaigns, campaign_id=campaign_id)
    assert (delivery.event_id, delivery.status) == ("p1", campaigns_pb2.DELIVERY_STATUS_SENT)
    assert matches_on_primary() == before + 1

    # Once the replica catches up, the same reads (and matches naming the event) are answered there.
    await replication.resume()
    await replication.caught_up()
    assert (await segmentation.CountCustomers(seg.CountCustomersRequest(filter=PURCHASED))).count == 1
    fresh = await segmentation.MatchCustomer(
        seg.MatchCustomerRequest(filter=PURCHASED, customer_id="buyer", required_event_ids=["p1"])
    )
    assert fresh.matched is True
    assert matches_on_primary() == before + 1


async def test_saved_segments_are_written_to_and_read_from_the_primary(  # type: ignore[no-untyped-def]
    replication, segmentation, db_url
) -> None:
    """A segment saved while the replica lags is found at once, and its size comes from the replica."""
    await replication.pause()
    created = await segmentation.CreateSegment(
        seg.CreateSegmentRequest(
            segment_id="buyers", segment=seg.Segment(display_name="Buyers", filter=PURCHASED)
        )
    )
    got = await segmentation.GetSegment(seg.GetSegmentRequest(segment_id="buyers"))
    assert got.segment == created.segment
    standby_has = await _standby_value(replication, db_url, "SELECT count(*) FROM segments")
    assert standby_has == 0  # written to the primary only: the paused standby has not seen it
    size = await segmentation.GetSegmentSize(seg.GetSegmentSizeRequest(segment_id="buyers"))
    assert size.size == 0
    await replication.resume()


async def test_required_event_ids_are_checked(segmentation) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await segmentation.MatchCustomer(
            seg.MatchCustomerRequest(filter=PURCHASED, customer_id="c", required_event_ids=["ok", "bad id"])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(refused.value)) == ["required_event_ids[1]"]
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await segmentation.MatchCustomer(
            seg.MatchCustomerRequest(
                filter=PURCHASED, customer_id="c", required_event_ids=[f"e{i}" for i in range(101)]
            )
        )
    assert list(violations(too_many.value)) == ["required_event_ids"]


async def _standby_value(replication: StreamingReplica, db_url: str, sql: str) -> object:
    _, standby_url = replication.urls(db_url.rsplit("/", 1)[1])
    connection = await asyncpg.connect(standby_url)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()
