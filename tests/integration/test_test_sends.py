"""Test sends (issue 14, item 8): a campaign's message to an address the caller gives.

Through the real SMTP test server and HTTP provider; recorded apart from the ledger, so
never in the stats, the caps or ListDeliveries.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.protobuf import duration_pb2

from eventline_cli import demo_campaigns
from tests.conftest import HttpProvider, SmtpInbox
from tests.support import customer_event, value, violations

GRANTED = common_pb2.CONSENT_GRANTED
EMAIL = campaigns_pb2.CHANNEL_EMAIL
SMS = campaigns_pb2.CHANNEL_SMS


def welcome() -> campaigns_pb2.Campaign:
    campaign = demo_campaigns.email_campaign(
        demo_campaigns.on_customer_event("SignedUp"),
        None,
        display_name="Welcome",
        subject="Welcome {{ client.attributes.first_name }}",
        text_body="Your code is {{ client.eventContext.code }}, {{ client.email }}",
    )
    campaign.actions.append(
        campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="Code {{ client.eventContext.code }}"))
    )
    return campaign


async def create(campaigns: campaigns_pb2_grpc.CampaignServiceStub, campaign: campaigns_pb2.Campaign) -> str:
    created = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
    return str(created.campaign.campaign_id)


async def sample_customer(ingestion: Any) -> None:
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id="sample",
                email="sample@example.com",
                phone="+15550001111",
                email_consent=common_pb2.CONSENT_DENIED,  # a test send is to the caller's address
                attributes={"first_name": value("Sam")},
            )
        )
    )


async def test_a_test_email_arrives_rendered_for_the_sample_customer_and_counts_nowhere(
    campaigns: campaigns_pb2_grpc.CampaignServiceStub,
    campaigns_server: Any,
    ingestion: Any,
    smtp_server: SmtpInbox,
    db: asyncpg.Connection,
) -> None:
    await sample_customer(ingestion)
    campaign_id = await create(campaigns, welcome())  # a draft can be tried before it goes live
    window = duration_pb2.Duration(seconds=7 * 86400)
    await campaigns.SetChannelCaps(
        campaigns_pb2.SetChannelCapsRequest(
            caps=[campaigns_pb2.ChannelCap(channel=EMAIL, max_sends=1, window=window)]
        )
    )
    request = campaigns_pb2.SendTestMessageRequest(
        campaign_id=campaign_id,
        channel=EMAIL,
        address="Marketer@Example.com",
        sample_customer_id="sample",
        context={"code": value("X42")},
    )
    reply = await campaigns.SendTestMessage(request)
    sent = reply.test_delivery
    assert (sent.status, sent.reason, sent.address, sent.channel) == (
        campaigns_pb2.DELIVERY_STATUS_SENT,
        "",
        "marketer@example.com",
        EMAIL,
    )
    await smtp_server.wait_for(1)
    [message] = smtp_server.messages
    assert message["To"] == "marketer@example.com"
    assert message["Subject"] == "Welcome Sam"
    assert "Your code is X42, sample@example.com" in message.get_content()
    assert message["Message-ID"].startswith(f"<delivery-{sent.test_delivery_id}@")
    assert message["List-Unsubscribe"] is None

    # Never in the ledger, the stats or the caps.
    stats = await campaigns.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id))
    assert (stats.pending, stats.sent, stats.failed, stats.skipped) == (0, 0, 0, 0)
    listed = await campaigns.ListDeliveries(campaigns_pb2.ListDeliveriesRequest(campaign_id=campaign_id))
    assert list(listed.deliveries) == []
    assert await db.fetchval("SELECT count(*) FROM channel_sends") == 0
    assert await db.fetchval("SELECT status FROM test_deliveries") == campaigns_pb2.DELIVERY_STATUS_SENT
    # With the cap of one e-mail a week, the sample customer still gets the campaign's real one.
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id="sample",
                email="sample@example.com",
                email_consent=GRANTED,
                attributes={"first_name": value("Sam")},
            )
        )
    )
    await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))
    await campaigns_server.cache.refresh()
    event = (await ingestion.TrackCustomerEvent(customer_event("sample", "SignedUp", code="Y7"))).event
    await campaigns_server.engine.handle_customer_events([event])
    await smtp_server.wait_for(2)
    assert smtp_server.messages[1]["To"] == "sample@example.com"
    stats = await campaigns.GetCampaignStats(campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id))
    assert stats.sent == 1


async def test_a_test_sms_goes_to_the_sms_provider_unless_the_number_is_suppressed(
    campaigns: campaigns_pb2_grpc.CampaignServiceStub, ingestion: Any, http_provider: HttpProvider
) -> None:
    await sample_customer(ingestion)
    campaign_id = await create(campaigns, welcome())
    request = campaigns_pb2.SendTestMessageRequest(
        campaign_id=campaign_id,
        channel=SMS,
        address="+15559990000",
        sample_customer_id="sample",
        context={"code": value("Z9")},
    )
    reply = await campaigns.SendTestMessage(request)
    assert reply.test_delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT
    [(path, headers, body)] = http_provider.requests
    assert path == "/sms"
    assert headers["idempotency-key"] == reply.test_delivery.test_delivery_id
    assert json.loads(body)["to"] == "+15559990000"
    assert json.loads(body)["text"] == "Code Z9"
    # A suppressed address is skipped, as a delivery to it would be.
    await campaigns.CreateSuppression(
        campaigns_pb2.CreateSuppressionRequest(
            suppression=campaigns_pb2.Suppression(channel=SMS, address="+15559990000")
        )
    )
    skipped = await campaigns.SendTestMessage(request)
    assert skipped.test_delivery.status == campaigns_pb2.DELIVERY_STATUS_SKIPPED
    assert skipped.test_delivery.reason == "suppressed: added by hand"
    assert len(http_provider.requests) == 1


async def test_a_provider_refusing_a_test_send_is_a_failed_test_delivery_not_an_error(
    campaigns: campaigns_pb2_grpc.CampaignServiceStub,
    ingestion: Any,
    http_provider: HttpProvider,
    db: asyncpg.Connection,
) -> None:
    await sample_customer(ingestion)
    campaign_id = await create(campaigns, welcome())
    request = campaigns_pb2.SendTestMessageRequest(
        campaign_id=campaign_id, channel=SMS, address="+15559990000", sample_customer_id="sample"
    )
    # Without the context its template needs, nothing is sent.
    reply = await campaigns.SendTestMessage(request)
    assert reply.test_delivery.status == campaigns_pb2.DELIVERY_STATUS_FAILED
    assert (
        reply.test_delivery.reason == "template: undefined variable: client.eventContext has no field 'code'"
    )
    assert http_provider.requests == []
    # The provider refuses the number.
    http_provider.status = "400 Bad Request"
    http_provider.reply_body = b"no such number"
    request.context["code"].CopyFrom(value("1"))
    reply = await campaigns.SendTestMessage(request)
    assert reply.test_delivery.status == campaigns_pb2.DELIVERY_STATUS_FAILED
    assert reply.test_delivery.reason == "provider: provider replied 400: no such number"
    assert len(http_provider.requests) == 1
    reasons = await db.fetch("SELECT reason FROM test_deliveries ORDER BY test_delivery_id")
    assert [r[0] for r in reasons][1] == reply.test_delivery.reason


async def test_bad_test_sends_are_refused_with_the_field_at_fault(
    campaigns: campaigns_pb2_grpc.CampaignServiceStub, ingestion: Any, smtp_server: SmtpInbox
) -> None:
    await sample_customer(ingestion)
    campaign_id = await create(campaigns, welcome())

    async def refused(**fields: Any) -> tuple[grpc.StatusCode, dict[str, str]]:
        request = campaigns_pb2.SendTestMessageRequest(
            **{
                "campaign_id": campaign_id,
                "sample_customer_id": "sample",
                "address": "a@example.com",
                **fields,
            }
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await campaigns.SendTestMessage(request)
        code = error.value.code()
        return code, violations(error.value) if code == grpc.StatusCode.INVALID_ARGUMENT else {}

    assert (await refused(campaign_id="nope", channel=EMAIL))[0] == grpc.StatusCode.NOT_FOUND
    assert (await refused(sample_customer_id="nobody", channel=EMAIL))[0] == grpc.StatusCode.NOT_FOUND
    code, fields = await refused(channel=EMAIL, address="not-an-address")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(fields) == {"address"}
    code, fields = await refused(channel=SMS, address="a@example.com")
    assert set(fields) == {"address"}, fields
    code, fields = await refused()  # two channels: which one?
    assert set(fields) == {"channel"}
    code, fields = await refused(channel=campaigns_pb2.CHANNEL_PUSH, address="token")
    assert set(fields) == {"channel"}  # the campaign has no push message
    code, fields = await refused(channel=EMAIL, step_id="no such step")
    assert set(fields) == {"step_id"}  # the campaign has no steps
    code, fields = await refused(channel=EMAIL, address="", step_id="bad step!", campaign_id="bad id")
    assert set(fields) == {"address", "step_id", "campaign_id"}
    assert smtp_server.messages == []


async def test_a_journey_step_is_previewed_and_test_sent_by_its_step_id(
    campaigns: campaigns_pb2_grpc.CampaignServiceStub, ingestion: Any, smtp_server: SmtpInbox
) -> None:
    await sample_customer(ingestion)
    wait = duration_pb2.Duration(seconds=86400)
    journey = campaigns_pb2.Campaign(
        display_name="Series",
        trigger=demo_campaigns.on_customer_event("SignedUp"),
        steps=[
            campaigns_pb2.Step(
                step_id="day_1",
                send=campaigns_pb2.SendStep(
                    action=campaigns_pb2.Action(
                        email=campaigns_pb2.EmailAction(
                            subject="Day one, {{ client.attributes.first_name }}",
                            text_body="code {{ client.eventContext.code }}",
                        )
                    ),
                    next_step_id="later",
                ),
            ),
            campaigns_pb2.Step(
                step_id="later", wait=campaigns_pb2.WaitStep(duration=wait, next_step_id="day_2")
            ),
            campaigns_pb2.Step(
                step_id="day_2",
                send=campaigns_pb2.SendStep(
                    action=campaigns_pb2.Action(
                        email=campaigns_pb2.EmailAction(subject="Day two", text_body="two")
                    )
                ),
            ),
        ],
    )
    campaign_id = await create(campaigns, journey)
    preview = await campaigns.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(
            campaign_id=campaign_id, customer_id="sample", context={"code": value("Q1")}, step_id="day_1"
        )
    )
    [rendered] = preview.messages
    assert (rendered.subject, rendered.text_body) == ("Day one, Sam", "code Q1")
    reply = await campaigns.SendTestMessage(
        campaigns_pb2.SendTestMessageRequest(
            campaign_id=campaign_id, step_id="day_2", address="qa@example.com", sample_customer_id="sample"
        )
    )
    assert (reply.test_delivery.status, reply.test_delivery.step_id) == (
        campaigns_pb2.DELIVERY_STATUS_SENT,
        "day_2",
    )
    await smtp_server.wait_for(1)
    assert [m["Subject"] for m in smtp_server.messages] == ["Day two"]
    for step_id in ("later", "nowhere"):  # a wait step has no message; an unknown step none either
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await campaigns.SendTestMessage(
                campaigns_pb2.SendTestMessageRequest(
                    campaign_id=campaign_id,
                    step_id=step_id,
                    address="qa@example.com",
                    sample_customer_id="sample",
                )
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(violations(error.value)) == {"step_id"}
