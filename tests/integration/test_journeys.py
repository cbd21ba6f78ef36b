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
from eventline_cli.demo_campaigns import on_customer_event
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
        trigger=on_customer_event("cart_updated"),
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
            trigger=on_customer_event("signed_up"),
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


async def test_a_welcome_series_over_three_days_defers_quiet_hours_across_a_dst_change(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    """Quiet hours 21:00-09:00 in Europe/Paris (the customer's time zone); Paris leaves summer
    time on 2026-10-25 (03:00 CEST becomes 02:00 CET). The welcome e-mail due at 22:30 CEST
    goes at 09:00 CEST; the tips due a day later at 08:00 CET (07:00 UTC, one hour earlier
    in local time than the day before) wait for 09:00 CET = 08:00 UTC; the offer a day
    later is outside quiet hours. Nothing is dropped; the ledger says why it waited."""
    clock = ManualClock(dt.datetime(2026, 10, 23, 20, 30, tzinfo=dt.UTC))  # 22:30 CEST
    async with service(campaigns_env, clock) as (served, campaigns):
        await customer(ingestion, "paris", time_zone="Europe/Paris")
        series = campaigns_pb2.Campaign(
            display_name="Welcome series",
            trigger=on_customer_event("signed_up"),
            entry_rule=campaigns_pb2.ENTRY_RULE_ONCE_EVER,
            default_time_zone="America/New_York",
            quiet_hours=campaigns_pb2.QuietHours(start="21:00", end="09:00"),
            steps=[
                email("welcome", "Welcome", "day1"),
                wait("day1", DAY, "tips"),
                email("tips", "Tips", "day2"),
                wait("day2", DAY, "offer"),
                email("offer", "Offer"),
            ],
        )
        await start(campaigns, series, "welcome")
        await track(served, ingestion, "paris", "signed_up", "signup")
        assert await ledger(campaigns, "welcome") == [], "22:30 local is quiet: deferred, not sent"
        assert by_step(await stats(campaigns, "welcome"))["welcome"].deferred == 1

        async def sent_at(instant: dt.datetime) -> list[str]:
            clock.set(instant - dt.timedelta(seconds=1))
            assert await served.journeys.run_due() == 0, f"nothing due before {instant}"
            clock.set(instant)
            await served.journeys.run_due()
            reply = await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(campaign_id="welcome"))
            return [d.event_id for d in reply.deliveries]

        assert await sent_at(dt.datetime(2026, 10, 24, 7, 0, tzinfo=dt.UTC)) == [
            "signup/welcome"
        ]  # 09:00 CEST
        # A day later is 07:00 UTC = 08:00 CET (after the change): quiet until 09:00 CET = 08:00 UTC.
        clock.set(dt.datetime(2026, 10, 25, 7, 0, tzinfo=dt.UTC))
        await served.journeys.run_due()
        assert len(await ledger(campaigns, "welcome")) == 1
        assert await sent_at(dt.datetime(2026, 10, 25, 8, 0, tzinfo=dt.UTC)) == [
            "signup/tips",
            "signup/welcome",
        ]
        assert await sent_at(dt.datetime(2026, 10, 26, 8, 0, tzinfo=dt.UTC)) == [
            "signup/offer",
            "signup/tips",
            "signup/welcome",
        ]
        await smtp_server.wait_for(3)
        reply = await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(campaign_id="welcome"))
        reasons = {d.event_id: d.reason for d in reply.deliveries}
        assert all(d.status == campaigns_pb2.DELIVERY_STATUS_SENT for d in reply.deliveries)
        assert reasons["signup/welcome"] == (
            "deferred by quiet hours: due 2026-10-23 22:30 Europe/Paris, sent at 2026-10-24 09:00"
        )
        assert reasons["signup/tips"].startswith("deferred by quiet hours: due 2026-10-25 08:00 Europe/Paris")
        assert reasons["signup/offer"] == ""
        # Entered once ever: signing up again starts nothing.
        await track(served, ingestion, "paris", "signed_up", "signup-again")
        assert by_step(await stats(campaigns, "welcome"))["welcome"].entered == 1


async def test_split_assignments_are_recorded_and_counted_per_variant(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, db
) -> None:
    """200 customers through a 50/40/10 split (10 a holdout control group): each assignment is
    recorded once, matches the deterministic assignment function, and the control group gets
    nothing."""
    from eventline_campaigns.journey_model import Variant, assign_variant

    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        split = campaigns_pb2.Campaign(
            display_name="Split",
            trigger=on_customer_event("joined"),
            steps=[
                campaigns_pb2.Step(
                    step_id="ab",
                    split=campaigns_pb2.SplitStep(
                        variants=[
                            campaigns_pb2.SplitVariant(name="a", weight=50, next_step_id="wait_a"),
                            campaigns_pb2.SplitVariant(name="b", weight=40, next_step_id="wait_b"),
                            campaigns_pb2.SplitVariant(name="holdout", weight=10, control=True),
                        ]
                    ),
                ),
                wait("wait_a", DAY),
                wait("wait_b", DAY),
            ],
        )
        await start(campaigns, split, "split")
        ids = [f"s{i:03d}" for i in range(200)]
        await db.copy_records_to_table("customers", records=[(c,) for c in ids], columns=["customer_id"])
        events = [
            (await ingestion.TrackCustomerEvent(customer_event(c, "joined", f"j-{c}"))).event for c in ids
        ]
        await served.engine.handle_customer_events(events)
        variants = [
            Variant("a", 50, "wait_a", False),
            Variant("b", 40, "wait_b", False),
            Variant("holdout", 10, "", True),
        ]
        expected: dict[str, int] = {}
        for c in ids:
            name = assign_variant("split", "ab", c, variants).name
            expected[name] = expected.get(name, 0) + 1
        reply = await stats(campaigns, "split")
        assert {v.variant: v.entered for v in reply.variants} == expected
        steps = by_step(reply)
        assert steps["wait_a"].waiting == expected["a"] and steps["wait_b"].waiting == expected["b"]
        assert reply.completed == expected["holdout"], "the control group ends at the split"
        recorded = await db.fetch("SELECT customer_id, outcome FROM journey_steps WHERE step_id = 'ab'")
        assert len(recorded) == 200
        assert all(
            r["outcome"] == f"variant:{assign_variant('split', 'ab', r['customer_id'], variants).name}"
            for r in recorded
        )


def doc_examples() -> list[dict[str, Any]]:
    """The YAML examples of docs/journeys.md."""
    import pathlib
    import re

    import yaml

    text = (pathlib.Path(__file__).parents[2] / "docs" / "journeys.md").read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


async def test_the_documented_journeys_are_accepted_and_the_cli_shows_the_tree(  # type: ignore[no-untyped-def]
    campaigns_server, campaigns, ingestion, tmp_path, monkeypatch
) -> None:
    import yaml
    from click.testing import CliRunner

    from eventline_cli.main import cli

    monkeypatch.setenv("EVENTLINE_CAMPAIGNS_TARGET", f"127.0.0.1:{campaigns_server.port}")

    async def run(*args: str) -> Any:
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), catch_exceptions=False)

    examples = doc_examples()
    assert [e["display_name"] for e in examples] == ["Abandoned cart", "Welcome series"]
    for example, campaign_id in zip(examples, ("abandoned_cart", "welcome"), strict=True):
        path = tmp_path / f"{campaign_id}.yaml"
        path.write_text(yaml.safe_dump(example))
        created = await run("campaigns", "create", "-f", str(path), "--id", campaign_id)
        assert created.exit_code == 0, created.output
    assert (await run("campaigns", "activate", "abandoned_cart")).exit_code == 0
    await customer(ingestion, "shopper")
    await track(campaigns_server, ingestion, "shopper", "cart_updated", "cart-1", cart_id="c1")
    shown = await run("campaigns", "journey", "abandoned_cart")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == "wait_order: wait for order_placed (1 h) — entered 1 · waiting 1"
    assert "  [timed out] reminder: send email — entered 0" in lines
    assert "    [yes] nudge: send sms — entered 0" in lines
    assert lines[-1] == "active 1 · completed 0 · exited 0 · cancelled 0 · converted 0"


async def test_an_awaited_event_takes_the_arrived_path_and_a_wait_ends_at_a_local_time(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    """Waiting for `paid` with `order_id = $order_id`: another order's event does not resume
    it, the matching one does at once (arrived path); then a wait until 10:00 in the
    customer's time zone (Asia/Tokyo, UTC+9) ends at 01:00 UTC."""
    clock = ManualClock(dt.datetime(2026, 6, 1, 3, 0, tzinfo=dt.UTC))  # 12:00 in Tokyo
    async with service(campaigns_env, clock) as (served, campaigns):
        await customer(ingestion, "tokyo", time_zone="Asia/Tokyo")
        same_order = seg.Predicate(
            field="order_id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$order_id")
        )
        journey = campaigns_pb2.Campaign(
            display_name="Thanks",
            trigger=on_customer_event("ordered"),
            steps=[
                campaigns_pb2.Step(
                    step_id="wait_paid",
                    wait_for_event=campaigns_pb2.WaitForEventStep(
                        event=campaigns_pb2.EventMatch(event_name="paid", context_predicates=[same_order]),
                        timeout=duration(DAY),
                        arrived_step_id="morning",
                    ),
                ),
                campaigns_pb2.Step(
                    step_id="morning",
                    wait=campaigns_pb2.WaitStep(until_local_time="10:00", next_step_id="thanks"),
                ),
                email("thanks", "Thank you"),
            ],
        )
        await start(campaigns, journey, "thanks")
        await track(served, ingestion, "tokyo", "ordered", "o1", order_id="A")
        await track(served, ingestion, "tokyo", "paid", "p-other", order_id="B")
        assert by_step(await stats(campaigns, "thanks"))["wait_paid"].waiting == 1, "another order's payment"
        await track(served, ingestion, "tokyo", "paid", "p-a", order_id="A")
        steps = by_step(await stats(campaigns, "thanks"))
        assert steps["wait_paid"].waiting == 0 and steps["morning"].waiting == 1
        clock.set(dt.datetime(2026, 6, 2, 0, 59, 59, tzinfo=dt.UTC))
        assert await served.journeys.run_due() == 0
        clock.set(dt.datetime(2026, 6, 2, 1, 0, tzinfo=dt.UTC))  # 10:00 in Tokyo
        assert await served.journeys.run_due() == 1
        await smtp_server.wait_for(1)
        assert [d[:2] for d in await ledger(campaigns, "thanks")] == [("tokyo", "o1/thanks")]
        assert (await stats(campaigns, "thanks")).completed == 1


async def test_a_skipped_send_is_counted_with_its_reason_and_the_journey_goes_on(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, db
) -> None:
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        await db.execute("INSERT INTO customers (customer_id) VALUES ('silent')")  # no address, no consent
        journey = campaigns_pb2.Campaign(
            display_name="Nudge",
            trigger=on_customer_event("idle"),
            steps=[sms("text", "Hello", "later"), wait("later", HOUR)],
        )
        await start(campaigns, journey, "nudge")
        await track(served, ingestion, "silent", "idle", "i1")
        steps = by_step(await stats(campaigns, "nudge"))
        assert (steps["text"].entered, steps["text"].sent, steps["text"].skipped) == (1, 0, 1)
        assert dict(steps["text"].reasons) == {"no SMS consent": 1}
        assert steps["later"].waiting == 1, "a skipped message does not stop the journey"
        assert await ledger(campaigns, "nudge") == [
            ("silent", "i1/text", "CHANNEL_SMS", "DELIVERY_STATUS_SKIPPED")
        ]


async def test_a_step_whose_work_fails_keeps_its_timer_and_the_others_go_on(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server, db
) -> None:
    """Segmentation unreachable when a branch falls due: that step is not recorded and keeps its
    claimed timer (it runs again once the claim's lease ends); a wait and a send of another
    journey in the same batch go on."""
    clock = ManualClock()
    branchy = campaigns_pb2.Campaign(
        display_name="Branchy",
        trigger=on_customer_event("went"),
        steps=[
            wait("first", HOUR, "ask"),
            campaigns_pb2.Step(
                step_id="ask",
                branch=campaigns_pb2.BranchStep(
                    filter=seg.Filter(customer=seg.CustomerCondition(has_address=seg.CHANNEL_EMAIL)),
                    yes_step_id="mail",
                ),
            ),
            email("mail", "Branched"),
        ],
    )
    plain = campaigns_pb2.Campaign(
        display_name="Plain",
        trigger=on_customer_event("went"),
        steps=[wait("first", HOUR, "mail"), email("mail", "Plain")],
    )
    async with service(campaigns_env, clock) as (served, campaigns):
        await customer(ingestion, "walker")
        await start(campaigns, branchy, "branchy")
        await start(campaigns, plain, "plain")
        await track(served, ingestion, "walker", "went", "w1")
    clock.advance(2 * HOUR)
    cut_off = campaigns_env(EVENTLINE_SEGMENTATION_ADDR="127.0.0.1:9")
    async with running(Settings.from_env(cut_off), consume=False, clock=clock) as served:
        assert await served.journeys.run_due() == 2
    await smtp_server.wait_for(1)
    assert [str(m["Subject"]) for m in smtp_server.messages] == ["Plain"]
    at = {
        r["campaign_id"]: r["step_id"]
        for r in await db.fetch("SELECT campaign_id, step_id FROM journey_instances")
    }
    assert at == {"branchy": "ask", "plain": "mail"}
    assert await db.fetchval("SELECT count(*) FROM journey_timers WHERE campaign_id = 'branchy'") == 1
    assert await db.fetchval("SELECT outcome FROM journey_steps WHERE step_id = 'ask'") is None


async def test_an_exit_event_in_the_same_batch_as_the_trigger_ends_the_new_instance(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion
) -> None:
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        await customer(ingestion, "quick")
        await start(campaigns, abandoned_cart(), "cart")
        cart = (
            await ingestion.TrackCustomerEvent(customer_event("quick", "cart_updated", "c", cart_id="q"))
        ).event
        paid = (
            await ingestion.TrackCustomerEvent(customer_event("quick", "order_placed", "o", cart_id="q"))
        ).event
        await served.engine.handle_customer_events([cart, paid])  # one stream batch, in order
        reply = await stats(campaigns, "cart")
        assert (reply.active, reply.exited, reply.converted) == (0, 1, 1)


async def test_journey_sends_keep_the_caps_across_campaigns(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    """A journey's send step is a marketing message like any other: with one e-mail a week
    allowed, a journey's e-mail after a one-step campaign's is skipped with the cap's reason."""
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        await customer(ingestion, "capped")
        window = duration(7 * DAY)
        await campaigns.SetChannelCaps(
            campaigns_pb2.SetChannelCapsRequest(
                caps=[
                    campaigns_pb2.ChannelCap(channel=campaigns_pb2.CHANNEL_EMAIL, max_sends=1, window=window)
                ]
            )
        )
        news = campaigns_pb2.Campaign(
            display_name="News",
            trigger=on_customer_event("visited"),
            actions=[campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="News", text_body="n"))],
        )
        await start(campaigns, news, "news")
        series = campaigns_pb2.Campaign(
            display_name="Series",
            trigger=on_customer_event("signed_up"),
            steps=[wait("pause", HOUR, "hello"), email("hello", "Hello")],
        )
        await start(campaigns, series, "series")
        await served.cache.refresh()

        await track(served, ingestion, "capped", "visited", "v1")
        await smtp_server.wait_for(1)
        await track(served, ingestion, "capped", "signed_up", "s1")
        clock.advance(HOUR)
        assert await served.journeys.run_due() == 1
        reply = await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(campaign_id="series"))
        [delivery] = reply.deliveries
        assert (delivery.event_id, delivery.status, delivery.reason) == (
            "s1/hello",
            campaigns_pb2.DELIVERY_STATUS_SKIPPED,
            "channel cap: 1 e-mail messages per 7 days",
        )
        assert by_step(await stats(campaigns, "series"))["hello"].skipped == 1
        assert [m["Subject"] for m in smtp_server.messages] == ["News"]


async def test_a_paused_journey_still_exits_and_converts_its_instances(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server
) -> None:
    """Pausing holds instances where they are, but a customer who orders meanwhile has left the
    journey (exit event) and converted (goal): resuming sends them nothing. Even with no other
    journey active, the paused one hears its events."""
    clock = ManualClock()
    async with service(campaigns_env, clock) as (served, campaigns):
        for name in ("waits", "orders"):
            await customer(ingestion, name)
        await start(campaigns, abandoned_cart(), "cart")
        for name in ("waits", "orders"):
            await track(served, ingestion, name, "cart_updated", f"cart-{name}", cart_id=f"c-{name}")
        await campaigns.PauseCampaign(campaigns_pb2.PauseCampaignRequest(campaign_id="cart"))
        await track(served, ingestion, "orders", "order_placed", "order-1", cart_id="c-orders")
        reply = await stats(campaigns, "cart")
        assert (reply.active, reply.exited, reply.converted) == (1, 1, 1)

        await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id="cart"))
        clock.advance(2 * HOUR)
        assert await served.journeys.run_due() == 1
        await smtp_server.wait_for(1)
        assert [d[:2] for d in await ledger(campaigns, "cart")] == [("waits", "cart-waits/reminder")]
