"""Provider status callbacks through the gateway, over real HTTP, with the real services
behind it: signed reports recorded on the ledger, bounces suppressing addresses, forged,
stale and replayed callbacks refused (also by another gateway replica)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eventline.campaigns.v1 import campaigns_pb2

from eventline_gateway.callbacks import twilio_signature
from eventline_gateway.service import running as running_gateway
from eventline_gateway.settings import Settings as GatewaySettings
from eventline_shared import signatures
from tests.conftest import gateway_env
from tests.support import Sender, upsert_contact

SECRET = "generic-callback-secret"
MAILGUN_KEY = "key-mailgun-signing"
TWILIO_TOKEN = "twilio-auth-token"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
"""Stands for SendGrid's private key: the gateway gets its public half as SendGrid shows it."""
POSTMARK_AUTH = "postmark:webhook-basic-auth-password"
CALLBACK_ENV = {
    "EVENTLINE_CALLBACK_SECRET": SECRET,
    "EVENTLINE_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
    "EVENTLINE_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
    "EVENTLINE_SENDGRID_VERIFICATION_KEY": base64.b64encode(
        SENDGRID_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode(),
    "EVENTLINE_POSTMARK_WEBHOOK_AUTH": POSTMARK_AUTH,
}


@pytest.fixture
async def sender(campaigns, ingestion, campaigns_server, redis_client, stream_key) -> Sender:  # type: ignore[no-untyped-def]
    return Sender(campaigns, ingestion, campaigns_server, redis_client, stream_key)


def gateway_settings(
    ingestion_server: Any, segmentation_server: Any, campaigns_server: Any
) -> GatewaySettings:
    return GatewaySettings.from_env(
        gateway_env(ingestion_server.port, segmentation_server.port, campaigns_server.port, **CALLBACK_ENV)
    )


@pytest.fixture
async def base(ingestion_server, segmentation_server, campaigns_server) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    async with running_gateway(
        gateway_settings(ingestion_server, segmentation_server, campaigns_server)
    ) as gw:
        yield f"http://127.0.0.1:{gw.port}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.post(url, **kwargs) as response:
        return response.status, json.loads(await response.read())


def generic(events: list[dict[str, Any]], timestamp: int | None = None) -> dict[str, Any]:
    """Keyword arguments of a POST of our own callback shape, signed with the secret."""
    body = json.dumps({"events": events}).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        signatures.TIMESTAMP_HEADER: stamp,
        signatures.SIGNATURE_HEADER: signatures.sign(SECRET, stamp, body),
    }
    return {"data": body, "headers": headers}


def mailgun(
    event_data: dict[str, Any], token: str, key: str = MAILGUN_KEY, timestamp: int | None = None
) -> bytes:
    """A Mailgun webhook as its documentation shows it: the signature beside the event data."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {"signature": {"timestamp": stamp, "token": token, "signature": digest}, "event-data": event_data}
    ).encode()


def test_the_twilio_signature_is_the_documented_one() -> None:
    """The example of Twilio's documentation (validating requests): URL, parameters, token."""
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


async def test_a_mailgun_hard_bounce_suppresses_the_address_and_forgeries_and_replays_are_refused(  # type: ignore[no-untyped-def]
    base, session, sender: Sender, ingestion, smtp_server
) -> None:
    await sender.start()
    await upsert_contact(ingestion, "c1", email="gone@example.com")
    first = await sender.trigger("c1")
    await smtp_server.wait_for(1)
    message_id = smtp_server.messages[0]["Message-ID"].strip("<>")  # Mailgun shows it without brackets
    failed = {
        "event": "failed",
        "severity": "permanent",
        "id": "mg-event-1",
        "timestamp": time.time(),
        "recipient": "gone@example.com",
        "message": {"headers": {"message-id": message_id}},
        "delivery-status": {"code": 550, "message": "5.1.1 mailbox does not exist"},
    }
    url = f"{base}/v1/callbacks/mailgun"
    forged = mailgun(failed, "t" * 50, key="not-the-key")
    assert (await post(session, url, data=forged))[0] == 401
    stale = mailgun(failed, "s" * 50, timestamp=int(time.time()) - 3600)
    status, reply = await post(session, url, data=stale)
    assert status == 401 and "timestamp" in reply["message"]
    genuine = mailgun(failed, "g" * 50)
    status, reply = await post(session, url, data=genuine)
    assert (status, reply) == (200, {"recorded": 1, "unmatched": 0, "duplicates": 0})
    status, reply = await post(session, url, data=genuine)  # the same request again
    assert status == 409 and reply["code"] == 6  # ALREADY_EXISTS

    async with session.get(f"{base}/v1/customers/c1/deliveries") as response:
        [delivery] = (await response.json())["deliveries"]
    assert delivery["deliveryId"] == first.delivery_id
    assert [(e["kind"], e["detail"]) for e in delivery["events"]] == [
        ("DELIVERY_EVENT_KIND_BOUNCED_HARD", "550 5.1.1 mailbox does not exist")
    ]
    async with session.get(f"{base}/v1/suppressions?channel=CHANNEL_EMAIL") as response:
        [suppression] = (await response.json())["suppressions"]
    assert suppression["address"] == "gone@example.com"
    assert suppression["reason"] == "SUPPRESSION_REASON_HARD_BOUNCE"

    skipped = await sender.trigger("c1")
    assert (skipped.status, skipped.reason) == (
        campaigns_pb2.DELIVERY_STATUS_SKIPPED,
        "suppressed: hard bounce",
    )
    assert len(smtp_server.messages) == 1

    async with session.delete(f"{base}/v1/suppressions/gone%40example.com?channel=CHANNEL_EMAIL") as response:
        assert response.status == 200
    assert (await sender.trigger("c1")).status == campaigns_pb2.DELIVERY_STATUS_SENT


async def test_our_own_shape_records_opens_and_clicks_and_a_replay_is_refused_by_another_replica(  # type: ignore[no-untyped-def]
    base, session, sender: Sender, ingestion, ingestion_server, segmentation_server, campaigns_server
) -> None:
    campaign_id = await sender.start()
    await upsert_contact(ingestion, "c2", email="reader@example.com")
    delivery = await sender.trigger("c2")
    events = [
        {
            "messageId": f"<delivery-{delivery.delivery_id}@eventline.local>",
            "event": "delivered",
            "id": "d-1",
        },
        {
            "deliveryId": delivery.delivery_id,
            "event": "opened",
            "occurredAt": "2026-01-02T03:04:05Z",
            "id": "o-1",
        },
        {
            "deliveryId": delivery.delivery_id,
            "event": "clicked",
            "detail": "https://shop.test/x",
            "id": "c-1",
        },
        {"deliveryId": "987654321", "event": "opened"},
    ]
    url = f"{base}/v1/callbacks/eventline"
    signed = generic(events)
    status, reply = await post(session, url, **signed)
    assert (status, reply) == (200, {"recorded": 3, "unmatched": 1, "duplicates": 0})

    # Another replica shares nothing with the first but PostgreSQL: it refuses the replay too.
    async with running_gateway(
        gateway_settings(ingestion_server, segmentation_server, campaigns_server)
    ) as other:
        status, reply = await post(session, f"http://127.0.0.1:{other.port}/v1/callbacks/eventline", **signed)
    assert status == 409, reply
    tampered = dict(signed, data=signed["data"].replace(b"opened", b"clicked"))
    assert (await post(session, url, **tampered))[0] == 401
    unsigned = {"data": signed["data"], "headers": {"Content-Type": "application/json"}}
    assert (await post(session, url, **unsigned))[0] == 401
    assert (await post(session, url, **generic(events, timestamp=int(time.time()) - 301)))[0] == 401
    # Signed afresh (a provider's retry), the same reports are recognised by their ids.
    status, reply = await post(session, url, **generic(events[:3]))
    assert (status, reply) == (200, {"recorded": 0, "unmatched": 0, "duplicates": 3})
    status, reply = await post(session, url, **generic([{"deliveryId": "1", "event": "bounced"}]))
    assert status == 400 and "events[0].bounceType" in reply["message"]

    async with session.get(f"{base}/v1/campaigns/{campaign_id}/stats") as response:
        stats = await response.json()
    assert (stats["sent"], stats["delivered"], stats["opened"], stats["clicked"], stats["bounced"]) == (
        "1",
        "1",
        "1",
        "1",
        "0",
    )


async def test_twilio_undelivered_sms_suppresses_the_number(  # type: ignore[no-untyped-def]
    base, session, sender: Sender, ingestion, http_provider
) -> None:
    await sender.start(campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="Back in stock")))
    await upsert_contact(ingestion, "c3", phone="+4915112345678")
    delivery = await sender.trigger("c3")
    assert delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT
    url = f"{base}/v1/callbacks/twilio?deliveryId={delivery.delivery_id}"
    params = {
        "MessageSid": "SM0123456789abcdef0123456789abcdef",
        "MessageStatus": "undelivered",
        "ErrorCode": "30005",
        "To": "+4915112345678",
        "From": "+15005550006",
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
    }
    body = urllib.parse.urlencode(params)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    forged = {**headers, "X-Twilio-Signature": twilio_signature("wrong-token", url, params)}
    assert (await post(session, url, data=body, headers=forged))[0] == 401
    other_delivery = f"{base}/v1/callbacks/twilio?deliveryId=99999"  # the signature covers the URL
    signed = {**headers, "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, params)}
    assert (await post(session, other_delivery, data=body, headers=signed))[0] == 401
    status, reply = await post(session, url, data=body, headers=signed)
    assert (status, reply["recorded"]) == (200, 1)
    assert (await post(session, url, data=body, headers=signed))[0] == 409
    skipped = await sender.trigger("c3")
    assert (skipped.status, skipped.reason) == (
        campaigns_pb2.DELIVERY_STATUS_SKIPPED,
        "suppressed: hard bounce",
    )
    assert len(http_provider.requests) == 1


async def test_callbacks_that_arrive_together_are_each_answered_with_their_own_outcome(  # type: ignore[no-untyped-def]
    base, session, sender: Sender, ingestion, db
) -> None:
    """Concurrent callbacks share RecordDeliveryEvents calls; each answer is still its own:
    recorded, its own replay refused (409) without failing the others, and all on the ledger."""
    await sender.start()
    await upsert_contact(ingestion, "c4", email="many@example.com")
    delivery = (await sender.trigger("c4")).delivery_id
    url = f"{base}/v1/callbacks/mailgun"

    def delivered(n: int) -> dict[str, Any]:
        return {
            "event": "delivered",
            "id": f"mg-many-{n}",
            "timestamp": time.time(),
            "message": {"headers": {"message-id": f"delivery-{delivery}@eventline.local"}},
        }

    bodies = [mailgun(delivered(n), f"token-{n:02d}" + "x" * 40) for n in range(40)]
    again = [bodies[n] for n in range(0, 40, 8)]  # the same webhooks sent twice at once
    answers = await asyncio.gather(*(post(session, url, data=body) for body in bodies + again))
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == 40 and statuses.count(409) == 5, statuses
    assert all(reply["recorded"] == 1 for status, reply in answers if status == 200)
    assert all(reply["code"] == 6 for status, reply in answers if status == 409)
    stored = await db.fetchval("SELECT count(*) FROM delivery_events WHERE delivery_id = $1", int(delivery))
    assert stored == 40


def sendgrid(
    events: list[dict[str, Any]], key: ec.EllipticCurvePrivateKey = SENDGRID_KEY, timestamp: int | None = None
) -> dict[str, Any]:
    """Keyword arguments of a SendGrid Event Webhook POST: a JSON array of events, signed as
    SendGrid signs them (ECDSA P-256 over the timestamp header followed by the body)."""
    body = json.dumps(events).encode() + b"\r\n"
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }
    return {"data": body, "headers": headers}


async def test_a_sendgrid_batch_records_a_bounce_and_an_open_and_forgeries_and_replays_are_refused(  # type: ignore[no-untyped-def]
    base, session, sender: Sender, ingestion, smtp_server
) -> None:
    await sender.start()
    await upsert_contact(ingestion, "s1", email="bounced@example.com")
    await upsert_contact(ingestion, "s2", email="reader@example.com")
    bounced, opened = await sender.trigger("s1"), await sender.trigger("s2")
    await smtp_server.wait_for(2)
    mails = {m["To"]: m for m in smtp_server.messages}
    smtp_id = mails["bounced@example.com"]["Message-ID"]  # SendGrid reports it as smtp-id
    # SendGrid turns the X-SMTPAPI header's unique_args into fields of each event.
    unique_args = json.loads(mails["reader@example.com"]["X-SMTPAPI"])["unique_args"]
    assert unique_args == {"deliveryId": opened.delivery_id}
    now = int(time.time())
    events = [
        {"email": "bounced@example.com", "timestamp": now, "smtp-id": smtp_id, "event": "processed",
         "sg_event_id": "sg-processed-1", "sg_message_id": "m1"},
        {"email": "bounced@example.com", "timestamp": now, "smtp-id": smtp_id, "event": "bounce",
         "type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 unknown user",
         "sg_event_id": "sg-bounce-1", "sg_message_id": "m1"},
        {"email": "reader@example.com", "timestamp": now, "event": "open", "sg_machine_open": False,
         "useragent": "Mozilla/5.0", "ip": "192.0.2.1", "sg_event_id": "sg-open-1", "sg_message_id": "m2",
         **unique_args},
        {"email": "other@example.com", "timestamp": now, "event": "delivered", "response": "250 OK",
         "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "sg_event_id": "sg-other-1", "sg_message_id": "m3"},
    ]
    url = f"{base}/v1/callbacks/sendgrid"
    forged = sendgrid(events, key=ec.generate_private_key(ec.SECP256R1()))
    assert (await post(session, url, **forged))[0] == 401
    signed = sendgrid(events)
    tampered = dict(signed, data=signed["data"].replace(b"bounced@", b"bouncer@"))
    assert (await post(session, url, **tampered))[0] == 401
    status, reply = await post(session, url, **sendgrid(events, timestamp=now - 3600))
    assert status == 401 and "timestamp" in reply["message"]
    status, reply = await post(session, url, **signed)
    assert (status, reply) == (200, {"recorded": 2, "unmatched": 1, "duplicates": 0})
    assert (await post(session, url, **signed))[0] == 409
    status, reply = await post(session, url, **sendgrid(events))  # SendGrid's retry, signed afresh
    assert (status, reply) == (200, {"recorded": 0, "unmatched": 1, "duplicates": 2})

    async with session.get(f"{base}/v1/customers/s1/deliveries") as response:
        [delivery] = (await response.json())["deliveries"]
    assert delivery["deliveryId"] == bounced.delivery_id
    assert [(e["kind"], e["detail"], e["recipient"]) for e in delivery["events"]] == [
        ("DELIVERY_EVENT_KIND_BOUNCED_HARD", "5.1.1 550 5.1.1 unknown user", "bounced@example.com")
    ]
    async with session.get(f"{base}/v1/customers/s2/deliveries") as response:
        [delivery] = (await response.json())["deliveries"]
    assert [e["kind"] for e in delivery["events"]] == ["DELIVERY_EVENT_KIND_OPENED"]
    skipped = await sender.trigger("s1")
    assert (skipped.status, skipped.reason) == (campaigns_pb2.DELIVERY_STATUS_SKIPPED, "suppressed: hard bounce")


def postmark(record: dict[str, Any], auth: str = POSTMARK_AUTH) -> dict[str, Any]:
    """Keyword arguments of a Postmark webhook POST: one record, the URL's basic auth."""
    token = base64.b64encode(auth.encode()).decode()
    return {
        "data": json.dumps(record).encode(),
        "headers": {"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    }


async def test_postmark_delivery_click_and_spam_complaint_are_recorded_and_the_complaint_suppresses(  # type: ignore[no-untyped-def]
    base, session, sender: Sender, ingestion, smtp_server
) -> None:
    campaign_id = await sender.start()
    await upsert_contact(ingestion, "p1", email="complainer@example.com")
    first = await sender.trigger("p1")
    await smtp_server.wait_for(1)
    # Postmark hands the X-PM-Metadata-* headers back as each record's Metadata.
    metadata = {"deliveryId": smtp_server.messages[0]["X-PM-Metadata-deliveryId"]}
    assert metadata == {"deliveryId": first.delivery_id}
    message_id = "883953f4-6105-42a2-a16a-77a8eac79483"
    delivered = {
        "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID": message_id,
        "Recipient": "complainer@example.com", "Tag": "welcome", "DeliveredAt": "2026-01-02T03:04:05.2735393-04:00",
        "Details": "Test delivery webhook details", "Metadata": metadata,
    }
    clicked = {
        "RecordType": "Click", "MessageStream": "outbound", "ClickLocation": "HTML", "Platform": "Desktop",
        "OriginalLink": "https://shop.test/offer", "MessageID": message_id, "Recipient": "complainer@example.com",
        "ReceivedAt": "2026-01-02T08:00:00Z", "Tag": "welcome", "Metadata": metadata,
    }
    complaint = {
        "RecordType": "SpamComplaint", "MessageStream": "outbound", "ID": 42, "Type": "SpamComplaint",
        "TypeCode": 512, "Name": "Spam complaint", "MessageID": message_id, "ServerID": 1234,
        "Description": "", "Details": "Test spam complaint details", "Email": "complainer@example.com",
        "From": "sender@example.com", "BouncedAt": "2026-01-02T09:00:00.9070259Z", "DumpAvailable": True,
        "Inactive": True, "CanActivate": False, "Subject": "Test subject", "Metadata": metadata,
    }
    url = f"{base}/v1/callbacks/postmark"
    assert (await post(session, url, **postmark(delivered, auth="postmark:not-the-password!!")))[0] == 401
    unsigned = {"data": json.dumps(delivered).encode(), "headers": {"Content-Type": "application/json"}}
    assert (await post(session, url, **unsigned))[0] == 401
    for record in (delivered, clicked, complaint):
        status, reply = await post(session, url, **postmark(record))
        assert (status, reply) == (200, {"recorded": 1, "unmatched": 0, "duplicates": 0}), record
    assert (await post(session, url, **postmark(complaint)))[0] == 409  # the same request again
    foreign = dict(delivered, Metadata={})  # a message another system sent through Postmark
    status, reply = await post(session, url, **postmark(foreign))
    assert (status, reply) == (200, {"recorded": 0, "unmatched": 1, "duplicates": 0})

    async with session.get(f"{base}/v1/customers/p1/deliveries") as response:
        [delivery] = (await response.json())["deliveries"]
    assert [(e["kind"], e["detail"]) for e in delivery["events"]] == [
        ("DELIVERY_EVENT_KIND_DELIVERED", "Test delivery webhook details"),
        ("DELIVERY_EVENT_KIND_CLICKED", "https://shop.test/offer"),
        ("DELIVERY_EVENT_KIND_COMPLAINED", "SpamComplaint Test spam complaint details"),
    ]
    assert delivery["events"][0]["occurTime"] == "2026-01-02T07:04:05.273539Z"
    async with session.get(f"{base}/v1/suppressions?channel=CHANNEL_EMAIL") as response:
        [suppression] = (await response.json())["suppressions"]
    assert (suppression["address"], suppression["reason"]) == (
        "complainer@example.com",
        "SUPPRESSION_REASON_COMPLAINT",
    )
    async with session.get(f"{base}/v1/campaigns/{campaign_id}/stats") as response:
        stats = await response.json()
    assert (stats["delivered"], stats["clicked"], stats["complained"]) == ("1", "1", "1")
    skipped = await sender.trigger("p1")
    assert skipped.status == campaigns_pb2.DELIVERY_STATUS_SKIPPED and skipped.reason.startswith("suppressed")
