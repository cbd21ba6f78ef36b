"""Suppression: provider reports on the ledger, bounces and complaints suppressing addresses,
suppressed deliveries skipped with the reason, the suppression API and CLI (real PostgreSQL,
Redis, segmentation, SMTP server and campaign service)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import grpc
import pytest
from click.testing import CliRunner
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_campaigns import repository
from eventline_cli.main import cli
from tests.support import Sender, plan_scans, upsert_contact, violations

GRANTED = common_pb2.CONSENT_GRANTED
EMAIL = campaigns_pb2.CHANNEL_EMAIL
SMS = campaigns_pb2.CHANNEL_SMS
Kind = campaigns_pb2.DeliveryEventKind


@pytest.fixture
async def sender(campaigns, ingestion, campaigns_server, redis_client, stream_key) -> Sender:  # type: ignore[no-untyped-def]
    found = Sender(campaigns, ingestion, campaigns_server, redis_client, stream_key)
    await found.start()
    return found


def report(delivery_id: str, kind: int, **fields: Any) -> campaigns_pb2.DeliveryEvent:
    return campaigns_pb2.DeliveryEvent(delivery_id=delivery_id, kind=kind, **fields)  # type: ignore[arg-type]


async def test_a_hard_bounce_suppresses_the_address_and_the_next_delivery_is_skipped(  # type: ignore[no-untyped-def]
    campaigns, sender: Sender, ingestion, smtp_server
) -> None:
    await upsert_contact(ingestion, "c1", "Bouncy@Example.com")
    first = await sender.trigger("c1")
    assert first.status == campaigns_pb2.DELIVERY_STATUS_SENT
    await smtp_server.wait_for(1)
    recorded = await campaigns.RecordDeliveryEvents(
        campaigns_pb2.RecordDeliveryEventsRequest(
            events=[
                report(first.delivery_id, Kind.DELIVERY_EVENT_KIND_DELIVERED, provider_event_id="p-1"),
                report(
                    first.delivery_id,
                    Kind.DELIVERY_EVENT_KIND_BOUNCED_HARD,
                    provider_event_id="p-2",
                    detail="550 5.1.1 no such user",
                ),
                report("999999", Kind.DELIVERY_EVENT_KIND_OPENED),  # not ours
            ]
        )
    )
    assert (recorded.recorded, recorded.unmatched, recorded.duplicates, recorded.suppressed) == (2, 1, 0, 1)
    again = await campaigns.RecordDeliveryEvents(  # the provider retries its webhook
        campaigns_pb2.RecordDeliveryEventsRequest(
            events=[report(first.delivery_id, Kind.DELIVERY_EVENT_KIND_BOUNCED_HARD, provider_event_id="p-2")]
        )
    )
    assert (again.recorded, again.duplicates, again.suppressed) == (0, 1, 0)

    [shown] = (
        await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(customer_id="c1"))
    ).deliveries
    assert [e.kind for e in shown.events] == [
        Kind.DELIVERY_EVENT_KIND_DELIVERED,
        Kind.DELIVERY_EVENT_KIND_BOUNCED_HARD,
    ]
    assert shown.events[1].detail == "550 5.1.1 no such user"
    assert shown.events[1].recipient == "bouncy@example.com"
    [suppression] = (await campaigns.ListSuppressions(campaigns_pb2.ListSuppressionsRequest())).suppressions
    assert suppression.address == "bouncy@example.com" and suppression.channel == EMAIL
    assert suppression.reason == campaigns_pb2.SUPPRESSION_REASON_HARD_BOUNCE
    assert suppression.delivery_id == first.delivery_id

    second = await sender.trigger("c1")
    assert second.status == campaigns_pb2.DELIVERY_STATUS_SKIPPED
    assert second.reason == "suppressed: hard bounce"
    stats = await campaigns.GetCampaignStats(
        campaigns_pb2.GetCampaignStatsRequest(campaign_id=sender.campaign_id)
    )
    assert (stats.sent, stats.skipped, stats.delivered, stats.bounced) == (1, 1, 1, 1)
    assert stats.reasons["suppressed: hard bounce"] == 1

    await campaigns.DeleteSuppression(
        campaigns_pb2.DeleteSuppressionRequest(channel=EMAIL, address="BOUNCY@example.com")
    )
    third = await sender.trigger("c1")
    assert third.status == campaigns_pb2.DELIVERY_STATUS_SENT
    await smtp_server.wait_for(2)
    assert len(smtp_server.messages) == 2


async def test_soft_bounces_suppress_after_three_and_a_complaint_at_once(  # type: ignore[no-untyped-def]
    campaigns, sender: Sender, ingestion
) -> None:
    await upsert_contact(ingestion, "soft", "soft@example.com")
    await upsert_contact(ingestion, "angry", "angry@example.com")
    delivery = await sender.trigger("soft")
    for n in range(1, 4):
        reply = await campaigns.RecordDeliveryEvents(
            campaigns_pb2.RecordDeliveryEventsRequest(
                events=[
                    report(
                        delivery.delivery_id,
                        Kind.DELIVERY_EVENT_KIND_BOUNCED_SOFT,
                        provider_event_id=f"soft-{n}",
                        detail="452 mailbox full",
                    )
                ]
            )
        )
        assert reply.suppressed == (1 if n == 3 else 0), f"after {n} soft bounces"
    [soft] = (
        await campaigns.ListSuppressions(campaigns_pb2.ListSuppressionsRequest(channel=EMAIL))
    ).suppressions
    assert soft.reason == campaigns_pb2.SUPPRESSION_REASON_SOFT_BOUNCES and "3 soft bounces" in soft.detail
    assert (await sender.trigger("soft")).reason == "suppressed: soft bounces"

    # Lifted by hand, the address starts counting again: one more soft bounce does not suppress it.
    await campaigns.DeleteSuppression(
        campaigns_pb2.DeleteSuppressionRequest(channel=EMAIL, address="soft@example.com")
    )
    reply = await campaigns.RecordDeliveryEvents(
        campaigns_pb2.RecordDeliveryEventsRequest(
            events=[
                report(
                    delivery.delivery_id, Kind.DELIVERY_EVENT_KIND_BOUNCED_SOFT, provider_event_id="soft-4"
                )
            ]
        )
    )
    assert reply.suppressed == 0
    assert (await sender.trigger("soft")).status == campaigns_pb2.DELIVERY_STATUS_SENT

    angry = await sender.trigger("angry")
    reply = await campaigns.RecordDeliveryEvents(
        campaigns_pb2.RecordDeliveryEventsRequest(
            events=[report(angry.delivery_id, Kind.DELIVERY_EVENT_KIND_COMPLAINED)]
        )
    )
    assert reply.suppressed == 1
    skipped = await sender.trigger("angry")
    assert (skipped.status, skipped.reason) == (
        campaigns_pb2.DELIVERY_STATUS_SKIPPED,
        "suppressed: complaint",
    )


async def test_concurrent_reports_share_a_commit_and_each_call_gets_its_own_outcome(  # type: ignore[no-untyped-def]
    campaigns, sender: Sender, ingestion, db
) -> None:
    """Calls that arrive together are recorded in one statement (a group commit); each is
    still answered on its own: its own counts, its own replay check, the first of several
    reports with one provider event id recorded and the others duplicates."""
    await upsert_contact(ingestion, "busy", "busy@example.com")
    delivery = (await sender.trigger("busy")).delivery_id
    opened = Kind.DELIVERY_EVENT_KIND_OPENED

    def call(key: str, *events: campaigns_pb2.DeliveryEvent) -> Any:
        return campaigns.RecordDeliveryEvents(
            campaigns_pb2.RecordDeliveryEventsRequest(events=list(events), request_key=key)
        )

    async def outcome(key: str, *events: campaigns_pb2.DeliveryEvent) -> tuple[int, int, int] | str:
        try:
            reply = await call(key, *events)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return (reply.recorded, reply.unmatched, reply.duplicates)

    answers = await asyncio.gather(
        *(outcome(f"own-{n}", report(delivery, opened, provider_event_id=f"own-{n}")) for n in range(30)),
        *(outcome(f"twice-{n}", report(delivery, opened, provider_event_id=f"twice-{n}")) for n in range(5)),
        *(outcome(f"twice-{n}", report(delivery, opened, provider_event_id=f"twice-{n}")) for n in range(5)),
        *(outcome(f"shared-{n}", report(delivery, opened, provider_event_id="shared")) for n in range(4)),
        outcome("", report(delivery, opened), report("999999", opened)),
        outcome("", report(delivery, opened), report("999998", opened)),
    )
    own, first, second, shared, unkeyed = (
        answers[:30],
        answers[30:35],
        answers[35:40],
        answers[40:44],
        answers[44:],
    )
    assert own == [(1, 0, 0)] * 30
    for n in range(5):  # the same key twice at once: one call records, the other is a replay
        assert sorted([first[n], second[n]], key=str) == [(1, 0, 0), "ALREADY_EXISTS"], n
    assert sorted(shared) == [(0, 0, 1)] * 3 + [(1, 0, 0)]
    assert unkeyed == [(1, 1, 0)] * 2
    assert await outcome("own-7", report(delivery, opened, provider_event_id="own-7b")) == "ALREADY_EXISTS"
    stored = await db.fetchval("SELECT count(*) FROM delivery_events WHERE delivery_id = $1", int(delivery))
    assert stored == 30 + 5 + 1 + 2

    # A gateway sends the callbacks that arrive together as one call's requests: each has its
    # own outcome, a replay among them fails only itself, and a bad one is named by its path.
    def provider(key: str, *events: campaigns_pb2.DeliveryEvent) -> campaigns_pb2.ProviderRequest:
        return campaigns_pb2.ProviderRequest(events=list(events), request_key=key)

    reply = await campaigns.RecordDeliveryEvents(
        campaigns_pb2.RecordDeliveryEventsRequest(
            requests=[
                provider(
                    "gathered-1", report(delivery, opened, provider_event_id="g-1"), report("999997", opened)
                ),
                provider("own-3", report(delivery, opened, provider_event_id="g-2")),
                provider("gathered-2", report(delivery, Kind.DELIVERY_EVENT_KIND_COMPLAINED)),
                provider("gathered-3", report(delivery, opened, provider_event_id="g-1")),
            ]
        )
    )
    first, replay, complaint, again = [
        (o.recorded, o.unmatched, o.duplicates, o.suppressed, o.replayed) for o in reply.outcomes
    ]
    assert (replay, complaint) == ((0, 0, 0, 0, True), (1, 0, 0, 1, False))
    # "g-1" is in the first and the last request: a call's plain requests go into one statement
    # together, in their order, so the first stores it and the last counts it as a duplicate.
    # The first also names a delivery that does not exist.
    assert (first, again) == ((1, 1, 0, 0, False), (0, 0, 1, 0, False))
    assert (reply.recorded, reply.unmatched, reply.duplicates, reply.suppressed) == (2, 1, 1, 1)
    # Many requests of one call reporting one provider event: one statement, so the first in
    # the call's order is the one recorded, every time (a statement per request would race).
    reply = await campaigns.RecordDeliveryEvents(
        campaigns_pb2.RecordDeliveryEventsRequest(
            requests=[
                provider(f"same-{n}", report(delivery, opened, provider_event_id="same")) for n in range(12)
            ]
        )
    )
    assert [(o.recorded, o.duplicates, o.replayed) for o in reply.outcomes] == [(1, 0, False)] + [
        (0, 1, False)
    ] * 11
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.RecordDeliveryEvents(
            campaigns_pb2.RecordDeliveryEventsRequest(
                requests=[provider("fine", report(delivery, opened)), provider("bad", report("12a", opened))],
                request_key="both",
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error.value)) == {"events", "requests[1].events[0].delivery_id"}


async def test_erasure_removes_the_suppressions_the_customers_reports_caused_and_keeps_the_others(  # type: ignore[no-untyped-def]
    campaigns, sender: Sender, ingestion, db
) -> None:
    """suppressions is a shared table (no customer_id, no cascade): erasure deletes the ones its
    reports caused, also for a recipient the provider named, and only those."""
    await upsert_contact(ingestion, "gone", "gone@example.com")
    await upsert_contact(ingestion, "kept", "kept@example.com")
    gone, kept = await sender.trigger("gone"), await sender.trigger("kept")
    bounced = Kind.DELIVERY_EVENT_KIND_BOUNCED_HARD
    reply = await campaigns.RecordDeliveryEvents(
        campaigns_pb2.RecordDeliveryEventsRequest(
            events=[
                report(gone.delivery_id, bounced, provider_event_id="e-1"),
                report(gone.delivery_id, bounced, provider_event_id="e-2", recipient="Alias@Example.com"),
                report(kept.delivery_id, bounced, provider_event_id="e-1"),  # another customer's "e-1"
            ]
        )
    )
    assert (reply.recorded, reply.duplicates, reply.suppressed) == (3, 0, 3)
    await campaigns.CreateSuppression(
        campaigns_pb2.CreateSuppressionRequest(
            suppression=campaigns_pb2.Suppression(channel=EMAIL, address="gone-by-hand@example.com")
        )
    )

    async def suppressed() -> list[str]:
        listed = await campaigns.ListSuppressions(campaigns_pb2.ListSuppressionsRequest())
        return sorted(s.address for s in listed.suppressions)

    assert await suppressed() == [
        "alias@example.com",
        "gone-by-hand@example.com",
        "gone@example.com",
        "kept@example.com",
    ]
    erased = await ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="gone"))
    assert erased.customer_erased
    assert await suppressed() == ["gone-by-hand@example.com", "kept@example.com"]
    assert await db.fetchval("SELECT count(*) FROM delivery_events WHERE customer_id = 'gone'") == 0
    assert await db.fetchval("SELECT count(*) FROM delivery_events WHERE customer_id = 'kept'") == 1


async def test_the_suppression_api_validates_pages_and_the_cli_adds_lists_and_removes(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, sender: Sender, ingestion
) -> None:
    for bad, field in [
        (campaigns_pb2.Suppression(channel=EMAIL, address="not-an-address"), "suppression.address"),
        (campaigns_pb2.Suppression(channel=SMS, address="call me"), "suppression.address"),
        (
            campaigns_pb2.Suppression(channel=campaigns_pb2.CHANNEL_PUSH, address="token"),
            "suppression.channel",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await campaigns.CreateSuppression(campaigns_pb2.CreateSuppressionRequest(suppression=bad))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in violations(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.DeleteSuppression(
            campaigns_pb2.DeleteSuppressionRequest(channel=EMAIL, address="x@y.z")
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.RecordDeliveryEvents(
            campaigns_pb2.RecordDeliveryEventsRequest(events=[report("12a", 0)])
        )
    assert set(violations(error.value)) == {"events[0].delivery_id", "events[0].kind"}

    for n in range(5):
        await campaigns.CreateSuppression(
            campaigns_pb2.CreateSuppressionRequest(
                suppression=campaigns_pb2.Suppression(channel=SMS, address=f"+3360000000{n}")
            )
        )
    first = await campaigns.ListSuppressions(campaigns_pb2.ListSuppressionsRequest(page_size=3))
    rest = await campaigns.ListSuppressions(
        campaigns_pb2.ListSuppressionsRequest(page_size=3, page_token=first.next_page_token)
    )
    addresses = [s.address for s in [*first.suppressions, *rest.suppressions]]
    assert sorted(addresses) == [f"+3360000000{n}" for n in range(5)] and not rest.next_page_token

    def run(*args: str) -> Any:
        return CliRunner().invoke(
            cli,
            list(args),
            env={"EVENTLINE_CAMPAIGNS_TARGET": f"127.0.0.1:{campaigns_server.port}"},
            catch_exceptions=False,
        )

    await upsert_contact(ingestion, "manual", "manual@example.com")
    added = await asyncio.to_thread(
        run, "suppressions", "add", "Manual@Example.com", "--detail", "asked by phone"
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["reason"] == "SUPPRESSION_REASON_MANUAL"
    skipped = await sender.trigger("manual")
    assert skipped.reason == "suppressed: added by hand"
    listed = await asyncio.to_thread(run, "suppressions", "list", "--channel", "email", "-o", "json")
    assert [s["address"] for s in json.loads(listed.stdout)] == ["manual@example.com"]
    removed = await asyncio.to_thread(run, "suppressions", "remove", "manual@example.com")
    assert removed.exit_code == 0, removed.output
    assert (await sender.trigger("manual")).status == campaigns_pb2.DELIVERY_STATUS_SENT
    missing = await asyncio.to_thread(run, "suppressions", "remove", "manual@example.com")
    assert missing.exit_code != 0 and "NOT_FOUND" in missing.output


async def test_reports_find_their_deliveries_by_index_on_a_ledger_without_statistics(
    db: asyncpg.Connection,
) -> None:
    """A ledger just loaded (no statistics yet) and a plan made for any arrays: the statement
    that records provider reports still probes deliveries by id, never scans the ledger."""
    await db.execute(
        "INSERT INTO customers (customer_id, email) SELECT 'c' || i, 'c' || i || '@example.com'"
        " FROM generate_series(1, 20000) AS i;"
        " INSERT INTO campaigns (campaign_id, display_name, state, spec) VALUES ('k', 'k', 4, '');"
        " INSERT INTO deliveries (customer_id, campaign_id, event_id, channel, status)"
        " SELECT 'c' || i, 'k', 'e' || i, 1, 2 FROM generate_series(1, 20000) AS i"
    )
    count = 16
    arguments = (
        list(range(1, count + 1)),
        [int(Kind.DELIVERY_EVENT_KIND_DELIVERED)] * count,
        [None] * count,
        [""] * count,
        [f"p-{i}" for i in range(count)],
        [""] * count,
        list(range(1, count + 1)),
        [f"key-{i}" for i in range(count)],
        repository.REQUEST_KEY_TTL_S,
    )
    for mode in ("force_custom_plan", "force_generic_plan"):
        await db.execute(f"SET plan_cache_mode = {mode}")
        statement = await db.prepare(repository._RECORD_PLAIN_REPORTS)
        scans = plan_scans(await statement.explain(*arguments))
        assert set(scans.get("deliveries", [])) in ({"Index Scan"}, {"Index Only Scan"}), (
            mode,
            scans,
        )


async def test_expired_request_keys_go_oldest_first_along_the_expiry_index(db: asyncpg.Connection) -> None:
    """Replays are refused for a day: older keys are forgotten 100 at a time, oldest first, found
    through the expiry index (never by reading every key remembered), and a key whose row has
    expired counts as new again."""
    await db.execute(
        "INSERT INTO seen_requests (request_key, expires_at)"
        " SELECT 'old-' || i, now() - (200 - i) * interval '1 minute' FROM generate_series(1, 150) AS i;"
        " INSERT INTO seen_requests (request_key, expires_at)"
        " SELECT 'live-' || i, now() + interval '1 day' FROM generate_series(1, 20000) AS i"
    )
    forget = await db.prepare(repository._FORGET_EXPIRED_REQUESTS)
    assert "Seq Scan" not in {node for nodes in plan_scans(await forget.explain()).values() for node in nodes}
    await forget.fetch()
    left = await db.fetch(
        "SELECT request_key FROM seen_requests WHERE request_key LIKE 'old-%' ORDER BY expires_at"
    )
    assert [r[0] for r in left] == [f"old-{i}" for i in range(101, 151)]
    assert await db.fetchval(repository._SEE_REQUEST, "old-150", repository.REQUEST_KEY_TTL_S) is True
    assert await db.fetchval(repository._SEE_REQUEST, "live-1", repository.REQUEST_KEY_TTL_S) is None
    # Each check also forgets up to 10 expired keys (not its own): 50 - 2 * 10 of the old are left.
    assert await db.fetchval("SELECT count(*) FROM seen_requests WHERE request_key LIKE 'old-%'") == 30
