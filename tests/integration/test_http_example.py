"""The HTTP/JSON example (examples/http, Node's built-in fetch) against a live gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from eventline_shared.security import api_keys
from tests.conftest import secured_suite
from tests.node import assert_the_example_stored, run_node

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http" / "client.mjs"


async def run_example(base: str, **env: str) -> tuple[int, dict[str, Any] | None, str]:
    code, stdout, stderr = await run_node(EXAMPLE, base, timeout_s=60, **env)
    lines = stdout.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 else None, stderr


async def test_the_example_tracks_reads_and_decodes_errors_over_http(
    gateway_server: Any, db: asyncpg.Connection
) -> None:
    base = f"http://127.0.0.1:{gateway_server.port}"
    code, summary, stderr = await run_example(base, EVENTLINE_CUSTOMER="shop:http-1")
    assert code == 0, stderr
    assert summary is not None
    assert summary["customer_id"] == "shop:http-1" and summary["created"] is True
    assert summary["tracked_deduplicated"] is False
    assert summary["signed_up_at"] == "2024-01-15T09:30:00.250Z"
    assert summary["referrer_id"] == "9007199254740993"
    assert summary["batch"] == ["stored", "refused", "stored"]
    assert summary["batch_refused_fields"] == ["events[1].customer_event.name"]
    assert summary["invalid"] == {"httpStatus": 400, "code": 3, "fields": ["name", 'context["item-id"]']}
    assert summary["timeline"] == ["order_shipped", "order_placed", "signed_up"]

    await assert_the_example_stored(db, "shop:http-1", "jane@example.com")

    # Again: the event ids are the client's idempotency keys, nothing new is stored.
    code, again, stderr = await run_example(base, EVENTLINE_CUSTOMER="shop:http-1")
    assert code == 0, stderr
    assert again is not None and again["tracked_deduplicated"] is True and again["created"] is False
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE customer_id = 'shop:http-1'") == 3


async def test_the_example_sends_its_api_key(
    db_url: str, stream_key: str, redis_client: Any, db: asyncpg.Connection
) -> None:
    _, token = await api_keys.create_key(db, "node-http", ["ingest", "read"])
    async with secured_suite(db_url, stream_key) as base:
        code, _, stderr = await run_example(base)
        assert code == 1 and "HTTP 401" in stderr and "(code 16)" in stderr
        code, summary, stderr = await run_example(base, EVENTLINE_API_KEY=token)
        assert code == 0, stderr
        assert summary is not None and summary["batch"] == ["stored", "refused", "stored"]
