"""Campaigns triggered by real-time segments (``SegmentTrigger``), reached by a profile change
alone: UpsertCustomer → ingestion's profile notice → segmentation records the transition and
NOTIFYs → the relay publishes it without waiting for its poll → the campaign sends."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from eventline_cli import demo_campaigns
from tests.support import attribute_equals, customer_event, eventually, violations

GOLD = attribute_equals("plan", "gold")


def on_segment(segment_id: str, on: int) -> campaigns_pb2.Trigger:
    return campaigns_pb2.Trigger(segment=campaigns_pb2.SegmentTrigger(segment_id=segment_id, on=on))  # type: ignore[arg-type]


def mail(trigger: campaigns_pb2.Trigger, subject: str) -> campaigns_pb2.Campaign:
    return demo_campaigns.email_campaign(
        trigger,
        None,
        display_name=subject,
        subject=subject,
        text_body="{{ client.eventContext.segment_name }}",
    )


async def save_segment(segmentation: Any, segment_id: str, realtime: bool) -> None:
    await segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id=segment_id, segment=pb.Segment(display_name="Gold", filter=GOLD, realtime=realtime)
        )
    )


async def set_plan(ingestion: Any, customer_id: str, plan: str) -> None:
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id=customer_id,
                email=f"{customer_id}@example.com",
                email_consent=common_pb2.CONSENT_GRANTED,
                attributes={"plan": common_pb2.Value(string_value=plan)},
            )
        )
    )


async def test_a_segment_trigger_sends_when_the_customer_enters_and_when_they_exit(  # type: ignore[no-untyped-def]
    campaigns_server, campaigns, segmentation_server, segmentation, ingestion, smtp_server
) -> None:
    await save_segment(segmentation, "gold", realtime=True)
    await segmentation_server.realtime.backfill_all()
    for trigger, subject in (
        (on_segment("gold", pb.TRANSITION_KIND_ENTERED), "Welcome to gold"),
        (on_segment("gold", pb.TRANSITION_KIND_EXITED), "Sorry to see you go"),
    ):
        created = await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(campaign=mail(trigger, subject))
        )
        assert created.campaign.trigger == trigger
        await campaigns.ActivateCampaign(
            campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
        )
    await campaigns_server.cache.refresh()

    async def subjects(count: int) -> bool:
        # No event of the customer: the profile notice alone moves membership. The relay runs
        # in the background; segmentation's rows reach the stream through its NOTIFY.
        await segmentation_server.consumer.drain()
        await campaigns_server.consumer.drain()
        return len(smtp_server.messages) >= count

    await set_plan(ingestion, "g1", "gold")
    await eventually(lambda: subjects(1), 60, "no message when the customer entered")
    assert [m["Subject"] for m in smtp_server.messages] == ["Welcome to gold"]
    assert smtp_server.messages[0]["To"] == "g1@example.com"

    await set_plan(ingestion, "g1", "silver")
    await eventually(lambda: subjects(2), 60, "no message when the customer exited")
    assert [m["Subject"] for m in smtp_server.messages] == ["Welcome to gold", "Sorry to see you go"]

    # An event that changes nothing sends nothing more.
    await ingestion.TrackCustomerEvent(customer_event("g1", "login"))
    await segmentation_server.consumer.drain()
    await campaigns_server.consumer.drain()
    assert len(smtp_server.messages) == 2


@pytest.mark.parametrize(
    ("segment", "on", "path", "says"),
    [
        ("missing", pb.TRANSITION_KIND_ENTERED, "campaign.trigger.segment.segment_id", "does not exist"),
        (
            "plain",
            pb.TRANSITION_KIND_ENTERED,
            "campaign.trigger.segment.segment_id",
            "not a real-time segment",
        ),
        ("gold", pb.TRANSITION_KIND_UNSPECIFIED, "campaign.trigger.segment.on", "TRANSITION_KIND_ENTERED"),
        ("", pb.TRANSITION_KIND_EXITED, "campaign.trigger.segment.segment_id", "required"),
    ],
)
async def test_a_segment_trigger_needs_an_existing_real_time_segment(  # type: ignore[no-untyped-def]
    campaigns, segmentation, segment: str, on: int, path: str, says: str
) -> None:
    await save_segment(segmentation, "gold", realtime=True)
    await save_segment(segmentation, "plain", realtime=False)
    campaign = mail(on_segment(segment, on), "Hello")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(refused.value)
    assert list(found) == [path]
    assert says in found[path]

    # The same check on update, when the mask names the trigger.
    created = await campaigns.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(
            campaign=mail(on_segment("gold", pb.TRANSITION_KIND_ENTERED), "Hi")
        )
    )
    changed = campaigns_pb2.Campaign(campaign_id=created.campaign.campaign_id, trigger=campaign.trigger)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await campaigns.UpdateCampaign(
            campaigns_pb2.UpdateCampaignRequest(campaign=changed, update_mask={"paths": ["trigger"]})
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(refused.value)) == [path]


@pytest.mark.parametrize("name", ["segment_entered", "segment_exited"])
async def test_clients_cannot_send_the_transition_event_names(ingestion, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ingestion.TrackCustomerEvent(customer_event("c1", name))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reserved" in violations(refused.value)["name"]

    batch = ingestion_pb2.TrackEventsRequest(
        events=[
            ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", "login")),
            ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", name)),
        ]
    )
    reply = await ingestion.TrackEvents(batch)
    assert reply.results[0].HasField("event")
    assert reply.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = error_details_pb2.BadRequest()
    assert reply.results[1].error.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["events[1].customer_event.name"]


async def test_entering_a_segment_starts_a_journey(  # type: ignore[no-untyped-def]
    campaigns_server, campaigns, segmentation_server, segmentation, ingestion, smtp_server
) -> None:
    await save_segment(segmentation, "gold", realtime=True)
    await segmentation_server.realtime.backfill_all()
    journey = mail(on_segment("gold", pb.TRANSITION_KIND_ENTERED), "unused")
    welcome = journey.actions.pop()
    welcome.email.subject = "Welcome to {{ client.eventContext.segment_name }}"
    journey.steps.extend(
        [
            campaigns_pb2.Step(
                step_id="welcome", send=campaigns_pb2.SendStep(action=welcome, next_step_id="later")
            ),
            campaigns_pb2.Step(
                step_id="later",
                wait=campaigns_pb2.WaitStep(duration=Duration(seconds=86400), next_step_id="tips"),
            ),
            campaigns_pb2.Step(step_id="tips", send=campaigns_pb2.SendStep(action=welcome)),
        ]
    )
    created = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=journey))
    campaign_id = created.campaign.campaign_id
    await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))
    await campaigns_server.cache.refresh()

    async def welcomed() -> bool:
        await segmentation_server.consumer.drain()
        await campaigns_server.consumer.drain()
        await campaigns_server.journeys.run_due()
        return len(smtp_server.messages) >= 1

    await set_plan(ingestion, "j1", "gold")
    await eventually(welcomed, 60, "the journey's first step sent nothing")
    assert [m["Subject"] for m in smtp_server.messages] == ["Welcome to Gold"]
    stats = await campaigns.GetJourneyStats(campaigns_pb2.GetJourneyStatsRequest(campaign_id=campaign_id))
    steps = {s.step_id: s for s in stats.steps}
    assert (stats.active, steps["welcome"].sent, steps["later"].waiting) == (1, 1, 1)
