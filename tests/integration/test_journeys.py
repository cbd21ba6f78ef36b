"""Journeys through all services: waits, waits for events, branches, splits, exits, entry rules,
pause/resume/archive, versions and quiet hours, with the clock the test moves (no sleeping)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2 as seg
from google.protobuf import duration_pb2, field_mask_pb2

from eventline_campaigns.service import RunningCampaigns, running
from eventline_campaigns.settings import Settings
from eventline_shared.clock import ManualClock
from tests.support import customer_event, value, violations

GRANTED = common_pb2.CONSENT_GRANTED
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def duration(delta: dt.timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(delta)
    return out


def email(step_id: str, subject: str, next_step: str = "") -> campaigns_pb2.Step:
    action = campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject=subject, text_body=subject))
    return campaigns_pb2.Step(
        step_id=step_id, send=campaigns_pb2.SendStep(action=action, next_step_id=next_step)
    )


def sms(step_id: str, text: str, next_step: str = "") -> campaigns_pb2.Step:
    action = campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text=text))
    return campaigns_pb2.Step(
        step_id=step_id, send=campaigns_pb2.SendStep(action=action, next_step_id=next_step)
    )


def wait(step_id: str, delta: dt.timedelta, next_step: str = "") -> campaigns_pb2.Step:
    return campaigns_pb2.Step(
        step_id=step_id, wait=campaigns_pb2.WaitStep(duration=duration(delta), next_step_id=next_step)
    )


def same_cart(event_name: str) -> campaigns_pb2.EventMatch:
    return campaigns_pb2.EventMatch(
        event_name=event_name,
        context_predicates=[
            seg.Predicate(
                field="cart_id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$cart_id")
            )
        ],
    )


def abandoned_cart() -> campaigns_pb2.Campaign:
    """cart_updated → wait for order_placed (same cart) 1 h → timed out: e-mail → wait 1 day →
    branch "still no order" → SMS; exit on order_placed (same cart)."""
    no_order = seg.Filter(
        event=seg.EventCondition(name="order_placed", count=seg.CountTest(at_most=0)),
    )
    return campaigns_pb2.Campaign(
        display_name="Abandoned cart",
        trigger=campaigns_pb2.Trigger(
            customer_event=campaigns_pb2.CustomerEventTrigger(event_name="cart_updated")
        ),
        entry_rule=campaigns_pb2.ENTRY_RULE_ONCE_AT_A_TIME,
        steps=[
            campaigns_pb2.Step(
                step_id="wait_order",
                wait_for_event=campaigns_pb2.WaitForEventStep(
                    event=same_cart("order_placed"), timeout=duration(HOUR), timed_out_step_id="reminder"
                ),
            ),
            email("reminder", "Your cart {{ client.eventContext.cart_id }} is waiting", "one_day"),
            wait("one_day", DAY, "still_no_order"),
            campaigns_pb2.Step(
                step_id="still_no_order",
                branch=campaigns_pb2.BranchStep(filter=no_order, yes_step_id="nudge"),
            ),
            sms("nudge", "Still thinking about cart {{ client.eventContext.cart_id }}?"),
        ],
        exit_event=same_cart("order_placed"),
        goal=campaigns_pb2.Goal(
            event=campaigns_pb2.EventMatch(event_name="order_placed"), window=duration(7 * DAY)
        ),
    )


@asynccontextmanager
async def service(campaigns_env: Any, clock: ManualClock) -> AsyncIterator[tuple[RunningCampaigns, Any]]:
    async with running(Settings.from_env(campaigns_env()), consume=False, clock=clock) as served:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            yield served, campaigns_pb2_grpc.CampaignServiceStub(channel)


async def start(campaigns: Any, campaign: campaigns_pb2.Campaign, campaign_id: str) -> None:
    await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=campaign, campaign_id=campaign_id)
    )
    await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))


async def customer(ingestion: Any, customer_id: str, **attributes: Any) -> None:
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id=customer_id,
                email=f"{customer_id}@example.com",
                phone="+33600000000",
                email_consent=GRANTED,
                sms_consent=GRANTED,
                attributes={k: value(v) for k, v in attributes.items()},
            )
        )
    )


async def track(
    served: RunningCampaigns, ingestion: Any, customer_id: str, name: str, event_id: str, **context: Any
) -> None:
    reply = await ingestion.TrackCustomerEvent(customer_event(customer_id, name, event_id, **context))
    await served.engine.handle_customer_events([reply.event])


async def ledger(campaigns: Any, campaign_id: str) -> list[tuple[str, str, str, str]]:
    reply = await campaigns.ListDeliveries(
        campaigns_pb2.ListDeliveriesRequest(campaign_id=campaign_id, page_size=1000)
    )
    return sorted(
        (
            d.customer_id,
            d.event_id,
            campaigns_pb2.Channel.Name(d.channel),
            campaigns_pb2.DeliveryStatus.Name(d.status),
        )
        for d in reply.deliveries
    )


async def stats(campaigns: Any, campaign_id: str) -> campaigns_pb2.GetJourneyStatsResponse:
    return await campaigns.GetJourneyStats(campaigns_pb2.GetJourneyStatsRequest(campaign_id=campaign_id))


def by_step(reply: campaigns_pb2.GetJourneyStatsResponse) -> dict[str, campaigns_pb2.StepStats]:
    return {s.step_id: s for s in reply.steps}


async def test_the_abandoned_cart_journey_end_to_end(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server, http_provider
) -> None:
    """Three carts: one never ordered (e-mail after 1 h, SMS a day later), one ordered within
    the hour (exits at once, nothing sent, converted), one ordered another cart (the exit and
    the wait do not match it: e-mail, then the branch says no: no SMS)."""
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        for name in ("never", "buyer", "other"):
            await customer(ingestion, name)
        await start(campaigns, abandoned_cart(), "cart")
        for name in ("never", "buyer", "other"):
            await track(served, ingestion, name, "cart_updated", f"cart-{name}", cart_id=f"c-{name}")
        # A second trigger while the first instance is active does not enter again.
        await track(served, ingestion, "never", "cart_updated", "cart-never-again", cart_id="c-never")
        assert (await stats(campaigns, "cart")).active == 3
        assert by_step(await stats(campaigns, "cart"))["wait_order"].waiting == 3

        clock.advance(dt.timedelta(minutes=30))
        await track(served, ingestion, "buyer", "order_placed", "order-buyer", cart_id="c-buyer")
        await track(served, ingestion, "other", "order_placed", "order-other", cart_id="c-elsewhere")
        assert await served.journeys.run_due() == 0, "nothing is due before the hour"
        assert await ledger(campaigns, "cart") == []

        clock.advance(dt.timedelta(minutes=31))
        assert await served.journeys.run_due() == 2
        await smtp_server.wait_for(2)
        assert [d[:3] for d in await ledger(campaigns, "cart")] == [
            ("never", "cart-never/reminder", "CHANNEL_EMAIL"),
            ("other", "cart-other/reminder", "CHANNEL_EMAIL"),
        ]
        subjects = sorted(str(m["Subject"]) for m in smtp_server.messages)
        assert subjects == ["Your cart c-never is waiting", "Your cart c-other is waiting"]

        clock.advance(DAY - HOUR)
        assert await served.journeys.run_due() == 0, "the day's wait is not over"
        clock.advance(HOUR)
        assert await served.journeys.run_due() == 2
        for _ in range(100):
            if http_provider.requests:
                break
            await asyncio.sleep(0.05)
        assert len(http_provider.requests) == 1 and b"c-never" in http_provider.requests[0][2]
        assert await served.journeys.run_due() == 0, "every step ran once"

        reply = await stats(campaigns, "cart")
        steps = by_step(reply)
        assert (reply.active, reply.completed, reply.exited, reply.converted) == (0, 2, 1, 2)
        assert steps["wait_order"].entered == 3 and steps["wait_order"].exited == 1
        assert (steps["reminder"].entered, steps["reminder"].sent) == (2, 2)
        assert (steps["still_no_order"].entered, steps["nudge"].sent) == (2, 1)


async def test_journey_validation_names_the_field_paths(campaigns_env) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    async with service(campaigns_env, clock) as (_, campaigns):
        bad = abandoned_cart()
        bad.steps[2].wait.duration.seconds = 0
        bad.steps[0].wait_for_event.timed_out_step_id = "nowhere"
        bad.default_time_zone = "Mars/Olympus"
        bad.quiet_hours.CopyFrom(campaigns_pb2.QuietHours(start="21:00", end="25:00"))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=bad))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = violations(error.value)
        assert "campaign.steps[2].wait.duration" in found
        assert "campaign.steps[0].wait_for_event.timed_out_step_id" in found
        assert "campaign.default_time_zone" in found
        assert "campaign.quiet_hours.end" in found

        looping = abandoned_cart()
        looping.steps[4].send.next_step_id = "reminder"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=looping))
        assert "cycle" in violations(error.value)["campaign.steps[4]"]


async def test_twenty_concurrent_triggers_enter_once_at_a_time(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion
) -> None:
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        await customer(ingestion, "eager")
        await start(campaigns, abandoned_cart(), "cart")
        events = [
            (
                await ingestion.TrackCustomerEvent(
                    customer_event("eager", "cart_updated", f"e{i}", cart_id="c")
                )
            ).event
            for i in range(20)
        ]
        # Twenty triggers handled at once, as by twenty replicas.
        await asyncio.gather(*(served.engine.handle_customer_events([e]) for e in events))
        reply = await stats(campaigns, "cart")
        assert reply.active == 1 and by_step(reply)["wait_order"].entered == 1
        # Once it ended (exit event), the next trigger enters again.
        await track(served, ingestion, "eager", "order_placed", "paid", cart_id="c")
        assert (await stats(campaigns, "cart")).exited == 1
        await track(served, ingestion, "eager", "cart_updated", "e-later", cart_id="d")
        assert (await stats(campaigns, "cart")).active == 1


async def test_pause_holds_resume_continues_archive_cancels(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        for name in ("a", "b"):
            await customer(ingestion, name)
        await start(campaigns, abandoned_cart(), "cart")
        await track(served, ingestion, "a", "cart_updated", "cart-a", cart_id="ca")
        await campaigns.PauseCampaign(campaigns_pb2.PauseCampaignRequest(campaign_id="cart"))
        clock.advance(2 * HOUR)
        assert await served.journeys.run_due() == 1
        assert await ledger(campaigns, "cart") == [], "a paused journey sends nothing"
        assert by_step(await stats(campaigns, "cart"))["wait_order"].waiting == 1, "held where it was"
        await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id="cart"))
        assert await served.journeys.run_due() == 1
        await smtp_server.wait_for(1)
        assert [d[:2] for d in await ledger(campaigns, "cart")] == [("a", "cart-a/reminder")]
        assert by_step(await stats(campaigns, "cart"))["one_day"].waiting == 1

        await campaigns.ArchiveCampaign(campaigns_pb2.ArchiveCampaignRequest(campaign_id="cart"))
        clock.advance(2 * DAY)
        assert await served.journeys.run_due() == 0, "archiving dropped the timers"
        reply = await stats(campaigns, "cart")
        assert (reply.active, reply.cancelled) == (0, 1)
        assert len(await ledger(campaigns, "cart")) == 1


async def test_instances_finish_on_the_version_they_started_on(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        for name in ("early", "late"):
            await customer(ingestion, name)
        journey = campaigns_pb2.Campaign(
            display_name="Welcome",
            trigger=campaigns_pb2.Trigger(
                customer_event=campaigns_pb2.CustomerEventTrigger(event_name="signed_up")
            ),
            steps=[wait("pause", HOUR, "hello"), email("hello", "Version one")],
        )
        await start(campaigns, journey, "welcome")
        await track(served, ingestion, "early", "signed_up", "s-early")
        changed = campaigns_pb2.Campaign(
            campaign_id="welcome", steps=[wait("pause", HOUR, "hi"), email("hi", "Version two")]
        )
        await campaigns.UpdateCampaign(
            campaigns_pb2.UpdateCampaignRequest(
                campaign=changed, update_mask=field_mask_pb2.FieldMask(paths=["steps"])
            )
        )
        await track(served, ingestion, "late", "signed_up", "s-late")
        clock.advance(2 * HOUR)
        assert await served.journeys.run_due() == 2
        await smtp_server.wait_for(2)
        by_recipient = {str(m["To"]): str(m["Subject"]) for m in smtp_server.messages}
        assert by_recipient == {"early@example.com": "Version one", "late@example.com": "Version two"}
