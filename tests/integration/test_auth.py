"""API keys, scopes and (mutual) TLS on a live ingestion server, with certificates made here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from click.testing import CliRunner, Result
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from eventline_cli.main import cli
from eventline_shared.environment import ConfigError
from eventline_shared.security import api_keys, client_channels, tls
from eventline_shared.server.config import CommonSettings
from tests.certificates import Certificates
from tests.conftest import service_env


@asynccontextmanager
async def serving(db_url: str, stream_key: str, **extra: str) -> AsyncIterator[Any]:
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    async with running(Settings.from_env(service_env(db_url, stream_key, **extra))) as served:
        yield served


@pytest.fixture
async def secured(db_url: str, stream_key: str, redis_client: redis.Redis) -> AsyncIterator[Any]:
    async with serving(db_url, stream_key, EVENTLINE_AUTH="true", EVENTLINE_AUTH_CACHE_S="0") as served:
        yield served


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def track(event_id: str = "e1") -> ingestion_pb2.TrackCustomerEventRequest:
    return ingestion_pb2.TrackCustomerEventRequest(event_id=event_id, customer_id="c1", name="viewed")


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_keys_are_required_and_scoped(secured: Any, db: asyncpg.Connection) -> None:
    _, ingest = await api_keys.create_key(db, "shop", ["ingest"])
    _, read = await api_keys.create_key(db, "dashboard", ["read"])
    _, admin = await api_keys.create_key(db, "ops", ["admin"])
    stored = await db.fetch("SELECT secret_hash FROM api_keys")
    assert all(
        token.split("_")[-1].encode() not in bytes(row["secret_hash"])
        for row in stored
        for token in (ingest, read)
    )

    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        assert await code_of(stub.TrackCustomerEvent(track())) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(stub.TrackCustomerEvent(track(), metadata=bearer("nonsense"))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        forged = ingest[: -len(ingest.split("_")[-1])] + "A" * 43
        assert await code_of(stub.TrackCustomerEvent(track(), metadata=bearer(forged))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert await code_of(stub.TrackCustomerEvent(track(), metadata=bearer(read))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(stub.TrackCustomerEvent(track(), metadata=bearer(ingest))) == grpc.StatusCode.OK
        timeline = ingestion_pb2.ListTimelineRequest(customer_id="c1")
        assert (
            await code_of(stub.ListTimeline(timeline, metadata=bearer(ingest)))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(stub.ListTimeline(timeline, metadata=bearer(read))) == grpc.StatusCode.OK
        erase = ingestion_pb2.EraseCustomerRequest(customer_id="c1")
        assert (
            await code_of(stub.EraseCustomer(erase, metadata=bearer(read)))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(stub.ListTimeline(timeline, metadata=bearer(admin))) == grpc.StatusCode.OK
        assert await code_of(stub.EraseCustomer(erase, metadata=bearer(admin))) == grpc.StatusCode.OK

        # Health checks stay open; reflection needs a key.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in reflection.ServerReflectionInfo(iter([request])):
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        names = []
        async for answer in reflection.ServerReflectionInfo(iter([request]), metadata=bearer(read)):
            names += [service.name for service in answer.list_services_response.service]
        assert "eventline.ingestion.v1.IngestionService" in names


async def test_refused_calls_carry_a_google_rpc_status(secured: Any, db: asyncpg.Connection) -> None:
    """A refused key is an error like any other: its google.rpc.Status is in the trailers."""
    _, read = await api_keys.create_key(db, "dashboard", ["read"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        for metadata, code, words in (
            ((), grpc.StatusCode.UNAUTHENTICATED, "an API key is required"),
            (bearer("nonsense"), grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked"),
            (bearer(read), grpc.StatusCode.PERMISSION_DENIED, "lacks the 'ingest' scope"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.TrackCustomerEvent(track(), metadata=metadata)
            status = rpc_status.from_call(refused.value)
            assert status is not None, "no google.rpc.Status in the trailers"
            assert (status.code, refused.value.code()) == (code.value[0], code)
            assert words in status.message
            assert status.message == refused.value.details()


async def test_a_revoked_key_is_refused(secured: Any, db: asyncpg.Connection) -> None:
    key, token = await api_keys.create_key(db, "shop", ["ingest", "read"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        assert await code_of(stub.TrackCustomerEvent(track(), metadata=bearer(token))) == grpc.StatusCode.OK
        assert await api_keys.revoke_key(db, key.key_id) is True
        assert await api_keys.revoke_key(db, key.key_id) is False
        assert await code_of(stub.TrackCustomerEvent(track("e2"), metadata=bearer(token))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_scopes_are_validated_when_created(db: asyncpg.Connection) -> None:
    with pytest.raises(ValueError):
        await api_keys.create_key(db, "x", ["superuser"])
    with pytest.raises(ValueError):
        await api_keys.create_key(db, "x", [])


def test_which_scope_each_rpc_needs() -> None:
    service = "/eventline.ingestion.v1.IngestionService/"
    assert api_keys.required_scope(service + "TrackEvents") == "ingest"
    assert api_keys.required_scope(service + "UpsertCustomer") == "ingest"
    assert api_keys.required_scope(service + "GetCustomer") == "read"
    assert api_keys.required_scope(service + "EraseCustomer") == "admin"
    assert api_keys.required_scope("/eventline.campaigns.v1.CampaignService/ActivateCampaign") == "admin"
    assert api_keys.required_scope("/eventline.segmentation.v1.SegmentationService/MatchCustomer") == "read"
    assert api_keys.required_scope("/eventline.segmentation.v1.SegmentationService/CreateSegment") == "admin"
    assert api_keys.required_scope("/grpc.health.v1.Health/Check") is None
    assert api_keys.required_scope("/grpc.health.v1.Health/Watch") is None


async def cli_run(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), catch_exceptions=False)


async def test_cli_creates_uses_lists_and_revokes_keys(secured: Any, db_url: str) -> None:
    created = await cli_run("keys", "create", "--name", "shop", "--scope", "ingest", "--database-url", db_url)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert api_keys.KEY_PATTERN.match(token)
    target = f"127.0.0.1:{secured.port}"

    refused = await cli_run("--target", target, "events", "send", "--customer", "c1", "--name", "viewed")
    assert refused.exit_code == 1
    assert "UNAUTHENTICATED" in refused.stderr
    sent = await cli_run(
        "--target", target, "--api-key", token, "events", "send", "--customer", "c1", "--name", "viewed"
    )
    assert sent.exit_code == 0, sent.output
    denied = await cli_run("--target", target, "--api-key", token, "timeline", "c1")
    assert denied.exit_code == 1
    assert "PERMISSION_DENIED" in denied.stderr

    listed = await cli_run("keys", "list", "--database-url", db_url)
    key_id = token.split("_")[1]
    assert key_id in listed.stdout and "shop" in listed.stdout
    revoked = await cli_run("keys", "revoke", key_id, "--database-url", db_url)
    assert revoked.exit_code == 0, revoked.output
    again = await cli_run("keys", "revoke", key_id, "--database-url", db_url)
    assert again.exit_code == 1
    after = await cli_run(
        "--target", target, "--api-key", token, "events", "send", "--customer", "c1", "--name", "viewed"
    )
    assert after.exit_code == 1
    assert "UNAUTHENTICATED" in after.stderr


# --------------------------------------------------------------------------- TLS


def secure_channel(
    port: int, ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        return await code_of(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        )


async def test_tls(
    db_url: str, stream_key: str, redis_client: redis.Redis, certificates: Certificates
) -> None:
    tls = {
        "EVENTLINE_TLS_CERT": str(certificates.server_cert),
        "EVENTLINE_TLS_KEY": str(certificates.server_key),
    }
    async with serving(db_url, stream_key, **tls) as served:
        assert await health_code(secure_channel(served.port, certificates.ca)) == grpc.StatusCode.OK
        assert await health_code(grpc.aio.insecure_channel(f"127.0.0.1:{served.port}")) == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert (
            await health_code(secure_channel(served.port, certificates.other_ca))
            == grpc.StatusCode.UNAVAILABLE
        )
        sent = await cli_run(
            "--target", f"127.0.0.1:{served.port}", "--tls-ca", str(certificates.ca),
            "events", "send", "--customer", "c1", "--name", "viewed",
        )  # fmt: skip
        assert sent.exit_code == 0, sent.output


async def test_mutual_tls(
    db_url: str, stream_key: str, redis_client: redis.Redis, certificates: Certificates
) -> None:
    mtls = {
        "EVENTLINE_TLS_CERT": str(certificates.server_cert),
        "EVENTLINE_TLS_KEY": str(certificates.server_key),
        "EVENTLINE_TLS_CLIENT_CA": str(certificates.ca),
    }
    async with serving(db_url, stream_key, **mtls) as served:
        assert await health_code(secure_channel(served.port, certificates.ca)) == grpc.StatusCode.UNAVAILABLE
        with_cert = secure_channel(
            served.port, certificates.ca, certificates.client_cert, certificates.client_key
        )
        assert await health_code(with_cert) == grpc.StatusCode.OK
        sent = await cli_run(
            "--target", f"127.0.0.1:{served.port}", "--tls-ca", str(certificates.ca),
            "--tls-cert", str(certificates.client_cert), "--tls-key", str(certificates.client_key),
            "events", "send", "--customer", "c1", "--name", "viewed",
        )  # fmt: skip
        assert sent.exit_code == 0, sent.output


def test_tls_configuration_fails_fast(certificates: Certificates) -> None:
    base = {"EVENTLINE_DATABASE_URL": "postgresql://x/y"}
    with pytest.raises(ConfigError, match="together"):
        CommonSettings.from_env({**base, "EVENTLINE_TLS_CERT": str(certificates.server_cert)}, "ingestion", 1)
    with pytest.raises(ConfigError, match="no such file"):
        CommonSettings.from_env(
            {
                **base,
                "EVENTLINE_TLS_CERT": "/nonexistent.crt",
                "EVENTLINE_TLS_KEY": str(certificates.server_key),
            },
            "ingestion",
            1,
        )
    with pytest.raises(ConfigError, match="EVENTLINE_AUTH"):
        CommonSettings.from_env({**base, "EVENTLINE_AUTH": "maybe"}, "ingestion", 1)
    settings = CommonSettings.from_env(base, "ingestion", 1)
    assert settings.security is not None and not settings.security.auth and not settings.security.tls


async def test_service_to_service_channel_carries_the_service_key_over_mutual_tls(
    db_url: str, stream_key: str, db: asyncpg.Connection, certificates: Certificates
) -> None:
    """What campaigns uses to call segmentation when both require keys and client certificates."""
    from eventline.segmentation.v1 import segmentation_pb2
    from eventline.segmentation.v1 import segmentation_pb2_grpc as segmentation_grpc

    from eventline_segmentation.service import running
    from eventline_segmentation.settings import Settings

    _, token = await api_keys.create_key(db, "campaigns", ["read"])
    env = service_env(
        db_url,
        stream_key,
        EVENTLINE_AUTH="true",
        EVENTLINE_TLS_CERT=str(certificates.server_cert),
        EVENTLINE_TLS_KEY=str(certificates.server_key),
        EVENTLINE_TLS_CLIENT_CA=str(certificates.ca),
    )
    count = segmentation_pb2.CountCustomersRequest(
        filter=segmentation_pb2.Filter(event=segmentation_pb2.EventCondition(name="order_placed"))
    )
    stream = segmentation_pb2.StreamCustomersRequest(filter=count.filter)
    async with running(Settings.from_env(env)) as served:
        target = f"127.0.0.1:{served.port}"
        caller = tls.SecuritySettings(
            tls_ca=str(certificates.ca),
            tls_cert=str(certificates.client_cert),
            tls_key=str(certificates.client_key),
            service_api_key=token,
        )
        async with client_channels.client_channel(target, caller) as channel:
            stub = segmentation_grpc.SegmentationServiceStub(channel)
            assert (await stub.CountCustomers(count, timeout=10)).count == 0
            # A server-streaming call carries the key too (it would raise UNAUTHENTICATED otherwise).
            streamed = [list(reply.customer_ids) async for reply in stub.StreamCustomers(stream, timeout=10)]
            assert all(ids == [] for ids in streamed)
        keyless = tls.SecuritySettings(
            tls_ca=str(certificates.ca),
            tls_cert=str(certificates.client_cert),
            tls_key=str(certificates.client_key),
        )
        async with client_channels.client_channel(target, keyless) as channel:
            stub = segmentation_grpc.SegmentationServiceStub(channel)
            assert await code_of(stub.CountCustomers(count, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        async with client_channels.client_channel(target, tls.SecuritySettings(service_api_key=token)) as channel:
            stub = segmentation_grpc.SegmentationServiceStub(channel)
            assert await code_of(stub.CountCustomers(count, timeout=10)) == grpc.StatusCode.UNAVAILABLE
