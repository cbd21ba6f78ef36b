"""The TypeScript client (clients/typescript) against the whole suite as processes.

Each test runs a scenario of ``src/test/driver.ts`` with Node.js and checks what it printed
and what the suite stored.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg
import grpc
import pytest

from eventline_shared.security import api_keys
from tests.certificates import Certificates
from tests.e2e.conftest import StartSuite, assert_each_event_once, through_a_cut_connection
from tests.node import TYPESCRIPT_CLIENT, build, run_node

pytestmark = pytest.mark.slow

DRIVER = TYPESCRIPT_CLIENT / "dist" / "test" / "driver.js"


@pytest.fixture(scope="session")
def typescript_client() -> None:
    build(TYPESCRIPT_CLIENT)


async def scenario(name: str, target: str, *args: str, expect_code: int = 0, **env: str) -> Any:
    code, stdout, stderr = await run_node(DRIVER, name, target, *args, **env)
    assert code == expect_code, f"{stdout[-2000:]}\n{stderr[-2000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


async def test_a_date_and_large_int64_values_round_trip_exactly(
    typescript_client: None, start_suite: StartSuite, db: asyncpg.Connection
) -> None:
    async with start_suite() as suite:
        found = await scenario("roundtrip", suite.target)
    assert found["tracked_occurred_at"] == "2023-07-04T10:11:12.999Z"
    assert found["batched_ok"] is True
    by_id = {event["event_id"]: event for event in found["timeline"]}
    assert by_id["ts-roundtrip-1"]["context"] == {
        "big": "9007199254740993",
        "max": str(2**63 - 1),
        "min": str(-(2**63)),
        "at": "1999-12-31T23:59:59.001Z",
    }
    assert by_id["ts-roundtrip-2"]["occurred_at"] == "1999-12-31T23:59:59.001Z"
    assert by_id["ts-roundtrip-2"]["context"] == {"big": str(2**62 + 1)}
    # What the suite stored, read without the client: nothing rounded, nothing at 1970.
    rows = {
        row["event_id"]: row
        for row in await db.fetch("SELECT event_id, occurred_at, context FROM customer_events")
    }
    assert rows["ts-roundtrip-1"]["occurred_at"] == utc(2023, 7, 4, 10, 11, 12, 999000)
    assert rows["ts-roundtrip-2"]["occurred_at"] == utc(1999, 12, 31, 23, 59, 59, 1000)
    assert json.loads(rows["ts-roundtrip-1"]["context"])["big"] == 2**53 + 1
    assert json.loads(rows["ts-roundtrip-1"]["context"])["max"] == 2**63 - 1


async def test_50000_events_through_a_cut_connection_arrive_once_and_in_order(
    typescript_client: None,
    start_suite: StartSuite,
    db: asyncpg.Connection,
    redis_client: Any,
    stream_key: str,
) -> None:
    async def send(target: str) -> Any:
        return await scenario("many", target, "50000")

    async with start_suite() as suite:
        found = await through_a_cut_connection(suite, db, send)
        assert found["count"] == 50_000 and found["ok"] and found["ordered"]
        await assert_each_event_once(db, redis_client, stream_key, found["ids"])


async def test_invalid_events_give_typed_errors_with_field_paths(
    typescript_client: None, start_suite: StartSuite, db: asyncpg.Connection
) -> None:
    async with start_suite() as suite:
        found = await scenario("invalid", suite.target)
    assert found["call"]["code"] == "InvalidArgument" and found["call"]["retryable"] is False
    assert set(found["call"]["fields"]) == {"name", 'context["item-id"]'}
    assert [item["ok"] for item in found["batch"]] == [True, False, False]
    assert set(found["batch"][1]["fields"]) == {"name"}
    assert set(found["batch"][2]["fields"]) == {'context["bad-code"]'}
    assert found["batch"][2]["code"] == "InvalidArgument"
    assert await db.fetchval("SELECT array_agg(event_id) FROM customer_events") == ["good-1"]


async def test_api_keys_and_tls(
    typescript_client: None, start_suite: StartSuite, db: asyncpg.Connection, certificates: Certificates
) -> None:
    _, ingest = await api_keys.create_key(db, "shop", ["ingest"])
    _, read = await api_keys.create_key(db, "dashboard", ["read"])
    _, service = await api_keys.create_key(db, "campaigns", ["read"])
    settings = {
        "EVENTLINE_AUTH": "true",
        "EVENTLINE_TLS_CERT": str(certificates.server_cert),
        "EVENTLINE_TLS_KEY": str(certificates.server_key),
        "EVENTLINE_TLS_CLIENT_CA": str(certificates.ca),
        "EVENTLINE_TLS_CA": str(certificates.ca),
        "EVENTLINE_SERVICE_API_KEY": service,
    }
    credentials = grpc.ssl_channel_credentials(
        certificates.ca.read_bytes(),
        certificates.client_key.read_bytes(),
        certificates.client_cert.read_bytes(),
    )
    mutual = {
        "EVENTLINE_TLS_CA": str(certificates.ca),
        "EVENTLINE_TLS_CERT": str(certificates.client_cert),
        "EVENTLINE_TLS_KEY": str(certificates.client_key),
    }
    async with start_suite(credentials, **settings) as suite:
        target = suite.target
        found = await scenario("track", target, "t1", expect_code=2, **mutual)
        assert found["error"] == "Unauthenticated"
        found = await scenario("track", target, "t1", expect_code=2, EVENTLINE_API_KEY=read, **mutual)
        assert found["error"] == "PermissionDenied"
        found = await scenario("track", target, "t1", EVENTLINE_API_KEY=ingest, **mutual)
        assert found == {"event_id": "t1"}
        # Without a client certificate, or trusting another CA, there is no connection.
        without_certificate = {"EVENTLINE_TLS_CA": str(certificates.ca), "EVENTLINE_ATTEMPTS": "1"}
        found = await scenario(
            "track", target, "t2", expect_code=2, EVENTLINE_API_KEY=ingest, **without_certificate
        )
        assert found["error"] == "Unavailable"
        untrusted = {**mutual, "EVENTLINE_TLS_CA": str(certificates.other_ca), "EVENTLINE_ATTEMPTS": "1"}
        found = await scenario("track", target, "t3", expect_code=2, EVENTLINE_API_KEY=ingest, **untrusted)
        assert found["error"] == "Internal" and "certificate" in found["message"], found
    assert await db.fetchval("SELECT array_agg(event_id) FROM customer_events") == ["t1"]
