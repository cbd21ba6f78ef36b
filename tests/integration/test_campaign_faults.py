"""Campaign workers killed with kill -9 in the middle of their work: nothing lost, nothing doubled.

The campaign service runs as a real process (python -m eventline_campaigns); the
SMTP server is the test's own aiosmtpd. A message repeated after a crash between
the provider call and the ledger update carries the same Message-ID (the
delivery id), so the receiving side sees one message per Message-ID; the tests
check exactly that: one Message-ID per (customer, trigger event).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.ingestion.v1 import ingestion_pb2

from tests.conftest import SmtpInbox, campaigns_env
from tests.processes import ServiceProcess
from tests.support import customer_event

pytestmark = pytest.mark.slow


def worker(env: dict[str, str], tmp_path) -> ServiceProcess:  # type: ignore[no-untyped-def]
    return ServiceProcess("campaigns", env, tmp_path)


async def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def wait_for_no_pending(redis_client, stream_key: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while (await redis_client.xpending(stream_key, "campaigns"))["pending"]:
        assert time.monotonic() < deadline, "entries stay pending"
        await asyncio.sleep(0.05)


def by_recipient(inbox: SmtpInbox) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for message in inbox.messages:
        found[message["To"]].add(message["Message-ID"])
    return found


async def create_and_activate(address: str, campaign: campaigns_pb2.Campaign) -> str:
    import grpc
    from eventline.campaigns.v1 import campaigns_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
        created = await stub.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
        await stub.ActivateCampaign(
            campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
        )
        return str(created.campaign.campaign_id)


async def test_worker_killed_with_unacknowledged_entries(  # type: ignore[no-untyped-def]
    db_url, stream_key, redis_client, ingestion, segmentation_server, smtp_server, http_provider, tmp_path, db
) -> None:
    customers = 200
    rows = [(f"k{i:03d}", f"k{i:03d}@example.com", 1) for i in range(customers)]
    await db.copy_records_to_table(
        "customers", records=rows, columns=["customer_id", "email", "email_consent"]
    )
    env = campaigns_env(
        db_url,
        stream_key,
        segmentation_server.port,
        smtp_server.port,
        http_provider.port,
        str(tmp_path / "sink"),
        EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="500",
        EVENTLINE_CAMPAIGNS_LEASE_S="1",
        EVENTLINE_CAMPAIGNS_READ_BATCH="20",
    )
    first = worker(env, tmp_path).start()
    try:
        await first.serving()
        await create_and_activate(
            first.address,
            campaigns_pb2.Campaign(
                display_name="Ping",
                trigger=campaigns_pb2.Trigger(
                    customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ping")
                ),
                actions=[
                    campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Pong", text_body="x"))
                ],
            ),
        )
        await asyncio.sleep(0.3)
        await ingestion.TrackEvents(
            ingestion_pb2.TrackEventsRequest(
                events=[
                    ingestion_pb2.TrackEventsItem(customer_event=customer_event(f"k{i:03d}", "Ping", f"p{i}"))
                    for i in range(customers)
                ]
            )
        )
        await wait_until(lambda: len(smtp_server.messages) >= 20, 20, "the first worker sent nothing")
        first.kill()  # kill -9, in the middle of the work
    finally:
        first.kill()
    sent_before = len(smtp_server.messages)
    assert sent_before < customers, "the worker finished before it was killed; the test proves nothing"
    second = worker(env, tmp_path).start()
    try:
        await second.serving()
        await wait_until(
            lambda: len(by_recipient(smtp_server)) == customers, 60, "not every customer got the message"
        )
        await wait_for_no_pending(redis_client, stream_key)
        await asyncio.sleep(1.5)  # leases expire: any extra message would arrive now
        pending = await redis_client.xpending(stream_key, "campaigns")
    finally:
        second.kill()
    assert all(len(ids) == 1 for ids in by_recipient(smtp_server).values()), (
        "a customer got two different messages"
    )
    assert pending["pending"] == 0
    statuses = await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
    assert dict(statuses) == {2: customers}


async def test_fan_out_worker_killed_midway(  # type: ignore[no-untyped-def]
    db_url, stream_key, redis_client, ingestion, segmentation_server, smtp_server, http_provider, tmp_path, db
) -> None:
    customers = 300
    rows = [(f"f{i:03d}", f"f{i:03d}@example.com", 1 if i % 5 else 2) for i in range(customers)]
    await db.copy_records_to_table(
        "customers", records=rows, columns=["customer_id", "email", "email_consent"]
    )
    env = campaigns_env(
        db_url,
        stream_key,
        segmentation_server.port,
        smtp_server.port,
        http_provider.port,
        str(tmp_path / "sink"),
        EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="500",
        EVENTLINE_CAMPAIGNS_LEASE_S="1",
        EVENTLINE_CAMPAIGNS_FANOUT_BATCH="25",
    )
    first = worker(env, tmp_path).start()
    try:
        await first.serving()
        await create_and_activate(
            first.address,
            campaigns_pb2.Campaign(
                display_name="Sale",
                trigger=campaigns_pb2.Trigger(
                    system_event=campaigns_pb2.SystemEventTrigger(event_name="Sale")
                ),
                actions=[
                    campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Sale", text_body="x"))
                ],
            ),
        )
        await asyncio.sleep(0.3)
        await ingestion.TrackSystemEvent(
            ingestion_pb2.TrackSystemEventRequest(event_id="sale-1", name="Sale")
        )
        await wait_until(lambda: len(smtp_server.messages) >= 30, 20, "the first worker sent nothing")
        first.kill()
    finally:
        first.kill()
    assert len(smtp_server.messages) < customers * 4 // 5, "the fan-out finished before the kill"
    second = worker(env, tmp_path).start()
    try:
        await second.serving()
        expected = {f"f{i:03d}@example.com" for i in range(customers) if i % 5}
        await wait_until(
            lambda: set(by_recipient(smtp_server)) == expected, 60, "the fan-out did not complete"
        )
        await wait_for_no_pending(redis_client, stream_key)
        await asyncio.sleep(1.5)
        pending = await redis_client.xpending(stream_key, "campaigns")
    finally:
        second.kill()
    recipients = by_recipient(smtp_server)
    assert set(recipients) == expected
    assert all(len(ids) == 1 for ids in recipients.values()), "a customer got two different messages"
    assert pending["pending"] == 0
    counts = dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status"))
    assert counts == {2: len(expected), 4: customers - len(expected)}
    assert await db.fetchval("SELECT done FROM campaign_fanouts WHERE event_id = 'sale-1'") is True


async def test_sigterm_stops_the_worker_cleanly_and_leaves_nothing_pending(  # type: ignore[no-untyped-def]
    db_url, stream_key, redis_client, ingestion, segmentation_server, smtp_server, http_provider, tmp_path, db
) -> None:
    import signal

    rows = [(f"t{i:03d}", f"t{i:03d}@example.com", 1) for i in range(50)]
    await db.copy_records_to_table(
        "customers", records=rows, columns=["customer_id", "email", "email_consent"]
    )
    env = campaigns_env(
        db_url,
        stream_key,
        segmentation_server.port,
        smtp_server.port,
        http_provider.port,
        str(tmp_path / "sink"),
    )
    process = worker(env, tmp_path).start()
    try:
        await process.serving()
        await create_and_activate(
            process.address,
            campaigns_pb2.Campaign(
                display_name="Ping",
                trigger=campaigns_pb2.Trigger(
                    customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ping")
                ),
                actions=[
                    campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Pong", text_body="x"))
                ],
            ),
        )
        await asyncio.sleep(0.3)
        await ingestion.TrackEvents(
            ingestion_pb2.TrackEventsRequest(
                events=[
                    ingestion_pb2.TrackEventsItem(customer_event=customer_event(f"t{i:03d}", "Ping", f"q{i}"))
                    for i in range(50)
                ]
            )
        )
        await wait_until(lambda: len(smtp_server.messages) >= 5, 20, "the worker sent nothing")
        process.signal(signal.SIGTERM)  # with batches in flight
        assert await process.exited(10) == 0
    finally:
        process.kill()
    # What the worker took, it finished: recorded, sent and acknowledged; the rest waits unread.
    pending = await redis_client.xpending(stream_key, "campaigns")
    assert pending["pending"] == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 1") == 0
    sent = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 2")
    assert sent == len(by_recipient(smtp_server))


@pytest.mark.parametrize("fault", ["campaigns.before_ack", "campaigns.after_send"])
async def test_crash_after_the_provider_call(  # type: ignore[no-untyped-def]
    fault,
    db_url,
    stream_key,
    redis_client,
    ingestion,
    segmentation_server,
    smtp_server,
    http_provider,
    tmp_path,
    db,
) -> None:
    """Crash after the provider call: before the ack there is no second call at all; before the
    ledger update the only repeat carries the same Message-ID (the provider's idempotency key)."""
    customers = 30
    rows = [(f"a{i:03d}", f"a{i:03d}@example.com", 1) for i in range(customers)]
    await db.copy_records_to_table(
        "customers", records=rows, columns=["customer_id", "email", "email_consent"]
    )
    env = campaigns_env(
        db_url,
        stream_key,
        segmentation_server.port,
        smtp_server.port,
        http_provider.port,
        str(tmp_path / "sink"),
        EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="300",
        EVENTLINE_CAMPAIGNS_LEASE_S="1",
    )
    setup = worker(env, tmp_path).start()
    try:
        await setup.serving()
        await create_and_activate(
            setup.address,
            campaigns_pb2.Campaign(
                display_name="Ping",
                trigger=campaigns_pb2.Trigger(
                    customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ping")
                ),
                actions=[
                    campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Pong", text_body="x"))
                ],
            ),
        )
    finally:
        setup.kill()
    # Stored while no worker runs, so that the faulty worker finds them all in one batch.
    await ingestion.TrackEvents(
        ingestion_pb2.TrackEventsRequest(
            events=[
                ingestion_pb2.TrackEventsItem(customer_event=customer_event(f"a{i:03d}", "Ping", f"c{i}"))
                for i in range(customers)
            ]
        )
    )
    # The relay publishes asynchronously: wait until the whole batch is on the stream.
    deadline = time.monotonic() + 10
    while await redis_client.xlen(stream_key) < customers:
        assert time.monotonic() < deadline, "the events did not reach the stream"
        await asyncio.sleep(0.02)
    faulty = worker(env, tmp_path).start(EVENTLINE_FAULTS=f"{fault}=crash")
    assert await faulty.exited(30) == 137
    calls_before = len(smtp_server.messages)
    assert calls_before == customers, "the worker called the provider for the whole batch, then died"
    survivor = worker(env, tmp_path).start()
    try:
        await survivor.serving()
        await wait_for_no_pending(redis_client, stream_key)
        await asyncio.sleep(1.5)  # leases expire: a resend would happen now
    finally:
        survivor.kill()
    recipients = by_recipient(smtp_server)
    assert len(recipients) == customers and all(len(ids) == 1 for ids in recipients.values())
    if fault == "campaigns.before_ack":
        assert len(smtp_server.messages) == customers, "no second provider call"
    assert dict(await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")) == {2: customers}
