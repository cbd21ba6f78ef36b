"""The HTTP provider channel against a real local HTTP server (the boundary we do not own)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from eventline_campaigns.channels import SMS, HttpChannel, Message, PermanentError, TransientError


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
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    channel = HttpChannel(f"http://127.0.0.1:{port}/sms", "secret")
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
