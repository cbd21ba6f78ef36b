"""Webhooks as a campaign channel, against a real aiohttp server on loopback: the rendered
JSON body signed with HMAC over timestamp and body, the delivery id as idempotency key,
retries with backoff on 5xx, a permanent failure on 4xx, all on the ledger; hosts resolving
to loopback or private addresses refused unless allowed (SSRF)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp import web
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from eventline_campaigns.channels import PermanentError, WebhookChannel
from eventline_campaigns.model import WEBHOOK, Message
from eventline_campaigns.service import running
from eventline_campaigns.settings import Settings
from eventline_shared import signatures
from tests.support import Sender, upsert_contact

SECRET = "webhook-secret"


class Receiver:
    """An HTTP server recording each request; replies with ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status < 300}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{path:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.port = int(runner.addresses[0][1])
    yield found
    await runner.cleanup()


@pytest.fixture
async def sender(campaigns_env, ingestion, redis_client, stream_key) -> AsyncIterator[Sender]:  # type: ignore[no-untyped-def]
    env = campaigns_env(EVENTLINE_WEBHOOK_SECRET=SECRET, EVENTLINE_WEBHOOK_ALLOW_PRIVATE="true")
    async with (
        running(Settings.from_env(env), consume=False) as served,
        grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel,
    ):
        yield Sender(
            campaigns_pb2_grpc.CampaignServiceStub(channel), ingestion, served, redis_client, stream_key
        )


def webhook(url: str) -> campaigns_pb2.Action:
    body = (
        '{"customer": {{ client.customer_id|tojson }}, "event": {{ event.event_id|tojson }}, "kind": "watch"}'
    )
    return campaigns_pb2.Action(webhook=campaigns_pb2.WebhookAction(url=url, body=body))


async def test_a_webhook_is_signed_retried_on_5xx_under_one_key_and_failed_for_good_on_4xx(  # type: ignore[no-untyped-def]
    sender: Sender, ingestion, receiver: Receiver
) -> None:
    await sender.start(webhook(f"http://127.0.0.1:{receiver.port}/hooks/watch"))
    await upsert_contact(ingestion, "c1")  # no address, no consent asked: the webhook is about them
    receiver.statuses = [503, 503]
    delivery = await sender.trigger("c1")
    assert (delivery.status, delivery.attempts) == (campaigns_pb2.DELIVERY_STATUS_SENT, 3)
    assert delivery.channel == campaigns_pb2.CHANNEL_WEBHOOK
    assert len(receiver.requests) == 3
    for path, headers, body in receiver.requests:
        assert path == "/hooks/watch" and headers["Content-Type"] == "application/json"
        assert headers["Idempotency-Key"] == delivery.delivery_id, "every retry carries the same key"
        stamp = headers["X-Eventline-Timestamp"]
        assert signatures.valid(SECRET, stamp, body, headers["X-Eventline-Signature"])
        assert not signatures.valid("another-secret", stamp, body, headers["X-Eventline-Signature"])
        assert json.loads(body) == {"customer": "c1", "event": delivery.event_id, "kind": "watch"}

    receiver.statuses = [422]
    failed = await sender.trigger("c1")
    assert failed.status == campaigns_pb2.DELIVERY_STATUS_FAILED and failed.attempts == 1
    assert failed.reason.startswith("provider: provider replied 422")
    assert len(receiver.requests) == 4


async def test_a_body_that_is_not_json_fails_the_delivery(
    sender: Sender, ingestion, receiver: Receiver
) -> None:  # type: ignore[no-untyped-def]
    action = webhook(f"http://127.0.0.1:{receiver.port}/x")
    action.webhook.body = "{{ client.customer_id }}, not JSON"
    await sender.start(action)
    await upsert_contact(ingestion, "c1")
    delivery = await sender.trigger("c1")
    assert delivery.status == campaigns_pb2.DELIVERY_STATUS_FAILED and "not JSON" in delivery.reason
    assert receiver.requests == []


async def test_webhooks_to_loopback_and_private_hosts_are_refused_unless_allowed(receiver: Receiver) -> None:
    def message(url: str) -> Message:
        return Message(7, WEBHOOK, [url], text='{"a": 1}')

    guarded = WebhookChannel(SECRET)
    try:
        for url in (
            f"http://127.0.0.1:{receiver.port}/x",  # an address in the URL
            f"http://localhost:{receiver.port}/x",  # a name resolving to loopback
            "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
            "http://[::ffff:10.0.0.1]/x",
        ):
            with pytest.raises(PermanentError, match="refused"):
                await guarded.send(message(url))
    finally:
        await guarded.aclose()
    assert receiver.requests == []
    allowed = WebhookChannel(SECRET, allow_private=True)
    try:
        await allowed.send(message(f"http://localhost:{receiver.port}/x"))
    finally:
        await allowed.aclose()
    assert len(receiver.requests) == 1


async def test_webhook_urls_are_checked_when_saved(sender: Sender) -> None:
    for url, message in [
        ("ftp://example.com/x", "http:// or https://"),
        ("https://user:pw@example.com/x", "user name"),
        ("", "required"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await sender.start(webhook(url))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()
