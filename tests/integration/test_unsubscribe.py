"""One-click unsubscribe (RFC 8058) end to end: a campaign e-mail reaches a real SMTP server
with its List-Unsubscribe headers, the test POSTs the link to the real gateway as a mailbox
provider would, and the next campaign message to that customer is skipped for lack of
consent; forged and edited tokens are refused; transactional e-mails carry no link."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_campaigns.service import running as running_campaigns
from eventline_campaigns.settings import Settings as CampaignsSettings
from eventline_gateway.service import running as running_gateway
from eventline_gateway.settings import Settings as GatewaySettings
from eventline_shared.unsubscribe import Unsubscribe, make_token
from tests.conftest import gateway_env
from tests.processes import free_port
from tests.support import Sender, upsert_contact, wait_for_entries

SECRET = "unsubscribe-secret-of-the-suite"


class Suite:
    def __init__(self, sender: Sender, base: str, session: aiohttp.ClientSession) -> None:
        self.sender, self.base, self.session = sender, base, session


@pytest.fixture
async def suite(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion_server, segmentation_server, ingestion, redis_client, stream_key
) -> AsyncIterator[Suite]:
    port = free_port()
    env = campaigns_env(
        EVENTLINE_UNSUBSCRIBE_URL=f"http://127.0.0.1:{port}",
        EVENTLINE_UNSUBSCRIBE_SECRET=SECRET,
        EVENTLINE_UNSUBSCRIBE_MAILTO="unsubscribe@shop.example",
    )
    async with (
        running_campaigns(CampaignsSettings.from_env(env), consume=False) as campaigns,
        grpc.aio.insecure_channel(f"127.0.0.1:{campaigns.port}") as channel,
        running_gateway(
            GatewaySettings.from_env(
                gateway_env(
                    ingestion_server.port,
                    segmentation_server.port,
                    campaigns.port,
                    EVENTLINE_GATEWAY_PORT=str(port),
                    EVENTLINE_UNSUBSCRIBE_SECRET=SECRET,
                )
            )
        ) as gateway,
        aiohttp.ClientSession() as session,
    ):
        stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
        yield Suite(
            Sender(stub, ingestion, campaigns, redis_client, stream_key),
            f"http://127.0.0.1:{gateway.port}",
            session,
        )


def unsubscribe_urls(message: Any) -> list[str]:
    return re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))


async def consent(ingestion: Any, customer_id: str) -> int:
    reply = await ingestion.GetCustomer(ingestion_pb2.GetCustomerRequest(customer_id=customer_id))
    return int(reply.customer.email_consent)


async def test_a_posted_one_click_link_withdraws_consent_and_the_next_message_is_skipped(  # type: ignore[no-untyped-def]
    suite: Suite, ingestion, smtp_server
) -> None:
    campaign_id = await suite.sender.start()
    await upsert_contact(ingestion, "c1", email="reader@example.com")
    await upsert_contact(ingestion, "c2", email="other@example.com")
    assert (await suite.sender.trigger("c1")).status == campaigns_pb2.DELIVERY_STATUS_SENT
    await smtp_server.wait_for(1)
    [message] = smtp_server.messages
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link, mailto = unsubscribe_urls(message)
    assert link.startswith(suite.base + "/v1/unsubscribe/")
    assert mailto.startswith("mailto:unsubscribe@shop.example?subject=unsubscribe%20")
    token = link.rsplit("/", 1)[1]

    # A GET (a person, or a link scanner) unsubscribes nobody: a page with a button, no script.
    async with suite.session.get(link) as response:
        page = await response.text()
        assert response.status == 200 and response.content_type == "text/html"
        assert '<form method="post">' in page and "<script" not in page.lower()
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert await consent(ingestion, "c1") == common_pb2.CONSENT_GRANTED

    # Forged or edited tokens: another customer under this MAC, another secret, an edited MAC, garbage.
    mac = token.split(".")[1]
    other = base64.urlsafe_b64encode(json.dumps(["c2", "email", campaign_id]).encode()).decode().rstrip("=")
    for forged in (
        f"{other}.{mac}",
        make_token("another-secret-entirely", Unsubscribe("c2", "email", campaign_id)),
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "nothing",
    ):
        async with suite.session.post(
            f"{suite.base}/v1/unsubscribe/{forged}", data="List-Unsubscribe=One-Click"
        ) as response:
            assert response.status == 404, forged
    assert await consent(ingestion, "c2") == common_pb2.CONSENT_GRANTED

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(2):  # a mailbox provider may repeat it
        async with suite.session.post(link, data="List-Unsubscribe=One-Click", headers=form) as response:
            assert response.status == 200 and "no more e-mail" in await response.text()
    assert await consent(ingestion, "c1") == common_pb2.CONSENT_DENIED
    assert await consent(ingestion, "c2") == common_pb2.CONSENT_GRANTED
    timeline = await ingestion.ListTimeline(
        ingestion_pb2.ListTimelineRequest(customer_id="c1", event_names=["unsubscribed"])
    )
    [event] = timeline.events
    assert event.context["channel"].string_value == "email"
    assert event.context["campaign_id"].string_value == campaign_id

    # The `unsubscribed` event goes through the stream too: count it, or the next trigger would
    # take it for its own event and drain before that one is published.
    sender = suite.sender
    sender.triggered += 1
    await wait_for_entries(sender.redis_client, sender.stream_key, sender.triggered)
    skipped = await suite.sender.trigger("c1")
    assert (skipped.status, skipped.reason) == (campaigns_pb2.DELIVERY_STATUS_SKIPPED, "no e-mail consent")
    assert (await suite.sender.trigger("c2")).status == campaigns_pb2.DELIVERY_STATUS_SENT
    await smtp_server.wait_for(2)
    assert [m["To"] for m in smtp_server.messages] == ["reader@example.com", "other@example.com"]


async def test_transactional_e_mails_carry_no_unsubscribe_link(suite: Suite, ingestion, smtp_server) -> None:  # type: ignore[no-untyped-def]
    await suite.sender.start(transactional=True)
    await upsert_contact(ingestion, "c1", email="reader@example.com")
    await suite.sender.trigger("c1")
    await smtp_server.wait_for(1)
    [message] = smtp_server.messages
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None
