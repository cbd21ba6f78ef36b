"""The provider channels against real local servers: SMTP (aiosmtpd) and HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest

from eventline_campaigns.channels import HttpChannel, PermanentError, SmtpChannel, TransientError
from eventline_campaigns.model import EMAIL, SMS, Message
from tests.processes import free_port


def sms(delivery_id: int) -> Message:
    return Message(delivery_id=delivery_id, channel=SMS, to=["+4915112345678"], text=f"hello {delivery_id}")


@pytest.mark.parametrize(
    ("reply_body", "body_pause_s"), [(b"ok", 0.0), (b'{"id": "%s"}' % (b"x" * 8000), 0.01)]
)
async def test_concurrent_sends_share_keep_alive_connections(  # type: ignore[no-untyped-def]
    http_provider, reply_body: bytes, body_pause_s: float
) -> None:
    """Also when the provider's reply body arrives after its headers (a connection whose body
    is left unread cannot go back to the pool)."""
    http_provider.reply_body, http_provider.body_pause_s = reply_body, body_pause_s
    channel = HttpChannel(f"http://127.0.0.1:{http_provider.port}/sms", "secret")
    try:
        for _ in range(5):  # five rounds of 40 concurrent sends
            await asyncio.gather(*(channel.send(sms(i)) for i in range(40)))
    finally:
        await channel.aclose()
    assert len(http_provider.requests) == 200
    assert sorted(h["idempotency-key"] for _, h, _ in http_provider.requests) == sorted(
        str(i) for _ in range(5) for i in range(40)
    )
    assert all(json.loads(body)["to"] == "+4915112345678" for _, _, body in http_provider.requests)
    # A connection per request would be 200; later rounds reuse the first round's connections.
    assert http_provider.connections <= 40


async def test_a_refusal_quotes_the_start_of_the_providers_reply(http_provider) -> None:  # type: ignore[no-untyped-def]
    http_provider.status = "422 Unprocessable Entity"
    http_provider.reply_body = b'{"error": "invalid number"}' + b" " * 100_000
    channel = HttpChannel(f"http://127.0.0.1:{http_provider.port}/sms", "secret")
    try:
        with pytest.raises(PermanentError) as refused:
            await channel.send(sms(1))
    finally:
        await channel.aclose()
    assert str(refused.value).startswith('provider replied 422: {"error": "invalid number"}')
    assert len(str(refused.value)) < 250


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("503 Service Unavailable", TransientError),
        ("429 Too Many Requests", TransientError),
        ("408 Request Timeout", TransientError),
        ("400 Bad Request", PermanentError),
        ("404 Not Found", PermanentError),
    ],
)
async def test_provider_replies_map_to_transient_or_permanent(  # type: ignore[no-untyped-def]
    http_provider, status: str, error: type[Exception]
) -> None:
    http_provider.status = status
    channel = HttpChannel(f"http://127.0.0.1:{http_provider.port}/sms", "secret")
    try:
        with pytest.raises(error, match=f"provider replied {status.split()[0]}: ok"):
            await channel.send(sms(1))
    finally:
        await channel.aclose()


async def test_unreachable_or_silent_provider_is_transient() -> None:
    channel = HttpChannel(f"http://127.0.0.1:{free_port()}/sms", "secret")  # nothing listens
    try:
        with pytest.raises(TransientError, match="provider unreachable"):
            await channel.send(sms(1))
    finally:
        await channel.aclose()

    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts the request, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = HttpChannel(f"http://127.0.0.1:{port}/sms", "secret", timeout_s=0.2)
    try:
        with pytest.raises(TransientError, match=r"provider unreachable: .*Timeout"):
            await channel.send(sms(1))
    finally:
        await channel.aclose()
        server.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()


def mail(delivery_id: int, **fields: str) -> Message:
    return Message(
        delivery_id=delivery_id,
        channel=EMAIL,
        to=[fields.get("to", f"c{delivery_id}@example.com")],
        subject=fields.get("subject", f"Hello {delivery_id}"),
        text=fields.get("text", "text"),
        html=fields.get("html", ""),
    )


def smtp_channel(smtp_server, **options) -> SmtpChannel:  # type: ignore[no-untyped-def]
    return SmtpChannel(
        "127.0.0.1", smtp_server.port, "Eventline <no-reply@eventline.test>", domain="d.test", **options
    )


async def test_smtp_messages_share_a_few_open_connections(smtp_server) -> None:  # type: ignore[no-untyped-def]
    channel = smtp_channel(smtp_server, concurrency=4)
    try:
        await asyncio.gather(*(channel.send(mail(i)) for i in range(200)))
    finally:
        await channel.aclose()
    assert sorted(m["Message-ID"] for m in smtp_server.messages) == sorted(
        f"<delivery-{i}@d.test>" for i in range(200)
    )
    assert len(smtp_server.connections) <= 4


async def test_smtp_connection_dropped_while_idle_is_replaced(smtp_server) -> None:  # type: ignore[no-untyped-def]
    channel = smtp_channel(smtp_server, concurrency=1)
    try:
        await channel.send(mail(1))
        smtp_server.connections[0].close()  # the server drops the idle client
        await asyncio.sleep(0.05)
        await channel.send(mail(2))
        await channel.send(mail(3))
    finally:
        await channel.aclose()
    assert [m["Message-ID"] for m in smtp_server.messages] == [f"<delivery-{i}@d.test>" for i in (1, 2, 3)]
    assert len(smtp_server.connections) == 2


async def test_smtp_connection_idle_too_long_is_not_reused(smtp_server) -> None:  # type: ignore[no-untyped-def]
    channel = smtp_channel(smtp_server, idle_s=0.05)
    try:
        await channel.send(mail(1))
        await asyncio.sleep(0.1)
        await channel.send(mail(2))
    finally:
        await channel.aclose()
    assert len(smtp_server.messages) == 2 and len(smtp_server.connections) == 2


async def test_smtp_message_round_trips_unicode_and_alternatives(smtp_server) -> None:  # type: ignore[no-untyped-def]
    channel = smtp_channel(smtp_server)
    try:
        await channel.send(
            mail(7, subject="Grüße, 🎉 für dich", text="Zeile 1\nZeile 2 — ü", html="<p>ü &amp; 🎉</p>")
        )
    finally:
        await channel.aclose()
    [received] = smtp_server.messages
    assert received["Subject"] == "Grüße, 🎉 für dich"
    assert received["To"] == "c7@example.com"
    assert received["From"] == "Eventline <no-reply@eventline.test>"
    # SMTP carries lines as CRLF
    assert received.get_body(("plain",)).get_content().splitlines() == ["Zeile 1", "Zeile 2 — ü"]
    assert received.get_body(("html",)).get_content() == "<p>ü &amp; 🎉</p>"


@pytest.mark.parametrize(
    ("reply", "error"),
    [("451 4.3.0 try again later", TransientError), ("554 5.7.1 rejected as spam", PermanentError)],
)
async def test_smtp_refusals_map_to_transient_or_permanent(
    smtp_server, reply: str, error: type[Exception]
) -> None:  # type: ignore[no-untyped-def]
    smtp_server.reply = reply
    channel = smtp_channel(smtp_server)
    try:
        with pytest.raises(error, match=f"SMTP {reply[:3]}"):
            await channel.send(mail(1))
        smtp_server.reply = "250 OK"
        await channel.send(mail(2))  # the refusal cost its connection, not the next message
    finally:
        await channel.aclose()
    assert [m["Message-ID"] for m in smtp_server.messages] == ["<delivery-2@d.test>"]


@pytest.mark.parametrize("field", ["subject", "to"])
def test_a_line_break_in_a_header_is_refused(field: str) -> None:
    channel = SmtpChannel("127.0.0.1", 25, "x@example.com", domain="d.test")
    with pytest.raises(PermanentError, match="line break"):
        channel.build(mail(1, **{field: "a@example.com\r\nBcc: victim@example.com"}))
