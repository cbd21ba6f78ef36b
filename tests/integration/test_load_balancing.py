"""Service-to-service channels name every replica; servers age connections out.

The spread itself, over two segmentation processes, is measured in
tests/e2e/test_segmentation_replicas.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from eventline_shared.environment import ConfigError
from eventline_shared.security import client_channels
from eventline_shared.server.config import CommonSettings
from eventline_shared.server.grpc_server import Server

SEGMENTATION = "eventline.segmentation.v1.SegmentationService"


def test_service_addresses_become_balanced_grpc_targets() -> None:
    assert client_channels.channel_target("segmentation:50052") == "segmentation:50052"
    assert client_channels.channel_target("dns:///segmentation-headless:50052") == "dns:///segmentation-headless:50052"
    assert client_channels.channel_target("10.0.0.1:50052, 10.0.0.2:50052") == "ipv4:10.0.0.1:50052,10.0.0.2:50052"
    assert client_channels.channel_target("[fd00::1]:50052,[fd00::2]:50052") == "ipv6:[fd00::1]:50052,[fd00::2]:50052"
    with pytest.raises(ConfigError, match=r"EVENTLINE_SEGMENTATION_ADDR: 'seg-a:50052' in a list .*dns:///"):
        client_channels.channel_target("seg-a:50052,seg-b:50052", "EVENTLINE_SEGMENTATION_ADDR")
    with pytest.raises(ConfigError, match="not both"):
        client_channels.channel_target("10.0.0.1:1,[fd00::2]:1")
    with pytest.raises(ConfigError, match="must be host:port"):
        client_channels.channel_target("segmentation")


def test_max_connection_age_is_a_setting_with_a_default() -> None:
    assert CommonSettings.from_env({}, "segmentation", 50052).server_options() == [
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 60_000),
    ]
    never = CommonSettings.from_env({"EVENTLINE_GRPC_MAX_CONNECTION_AGE_S": "0"}, "segmentation", 50052)
    assert never.server_options() == []
    with pytest.raises(ConfigError, match="EVENTLINE_GRPC_MAX_CONNECTION_AGE_GRACE_S"):
        CommonSettings.from_env({"EVENTLINE_GRPC_MAX_CONNECTION_AGE_GRACE_S": "-1"}, "segmentation", 50052)


@pytest.fixture
async def aging_server() -> AsyncIterator[Server]:
    """A server whose connections last about half a second, answering each call with its peer."""
    settings = CommonSettings.from_env(
        {"EVENTLINE_GRPC_MAX_CONNECTION_AGE_S": "0.5", "EVENTLINE_GRPC_MAX_CONNECTION_AGE_GRACE_S": "5"},
        "segmentation",
        0,
    )
    server = Server(["test.Peer"], settings=settings)

    async def who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return context.peer().encode()

    server.server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Peer", {"Who": grpc.unary_unary_rpc_method_handler(who)})]
    )
    server.bind("127.0.0.1", 0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


async def goaway_error_code(port: int) -> int:
    """Open an HTTP/2 connection, send nothing but what the protocol needs, and return the error
    code of the first GOAWAY frame the server sends (read frame by frame, RFC 9113 section 4.1)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + EMPTY_SETTINGS)
        while True:
            header = await reader.readexactly(9)
            kind, flags = header[3], header[4]
            payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
            if kind == SETTINGS and not flags & ACK:
                writer.write(SETTINGS_ACK)
            elif kind == GOAWAY:
                return int.from_bytes(payload[4:8], "big")
    finally:
        writer.close()


SETTINGS, GOAWAY, ACK = 0x4, 0x7, 0x1
EMPTY_SETTINGS = bytes([0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
SETTINGS_ACK = bytes([0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0])


async def test_the_server_sends_goaway_once_a_connection_reaches_its_maximum_age(
    aging_server: Server,
) -> None:
    # NO_ERROR: a graceful end, after which a client opens a new connection (maybe to another replica).
    assert await asyncio.wait_for(goaway_error_code(aging_server.port), 60) == 0


async def test_calls_keep_succeeding_over_new_connections_after_goaway(aging_server: Server) -> None:
    peers: list[str] = []
    async with client_channels.client_channel(f"127.0.0.1:{aging_server.port}", None) as channel:
        who = channel.unary_unary("/test.Peer/Who")

        async def until_two_reconnections() -> None:
            while len(set(peers)) < 3:
                peers.append((await who(b"", timeout=10)).decode())  # any failed call fails the test
                await asyncio.sleep(0.01)  # pacing only: the loop waits for the reconnections

        await asyncio.wait_for(until_two_reconnections(), 120)
    # Each connection (a client port) served calls, then the server ended it and the channel
    # carried on over a new one.
    assert len(set(peers)) >= 3
    assert peers == sorted(peers, key=peers.index)  # connections follow each other, never interleave


def test_service_channels_retry_only_what_is_safe_to_repeat() -> None:
    config = json.loads(client_channels.SERVICE_CONFIG)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    retried = {
        (name["service"].rsplit(".", 1)[1], name.get("method", "*"))
        for method_config in config["methodConfig"]
        for name in method_config["name"]
    }
    assert ("SegmentationService", "MatchCustomer") in retried
    assert ("IngestionService", "*") in retried  # every ingestion RPC is idempotent
    assert not {("SegmentationService", m) for m in ("CreateSegment", "UpdateSegment", "DeleteSegment")} & retried
    assert not any(service == "CampaignService" for service, _ in retried)
