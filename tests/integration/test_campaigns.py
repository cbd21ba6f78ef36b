"""The campaign service against real PostgreSQL, Redis, segmentation, SMTP and HTTP servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import uuid
from typing import Any

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2 as seg
from google.protobuf import duration_pb2, field_mask_pb2

from eventline_campaigns.model import CUSTOMER_TRIGGER, SYSTEM_TRIGGER
from eventline_campaigns.service import running
from eventline_campaigns.settings import Settings
from eventline_cli import demo_campaigns
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream
from eventline_shared.streams.stream import StreamEntry
from tests.conftest import single_and_cluster
from tests.support import (
    add_email_customers,
    customer_event,
    delivery_statuses,
    eventually,
    message_ids_by_recipient,
    system_campaign,
    value,
    violations,
    wait_for_entries,
    wait_until,
)

GRANTED = common_pb2.CONSENT_GRANTED
DENIED = common_pb2.CONSENT_DENIED


def email_campaign(
    event_name: str = "PasswordRecoveryRequested",
    subject: str = "Reset your password",
    text: str = "Follow {{ client.eventContext.reset_link }}",
    html: str = "",
    audience: seg.Filter | None = None,
) -> campaigns_pb2.Campaign:
    return demo_campaigns.email_campaign(
        demo_campaigns.on_customer_event(event_name),
        audience,
        display_name="Password recovery",
        subject=subject,
        text_body=text,
        html_body=html,
    )


async def upsert(ingestion, customer_id: str, **fields: Any) -> None:  # type: ignore[no-untyped-def]
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(customer=common_pb2.Customer(customer_id=customer_id, **fields))
    )


async def start(campaigns, campaign: campaigns_pb2.Campaign, campaign_id: str = "") -> str:  # type: ignore[no-untyped-def]
    created = await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=campaign, campaign_id=campaign_id)
    )
    await campaigns.ActivateCampaign(
        campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
    )
    return str(created.campaign.campaign_id)


async def deliveries(campaigns, **parent: str) -> list[campaigns_pb2.Delivery]:  # type: ignore[no-untyped-def]
    reply = await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(page_size=1000, **parent))
    return list(reply.deliveries)


# --- campaigns CRUD ---


async def test_create_get_list_update_and_states(campaigns) -> None:  # type: ignore[no-untyped-def]
    first = await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=email_campaign(), campaign_id="reset")
    )
    assert first.campaign.state == campaigns_pb2.CAMPAIGN_STATE_DRAFT
    assert first.campaign.campaign_id == "reset"
    again = await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=email_campaign(), campaign_id="reset")
    )
    assert again.campaign == first.campaign, "a repeated create returns the first campaign"
    with pytest.raises(grpc.aio.AioRpcError) as other:  # AIP-155: another campaign with the id
        await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(campaign=email_campaign(subject="other"), campaign_id="reset")
        )
    assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for _ in range(3):
        await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=email_campaign()))
    page = await campaigns.ListCampaigns(campaigns_pb2.ListCampaignsRequest(page_size=3))
    rest = await campaigns.ListCampaigns(
        campaigns_pb2.ListCampaignsRequest(page_size=3, page_token=page.next_page_token)
    )
    ids = [c.campaign_id for c in page.campaigns] + [c.campaign_id for c in rest.campaigns]
    assert len(ids) == 4 and len(set(ids)) == 4 and "reset" in ids and not rest.next_page_token

    changed = email_campaign(subject="New subject")
    changed.campaign_id = "reset"
    updated = await campaigns.UpdateCampaign(
        campaigns_pb2.UpdateCampaignRequest(
            campaign=changed, update_mask=field_mask_pb2.FieldMask(paths=["actions"])
        )
    )
    assert updated.campaign.actions[0].email.subject == "New subject"
    assert updated.campaign.display_name == "Password recovery"

    active = await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id="reset"))
    assert active.campaign.state == campaigns_pb2.CAMPAIGN_STATE_ACTIVE and active.campaign.HasField(
        "active_since"
    )
    paused = await campaigns.PauseCampaign(campaigns_pb2.PauseCampaignRequest(campaign_id="reset"))
    assert paused.campaign.state == campaigns_pb2.CAMPAIGN_STATE_PAUSED
    archived = await campaigns.ArchiveCampaign(campaigns_pb2.ArchiveCampaignRequest(campaign_id="reset"))
    assert archived.campaign.state == campaigns_pb2.CAMPAIGN_STATE_ARCHIVED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id="reset"))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.UpdateCampaign(
            campaigns_pb2.UpdateCampaignRequest(
                campaign=changed, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
            )
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_campaigns_are_refused_with_paths_and_lines(campaigns) -> None:  # type: ignore[no-untyped-def]
    bad = email_campaign(subject="ok", text="line one\n{{ client.eventContext.x ]]")
    bad.actions.append(campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="")))
    bad.trigger.customer_event.context_predicates.append(
        seg.Predicate(field="item-id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$x"))
    )
    bad.frequency_cap.CopyFrom(campaigns_pb2.FrequencyCap(max_sends=0))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=bad))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error.value)
    assert "line 2" in found["campaign.actions[0].email.text_body"]
    assert "campaign.actions[1].sms.text" in found
    assert "campaign.trigger.customer_event.context_predicates[0].field" in found
    assert "campaign.trigger.customer_event.context_predicates[0].value" in found
    assert "campaign.frequency_cap.max_sends" in found
    assert "campaign.frequency_cap.period" in found

    # An invalid audience is reported by segmentation, under our field name.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                campaign=email_campaign(audience=seg.Filter(all_of=seg.FilterList()))
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(path.startswith("campaign.audience") for path in violations(error.value))


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ client|attr('format') }}",
        "{{ client['__class__'] }}",
        "{% for x in y %}",
    ],
)
async def test_template_attacks_are_refused_at_create(campaigns, source: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(campaign=email_campaign(text=source))
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "campaign.actions[0].email.text_body" in violations(error.value)


# --- customer-event triggers ---


async def test_customer_event_sends_one_email_with_the_context(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    await upsert(ingestion, "c1", email="c1@example.com", email_consent=GRANTED)
    campaign_id = await start(
        campaigns,
        email_campaign(
            subject="Hi {{ client.customer_id }}",
            html="<a href='{{ client.eventContext.reset_link }}'>{{ client.eventContext.note }}</a>",
        ),
    )
    request = customer_event(
        "c1", "PasswordRecoveryRequested", "e1", reset_link="https://x.test/r?a=1&b=2", note="{{ 7 * 7 }}<b>"
    )
    await ingestion.TrackCustomerEvent(request)
    await ingestion.TrackCustomerEvent(request)  # the same event id again
    await wait_for_entries(redis_client, stream_key, 1)
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(1)
    # Processing the same stream entry again (redelivery) sends nothing more.
    entries = await redis_client.xrange(stream_key)
    await campaigns_server.consumer.process([StreamEntry.from_fields(i, f) for i, f in entries])
    await campaigns_server.consumer.drain()
    await asyncio.sleep(0.1)
    assert len(smtp_server.messages) == 1
    message = smtp_server.messages[0]
    assert message["To"] == "c1@example.com"
    assert message["Subject"] == "Hi c1"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Follow https://x.test/r?a=1&b=2" in text
    assert "{{ 7 * 7 }}&lt;b&gt;" in html and "https://x.test/r?a=1&amp;b=2" in html

    [delivery] = await deliveries(campaigns, campaign_id=campaign_id)
    assert delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert delivery.event_id == "e1" and delivery.customer_id == "c1" and delivery.attempts == 1
    assert message["Message-ID"] == f"<delivery-{delivery.delivery_id}@eventline.local>"
    assert (await deliveries(campaigns, event_id="e1")) == [delivery]
    assert (await deliveries(campaigns, customer_id="c1")) == [delivery]
    pending = await redis_client.xpending(stream_key, "campaigns")
    assert pending["pending"] == 0


async def test_consent_address_render_failure_and_trigger_predicates(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    await upsert(ingestion, "denied", email="d@example.com", email_consent=DENIED)
    await upsert(ingestion, "noaddr", email_consent=GRANTED)
    await upsert(ingestion, "ok", email="ok@example.com", email_consent=GRANTED)
    campaign = email_campaign(event_name="Ordered", text="Your {{ client.eventContext.item }}")
    campaign.trigger.customer_event.context_predicates.append(
        seg.Predicate(field="amount", operator=seg.OPERATOR_GREATER, value=seg.Operand(literal=value(100)))
    )
    campaign_id = await start(campaigns, campaign)
    await ingestion.TrackCustomerEvent(customer_event("denied", "Ordered", "o1", amount=500, item="kettle"))
    await ingestion.TrackCustomerEvent(customer_event("noaddr", "Ordered", "o2", amount=500, item="kettle"))
    await ingestion.TrackCustomerEvent(customer_event("ok", "Ordered", "o3", amount=500))  # no "item"
    await ingestion.TrackCustomerEvent(customer_event("ok", "Ordered", "o4", amount=50, item="cheap"))
    await ingestion.TrackCustomerEvent(customer_event("ok", "Ordered", "o5", amount="500", item="string"))
    await ingestion.TrackCustomerEvent(customer_event("ok", "Ordered", "o6", amount=101, item="kettle"))
    await wait_for_entries(redis_client, stream_key, 6)
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(1)
    by_event = {d.event_id: d for d in await deliveries(campaigns, campaign_id=campaign_id)}
    assert set(by_event) == {"o1", "o2", "o3", "o6"}, "o4 (amount 50) and o5 (a string) do not trigger"
    assert (by_event["o1"].status, by_event["o1"].reason) == (
        campaigns_pb2.DELIVERY_STATUS_SKIPPED,
        "no e-mail consent",
    )
    assert (by_event["o2"].status, by_event["o2"].reason) == (
        campaigns_pb2.DELIVERY_STATUS_SKIPPED,
        "no e-mail address",
    )
    assert by_event["o3"].status == campaigns_pb2.DELIVERY_STATUS_FAILED
    assert "client.eventContext has no field 'item'" in by_event["o3"].reason
    assert by_event["o6"].status == campaigns_pb2.DELIVERY_STATUS_SENT
    await asyncio.sleep(0.1)
    assert [m.get_body(("plain",)).get_content().strip() for m in smtp_server.messages] == ["Your kettle"]
    stats = await campaigns.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id))
    assert (stats.sent, stats.failed, stats.skipped, stats.pending) == (1, 1, 2, 0)
    assert stats.reasons["no e-mail consent"] == 1


async def test_audience_filter_with_a_reference_to_the_trigger_context(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    for customer in ("fan", "other"):
        await upsert(ingestion, customer, email=f"{customer}@example.com", email_consent=GRANTED)
    await ingestion.TrackCustomerEvent(customer_event("fan", "Viewed", "v1", item_id=7))
    audience = seg.Filter(
        event=seg.EventCondition(
            name="Viewed",
            predicates=[
                seg.Predicate(
                    field="item_id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$item_id")
                )
            ],
        )
    )
    campaign_id = await start(campaigns, email_campaign(event_name="Carted", text="hi", audience=audience))
    await ingestion.TrackCustomerEvent(customer_event("fan", "Carted", "k1", item_id=7))
    await ingestion.TrackCustomerEvent(customer_event("other", "Carted", "k2", item_id=7))
    await ingestion.TrackCustomerEvent(customer_event("fan", "Carted", "k3"))  # no item_id: unresolved
    await wait_for_entries(redis_client, stream_key, 4)
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(1)
    by_event = {d.event_id: d for d in await deliveries(campaigns, campaign_id=campaign_id)}
    assert set(by_event) == {"k1", "k3"}
    assert by_event["k1"].status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert by_event["k3"].status == campaigns_pb2.DELIVERY_STATUS_SKIPPED
    assert "audience cannot be evaluated" in by_event["k3"].reason
    assert [m["To"] for m in smtp_server.messages] == ["fan@example.com"]


async def test_sms_and_push_over_http_signed_idempotent_and_retried(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, http_provider
) -> None:
    await upsert(
        ingestion,
        "m1",
        phone="+4915112345678",
        sms_consent=GRANTED,
        push_tokens=["tok-a", "tok-b"],
        push_consent=GRANTED,
    )
    campaign = campaigns_pb2.Campaign(
        display_name="Shipping",
        trigger=campaigns_pb2.Trigger(
            customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Shipped")
        ),
        actions=[
            campaigns_pb2.Action(
                sms=campaigns_pb2.SmsAction(text="Parcel {{ client.eventContext.parcel }} shipped")
            ),
            campaigns_pb2.Action(
                push=campaigns_pb2.PushAction(
                    title="Shipped",
                    body="{{ event.name }}",
                    data={"parcel": "{{ client.eventContext.parcel }}"},
                )
            ),
        ],
    )
    campaign_id = await start(campaigns, campaign)
    http_provider.fail_next = 1  # the first call gets a 503 and is retried
    await ingestion.TrackCustomerEvent(customer_event("m1", "Shipped", "s1", parcel="P-9"))
    await wait_for_entries(redis_client, stream_key, 1)
    await campaigns_server.consumer.drain()
    found = {d.channel: d for d in await deliveries(campaigns, campaign_id=campaign_id)}
    assert all(d.status == campaigns_pb2.DELIVERY_STATUS_SENT for d in found.values())
    calls = http_provider.requests
    assert len(calls) == 3, "two messages, one of them retried once"
    keys = [headers["idempotency-key"] for _, headers, _ in calls]
    assert sorted(set(keys)) == sorted(d.delivery_id for d in found.values())
    for path, headers, body in calls:
        expected = hmac.new(
            b"test-secret", headers["x-eventline-timestamp"].encode() + b"." + body, hashlib.sha256
        )
        assert headers["x-eventline-signature"] == "sha256=" + expected.hexdigest()
        payload = json.loads(body)
        assert payload["delivery_id"] == headers["idempotency-key"]
        if path == "/sms":
            assert payload == {
                "delivery_id": found[campaigns_pb2.CHANNEL_SMS].delivery_id,
                "channel": "sms",
                "to": "+4915112345678",
                "text": "Parcel P-9 shipped",
            }
        else:
            assert payload["tokens"] == ["tok-a", "tok-b"] and payload["data"] == {"parcel": "P-9"}
            assert payload["body"] == "Shipped"
    retried = [d for d in found.values() if d.attempts == 2]
    assert len(retried) == 1


async def start_hourly_capped(campaigns, served, ingestion, customer_id: str) -> str:  # type: ignore[no-untyped-def]
    """A customer with e-mail consent and an active campaign e-mailing them on each
    ``Visited`` event, at most once an hour; returns the campaign id."""
    await upsert(ingestion, customer_id, email=f"{customer_id}@example.com", email_consent=GRANTED)
    campaign = email_campaign(event_name="Visited", text="hello")
    campaign.frequency_cap.CopyFrom(
        campaigns_pb2.FrequencyCap(max_sends=1, period=duration_pb2.Duration(seconds=3600))
    )
    campaign_id = await start(campaigns, campaign)
    await served.cache.refresh()
    return campaign_id


async def test_frequency_cap_holds_under_20_concurrent_triggers(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, smtp_server
) -> None:
    campaign_id = await start_hourly_capped(campaigns, campaigns_server, ingestion, "capped")
    events = []
    for i in range(20):
        reply = await ingestion.TrackCustomerEvent(customer_event("capped", "Visited", f"v{i}"))
        events.append(reply.event)
    # 20 triggers processed at the same time, each in its own transaction.
    await asyncio.gather(*(campaigns_server.engine.handle_customer_events([e]) for e in events))
    await smtp_server.wait_for(1)
    await asyncio.sleep(0.2)
    assert len(smtp_server.messages) == 1
    found = await deliveries(campaigns, campaign_id=campaign_id)
    statuses = sorted(campaigns_pb2.DeliveryStatus.Name(d.status) for d in found)
    assert statuses.count("DELIVERY_STATUS_SENT") == 1
    assert statuses.count("DELIVERY_STATUS_SKIPPED") == 19
    assert all(
        d.reason.startswith("frequency cap")
        for d in found
        if d.status == campaigns_pb2.DELIVERY_STATUS_SKIPPED
    )


async def test_a_frequency_cap_window_is_read_from_the_clock_the_service_is_given(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    """A cap of one send per hour, evaluated at the service's clock: still capped 59:59 after
    the first send, open again once the clock has moved past the hour. No sleeping: the
    test moves the clock."""
    clock = ManualClock()
    async with running(Settings.from_env(campaigns_env()), consume=False, clock=clock) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            campaigns = campaigns_pb2_grpc.CampaignServiceStub(channel)
            campaign_id = await start_hourly_capped(campaigns, served, ingestion, "hourly")

            async def visit(event_id: str) -> str:
                reply = await ingestion.TrackCustomerEvent(customer_event("hourly", "Visited", event_id))
                await served.engine.handle_customer_events([reply.event])
                [delivery] = await deliveries(campaigns, event_id=event_id)
                return f"{campaigns_pb2.DeliveryStatus.Name(delivery.status)} {delivery.reason}".strip()

            assert await visit("at-start") == "DELIVERY_STATUS_SENT"
            clock.advance(dt.timedelta(seconds=3599))
            assert (
                await visit("before-the-hour") == "DELIVERY_STATUS_SKIPPED frequency cap: 1 sends per period"
            )
            clock.advance(dt.timedelta(seconds=2))
            assert await visit("after-the-hour") == "DELIVERY_STATUS_SENT"
            await smtp_server.wait_for(2)
            assert len(await deliveries(campaigns, campaign_id=campaign_id)) == 3


# --- the stream: crashes, poison entries ---


@single_and_cluster
async def test_entries_of_a_crashed_consumer_are_reclaimed_and_delivered_once(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    for i in range(10):
        await upsert(ingestion, f"r{i}", email=f"r{i}@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign(event_name="Pinged", text="pong"))
    await campaigns_server.consumer.ensure_group()
    for i in range(10):
        await ingestion.TrackCustomerEvent(customer_event(f"r{i}", "Pinged", f"p{i}"))
    await wait_for_entries(redis_client, stream_key, 10)
    # A replica reads every entry and dies before acknowledging anything; for
    # half of them it had already sent the message (crash after the provider call).
    read = await redis_client.xreadgroup("campaigns", "crashed", {stream_key: ">"}, count=100)
    entries = [StreamEntry.from_fields(i, f) for i, f in read[0][1]]
    assert len(entries) == 10
    await campaigns_server.cache.refresh()
    await campaigns_server.engine.handle_customer_events([e.event() for e in entries[:5]])
    await smtp_server.wait_for(5)
    # The surviving replica reclaims the pending entries (claim idle time 0 in tests).
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(10)
    await asyncio.sleep(0.2)
    assert sorted(m["To"] for m in smtp_server.messages) == sorted(f"r{i}@example.com" for i in range(10))
    assert len(await deliveries(campaigns, campaign_id=campaign_id)) == 10
    assert (await redis_client.xpending(stream_key, "campaigns"))["pending"] == 0


async def test_pending_delivery_of_a_crashed_sender_is_sent_once(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, smtp_server
) -> None:
    from eventline_campaigns.model import EMAIL, PENDING, Message, Planned

    await upsert(ingestion, "lease", email="lease@example.com", email_consent=GRANTED)
    campaign_id = await start(campaigns, email_campaign())
    repository = campaigns_server.engine.repository
    message = Message(0, EMAIL, ["lease@example.com"], "Subject", "", "Body")
    # Recorded, then the sender died before calling the provider; its lease is already over.
    owned = await repository.record(
        campaign_id, "ev", [Planned("lease", EMAIL, PENDING, "", message)], lease_s=-1, marketing=False
    )
    assert len(owned) == 1
    assert await campaigns_server.engine.delivery.recover() == 1
    assert await campaigns_server.engine.delivery.recover() == 0
    await smtp_server.wait_for(1)
    [delivery] = await deliveries(campaigns, campaign_id=campaign_id)
    assert delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT
    assert smtp_server.messages[0]["Message-ID"] == f"<delivery-{delivery.delivery_id}@eventline.local>"


@single_and_cluster
async def test_poison_entry_is_dead_lettered_and_the_rest_flow(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    await upsert(ingestion, "good", email="good@example.com", email_consent=GRANTED)
    await start(campaigns, email_campaign(event_name="Pinged", text="pong"))
    await campaigns_server.consumer.ensure_group()
    # An event whose customer id PostgreSQL cannot store (NUL): it fails every time.
    poison = common_pb2.Event(
        event_id="bad", kind=common_pb2.EVENT_KIND_CUSTOMER, customer_id="x\x00y", name="Pinged"
    )
    poison.received_at.GetCurrentTime()
    await redis_client.xadd(
        stream_key,
        {"event_id": "bad", "customer_id": "x", "name": "Pinged", "payload": poison.SerializeToString()},
    )
    await redis_client.xadd(
        stream_key, {"event_id": "junk", "customer_id": "x", "name": "Pinged", "payload": b"\xff\xff"}
    )
    await ingestion.TrackCustomerEvent(customer_event("good", "Pinged", "g1"))
    await wait_for_entries(redis_client, stream_key, 3)
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(1)
    dead = await redis_client.xrange(stream.dead_letter_key(stream_key))
    assert sorted(fields[b"event_id"] for _, fields in dead) == [b"bad", b"junk"]
    attempts = {fields[b"event_id"]: int(fields[b"attempts"]) for _, fields in dead}
    assert attempts[b"bad"] == 3, "dead-lettered after max_attempts (3 in tests)"
    assert (await redis_client.xpending(stream_key, "campaigns"))["pending"] == 0
    assert [m["To"] for m in smtp_server.messages] == ["good@example.com"]


# --- system events: fan-out ---


async def _stock_setup(ingestion, count: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(count):
        consent = GRANTED if i % 4 else DENIED
        await upsert(ingestion, f"s{i:03d}", email=f"s{i:03d}@example.com", email_consent=consent)
        await ingestion.TrackCustomerEvent(
            customer_event(f"s{i:03d}", "StockSubscription", item_id=42 if i % 3 else 7)
        )


def stock_campaign() -> campaigns_pb2.Campaign:
    return demo_campaigns.back_in_stock(display_name="Back in stock", text_body="Get it now.")


def _expected_stock(count: int) -> list[str]:
    return sorted(f"s{i:03d}@example.com" for i in range(count) if i % 4 and i % 3)


async def test_system_event_fan_out_resumes_after_a_crash(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    await _stock_setup(ingestion, 40)
    campaign_id = await start(campaigns, stock_campaign())
    await campaigns_server.consumer.ensure_group()
    await ingestion.TrackSystemEvent(
        ingestion_pb2.TrackSystemEventRequest(
            event_id="stock-42",
            name="ItemInStock",
            context={"item_id": value(42), "item_name": value("Blue kettle")},
        )
    )
    await wait_for_entries(redis_client, stream_key, 41)
    engine = campaigns_server.engine
    engine.fan_out.batch = 4
    await campaigns_server.cache.refresh()
    entries = await redis_client.xreadgroup("campaigns", "crashed", {stream_key: ">"}, count=100)
    [system_entry] = [StreamEntry.from_fields(i, f) for i, f in entries[0][1] if f[b"customer_id"] == b""]
    batches = 0

    async def crash_after_two_batches() -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        await engine.handle_system_event(system_entry.event(), crash_after_two_batches)
    before = len(smtp_server.messages)
    assert 0 < before < len(_expected_stock(40))
    await campaigns_server.consumer.drain()
    expected = _expected_stock(40)
    await smtp_server.wait_for(len(expected))
    await asyncio.sleep(0.2)
    assert sorted(m["To"] for m in smtp_server.messages) == expected
    assert {m["Subject"] for m in smtp_server.messages} == {"Blue kettle is back"}
    stats = await campaigns.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id))
    assert stats.sent == len(expected) and stats.pending == 0
    assert stats.skipped == sum(1 for i in range(40) if i % 3 and not i % 4)  # no consent
    assert stats.reasons == {"no e-mail consent": stats.skipped}


# --- replicas, preview, erasure ---


async def test_campaign_changes_reach_another_replica(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, campaigns_env
) -> None:
    """The other replica sees an activation and a change at its next poll (every 0.1 s here);
    the test waits for that with a generous deadline rather than timing it."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    async with running(Settings.from_env(campaigns_env()), consume=False) as other:
        campaign_id = await start(campaigns, email_campaign(event_name="Joined"))
        await wait_until(
            lambda: bool(other.cache.for_trigger(CUSTOMER_TRIGGER, "Joined")),
            60,
            "the other replica did not see the activation",
        )
        changed = email_campaign(event_name="Left")
        changed.campaign_id = campaign_id
        await campaigns.UpdateCampaign(
            campaigns_pb2.UpdateCampaignRequest(
                campaign=changed, update_mask=field_mask_pb2.FieldMask(paths=["trigger"])
            )
        )
        await wait_until(
            lambda: bool(other.cache.for_trigger(CUSTOMER_TRIGGER, "Left")),
            60,
            "the other replica did not see the change",
        )
        assert not other.cache.for_trigger(CUSTOMER_TRIGGER, "Joined")


async def test_preview_renders_without_sending(campaigns, ingestion, smtp_server, db) -> None:  # type: ignore[no-untyped-def]
    await upsert(
        ingestion,
        "p1",
        email="p1@example.com",
        attributes={"first_name": value("Ada")},
        email_consent=GRANTED,
    )
    created = await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(
            campaign=email_campaign(
                subject="Hello {{ client.first_name }}", html="<p>{{ client.eventContext.reset_link }}</p>"
            )
        )
    )
    reply = await campaigns.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(
            campaign_id=created.campaign.campaign_id, customer_id="p1", context={"reset_link": value("<x>")}
        )
    )
    [message] = reply.messages
    assert message.subject == "Hello Ada" and message.html_body == "<p>&lt;x&gt;</p>"
    assert message.text_body == "Follow <x>"
    missing = await campaigns.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(campaign_id=created.campaign.campaign_id, customer_id="p1")
    )
    assert "reset_link" in missing.messages[0].error
    assert smtp_server.messages == []
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_erasing_a_customer_erases_their_deliveries(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server, db
) -> None:
    await upsert(ingestion, "gone", email="gone@example.com", email_consent=GRANTED)
    await start(campaigns, email_campaign(event_name="Pinged", text="x"))
    await ingestion.TrackCustomerEvent(customer_event("gone", "Pinged", "z1"))
    await wait_for_entries(redis_client, stream_key, 1)
    await campaigns_server.consumer.drain()
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE customer_id = 'gone'") == 1
    await ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id="gone"))
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE customer_id = 'gone'") == 0
    assert await db.fetchval("SELECT count(*) FROM campaign_sends WHERE customer_id = 'gone'") == 0


async def test_list_deliveries_pages_and_bad_requests(campaigns, campaigns_server, ingestion) -> None:  # type: ignore[no-untyped-def]
    from eventline_campaigns.model import EMAIL, SKIPPED, Planned

    await upsert(ingestion, "pager", email="p@example.com")
    campaign_id = await start(campaigns, email_campaign())
    repository = campaigns_server.engine.repository
    for i in range(5):
        await repository.record(
            campaign_id,
            f"ev{i}",
            [Planned("pager", EMAIL, SKIPPED, "no e-mail consent", None)],
            lease_s=60,
            marketing=False,
        )
    seen: list[str] = []
    token = ""
    while True:
        reply = await campaigns.ListDeliveries(
            campaigns_pb2.ListDeliveriesRequest(customer_id="pager", page_size=2, page_token=token)
        )
        seen += [d.event_id for d in reply.deliveries]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [f"ev{i}" for i in reversed(range(5))]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(page_size=2))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await campaigns.ListDeliveries(
            campaigns_pb2.ListDeliveriesRequest(campaign_id=campaign_id, page_token=base_token())
        )
    assert "page_token" in violations(error.value)


def base_token() -> str:
    return uuid.uuid4().hex


async def test_a_segmentation_outage_delays_deliveries_but_never_dead_letters_them(  # type: ignore[no-untyped-def]
    campaigns_env, stream_key, redis_client, ingestion, segmentation_server, smtp_server
) -> None:
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings
    from tests.faults import TcpProxy

    proxy = await TcpProxy("127.0.0.1", segmentation_server.port).start()
    env = campaigns_env(EVENTLINE_SEGMENTATION_ADDR=f"127.0.0.1:{proxy.port}")
    try:
        async with running(Settings.from_env(env), consume=False) as served:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                campaigns = campaigns_pb2_grpc.CampaignServiceStub(channel)
                await upsert(ingestion, "o1", email="o1@example.com", email_consent=GRANTED)
                audience = seg.Filter(customer=seg.CustomerCondition(consent_granted=seg.CHANNEL_EMAIL))
                await start(campaigns, email_campaign(event_name="Pinged", text="x", audience=audience))
            proxy.cut()
            await ingestion.TrackCustomerEvent(customer_event("o1", "Pinged", "out-1"))
            await wait_for_entries(redis_client, stream_key, 1)
            draining = asyncio.create_task(served.consumer.drain())
            await asyncio.sleep(1.0)
            assert not draining.done() and smtp_server.messages == []
            assert any("Unavailable" in error for error in served.consumer.errors)
            proxy.restore()
            await asyncio.wait_for(draining, 15)
            await smtp_server.wait_for(1)
    finally:
        await proxy.close()
    assert await redis_client.xlen(stream.dead_letter_key(stream_key)) == 0
    assert (await redis_client.xpending(stream_key, "campaigns"))["pending"] == 0


async def test_fan_out_respects_the_frequency_cap(  # type: ignore[no-untyped-def]
    campaigns, campaigns_server, ingestion, redis_client, stream_key, smtp_server
) -> None:
    for i in range(5):
        await upsert(ingestion, f"fc{i}", email=f"fc{i}@example.com", email_consent=GRANTED)
    campaign = campaigns_pb2.Campaign(
        display_name="Daily deal",
        trigger=campaigns_pb2.Trigger(system_event=campaigns_pb2.SystemEventTrigger(event_name="Deal")),
        actions=[campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Deal", text_body="x"))],
        frequency_cap=campaigns_pb2.FrequencyCap(max_sends=1, period=duration_pb2.Duration(seconds=86400)),
    )
    campaign_id = await start(campaigns, campaign)
    for event_id in ("deal-1", "deal-2"):
        await ingestion.TrackSystemEvent(
            ingestion_pb2.TrackSystemEventRequest(event_id=event_id, name="Deal")
        )
    await wait_for_entries(redis_client, stream_key, 2)
    await campaigns_server.consumer.drain()
    await smtp_server.wait_for(5)
    await asyncio.sleep(0.1)
    assert sorted(m["To"] for m in smtp_server.messages) == [f"fc{i}@example.com" for i in range(5)]
    stats = await campaigns.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id))
    assert (stats.sent, stats.skipped) == (5, 5)
    assert stats.reasons == {"frequency cap: 1 sends per period": 5}


async def test_two_replicas_share_the_stream_and_deliver_each_message_once(  # type: ignore[no-untyped-def]
    campaigns_env, stream_key, redis_client, ingestion, smtp_server, db
) -> None:
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    customers = 60
    rows = [(f"rp{i:03d}", f"rp{i:03d}@example.com", 1) for i in range(customers)]
    await db.copy_records_to_table(
        "customers", records=rows, columns=["customer_id", "email", "email_consent"]
    )
    # Unordered: both replicas read the one partition (ordered, one owns it; see test_stream_order.py).
    env = campaigns_env(
        EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="30000",
        EVENTLINE_CAMPAIGNS_READ_BATCH="5",
        EVENTLINE_CAMPAIGNS_ORDERED="false",
    )
    async with running(Settings.from_env(env)) as one, running(Settings.from_env(env)) as two:
        sent_by: dict[str, int] = {"one": 0, "two": 0}
        for name, replica in (("one", one), ("two", two)):
            original = replica.engine.delivery.send

            async def counting(owned, original=original, name=name):  # type: ignore[no-untyped-def]
                sent = await original(owned)
                sent_by[name] += sent
                return sent

            replica.engine.delivery.send = counting
        async with grpc.aio.insecure_channel(f"127.0.0.1:{one.port}") as channel:
            stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
            await start(stub, email_campaign(event_name="Pinged", text="x"))
        await wait_until(
            lambda: all(r.cache.for_trigger(CUSTOMER_TRIGGER, "Pinged") for r in (one, two)),
            60,
            "a replica did not pick the campaign up",
        )
        for i in range(customers):
            await ingestion.TrackCustomerEvent(customer_event(f"rp{i:03d}", "Pinged", f"rp-{i}"))
        await smtp_server.wait_for(customers, timeout=60)
        # A send is counted once its outcome is recorded, after the SMTP server took the message.
        await wait_until(lambda: sum(sent_by.values()) >= customers, 60, "a sent message was not counted")
        await eventually(
            lambda: _nothing_pending(redis_client, stream_key), 60, "stream entries still pending"
        )
        await asyncio.sleep(0.3)  # room for a message sent twice to show up
    assert sorted(m["To"] for m in smtp_server.messages) == [
        f"rp{i:03d}@example.com" for i in range(customers)
    ]
    assert sent_by["one"] + sent_by["two"] == customers
    assert sent_by["one"] > 0 and sent_by["two"] > 0, f"one replica did all the work: {sent_by}"
    assert (await redis_client.xpending(stream_key, "campaigns"))["pending"] == 0


async def _nothing_pending(redis_client: Any, stream_key: str) -> bool:
    return bool((await redis_client.xpending(stream_key, "campaigns"))["pending"] == 0)


SALE_EMAIL = campaigns_pb2.Action(
    email=campaigns_pb2.EmailAction(subject="Sale for {{ client.customer_id }}", text_body="x")
)


async def test_a_system_event_fan_out_by_email_uses_the_configured_smtp_connections(  # type: ignore[no-untyped-def]
    campaigns_env, stream_key, redis_client, ingestion, smtp_server, db
) -> None:
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    addresses = await add_email_customers(db, "sc", 120)
    env = campaigns_env(EVENTLINE_SMTP_CONNECTIONS="2")
    async with running(Settings.from_env(env), consume=False) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            await start(campaigns_pb2_grpc.CampaignServiceStub(channel), system_campaign("Sale", SALE_EMAIL))
        await ingestion.TrackSystemEvent(
            ingestion_pb2.TrackSystemEventRequest(event_id="sale-smtp", name="Sale")
        )
        await wait_for_entries(redis_client, stream_key, 1)
        await served.consumer.drain()
        # A send that failed for a moment (a loaded machine) is retried after its lease: wait for all.
        await smtp_server.wait_for(len(addresses))
    assert sorted(m["To"] for m in smtp_server.messages) == addresses
    assert len(smtp_server.connections) <= 2


async def _start_sale(served, ingestion, sale: campaigns_pb2.Campaign) -> None:  # type: ignore[no-untyped-def]
    """Start the "Sale" system campaign, wait until the consumer knows it, then send the event."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        await start(campaigns_pb2_grpc.CampaignServiceStub(channel), sale)
    await wait_until(
        lambda: bool(served.cache.for_trigger(SYSTEM_TRIGGER, "Sale")), 60, "the consumer has no campaign"
    )
    await ingestion.TrackSystemEvent(ingestion_pb2.TrackSystemEventRequest(event_id="sale-cut", name="Sale"))


async def test_smtp_connections_cut_midway_through_a_fan_out_lose_and_double_nothing(  # type: ignore[no-untyped-def]
    campaigns_env, stream_key, redis_client, ingestion, smtp_server, db
) -> None:
    """The SMTP server drops every connection (a restart, a load balancer) three times while
    a fan-out is sending over them: every customer still gets one message (one Message-ID)."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    addresses = await add_email_customers(db, "cut", 1500)
    env = campaigns_env(EVENTLINE_CAMPAIGNS_FANOUT_BATCH="100")
    async with running(Settings.from_env(env)) as served:
        await _start_sale(served, ingestion, system_campaign("Sale", SALE_EMAIL))
        opened = []
        for threshold in (200, 600, 1000):
            await smtp_server.wait_for(threshold, timeout=60)
            opened.append(len(smtp_server.connections))
            for connection in smtp_server.connections:
                connection.close()
        received_at_last_cut = len(smtp_server.messages)
        await wait_until(
            lambda: len(message_ids_by_recipient(smtp_server)) == len(addresses),
            300,
            "the fan-out did not complete",
        )
        await asyncio.sleep(0.5)  # a late duplicate would arrive now
    ids_by_recipient = message_ids_by_recipient(smtp_server)
    assert sorted(ids_by_recipient) == addresses
    assert all(len(ids) == 1 for ids in ids_by_recipient.values()), "a customer got two different messages"
    assert opened[0] < opened[1] < opened[2] < len(smtp_server.connections), "cut connections were replaced"
    assert received_at_last_cut < len(addresses), "the cuts came after the fan-out; the test proves nothing"
    assert await delivery_statuses(db) == {2: len(addresses)}


async def test_http_provider_connections_cut_midway_through_a_fan_out_lose_and_double_nothing(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, http_provider, db
) -> None:
    """The same for SMS over HTTP: a call whose reply was cut is repeated with the same
    Idempotency-Key, so each customer has exactly one key at the provider."""
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    rows = [(f"hc{i:04d}", f"+49151{i:08d}", 1) for i in range(1500)]
    await db.copy_records_to_table("customers", records=rows, columns=["customer_id", "phone", "sms_consent"])
    sale = system_campaign(
        "Sale", campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="Sale for {{ client.customer_id }}"))
    )

    to: list[str] = []  # each request's phone number, parsed once: a poll must not re-read them all

    def phones() -> set[str]:
        to.extend(json.loads(body)["to"] for _, _, body in http_provider.requests[len(to) :])
        return set(to)

    async with running(Settings.from_env(campaigns_env(EVENTLINE_CAMPAIGNS_FANOUT_BATCH="100"))) as served:
        await _start_sale(served, ingestion, sale)
        opened = []
        for threshold in (200, 600, 1000):
            await wait_until(lambda n=threshold: len(http_provider.requests) >= n, 60, "the fan-out stalled")
            opened.append(http_provider.connections)
            for writer in list(http_provider.open):
                writer.transport.abort()  # a reset, possibly after the request was read
        received_at_last_cut = len(phones())
        await wait_until(lambda: len(phones()) == len(rows), 300, "the fan-out did not complete")
        await asyncio.sleep(0.5)  # a late different message would arrive now
    keys_by_phone: dict[str, set[str]] = {}
    for _, headers, body in http_provider.requests:
        keys_by_phone.setdefault(json.loads(body)["to"], set()).add(headers["idempotency-key"])
    assert len(keys_by_phone) == len(rows)
    assert all(len(keys) == 1 for keys in keys_by_phone.values()), "a customer got two different messages"
    assert opened[0] < opened[1] < opened[2] < http_provider.connections, "cut connections were replaced"
    assert received_at_last_cut < len(rows), "the cuts came after the fan-out; the test proves nothing"
    assert await delivery_statuses(db) == {2: len(rows)}
