"""The Node.js example (examples/node, on the TypeScript client) against a live ingestion server."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from eventline_shared.security import api_keys
from tests.node import NODE_EXAMPLE, TYPESCRIPT_CLIENT, assert_the_example_stored, build, run_node

pytestmark = pytest.mark.slow

EXAMPLE = NODE_EXAMPLE / "dist" / "client.js"


@pytest.fixture(scope="session")
def node_example() -> None:
    build(TYPESCRIPT_CLIENT)
    build(NODE_EXAMPLE)


async def run_example(port: int, **env: str) -> tuple[int, dict[str, Any] | None, str]:
    code, stdout, stderr = await run_node(EXAMPLE, f"127.0.0.1:{port}", timeout_s=60, **env)
    lines = stdout.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 else None, stderr


async def test_the_example_tracks_decodes_errors_and_item_results_and_sends_dates_and_int64_exactly(
    node_example: None, ingestion_server: Any, db: asyncpg.Connection
) -> None:
    code, summary, stderr = await run_example(ingestion_server.port, EVENTLINE_CUSTOMER="node-1")
    assert code == 0, stderr
    assert summary is not None
    assert summary["customer_id"] == "node-1" and summary["tracked_deduplicated"] is False
    assert summary["signed_up_at"] == "2024-01-15T09:30:00.250Z"
    assert summary["referrer_id"] == "9007199254740993"
    # The batch item with a bad name is refused alone, its field path relative to the event.
    assert summary["batch"] == ["stored", "refused", "stored"]
    assert list(summary["batch_refused_fields"]) == ["name"]
    # The refused call's BadRequest is decoded: the code and both offending field paths.
    assert summary["invalid"]["code"] == "InvalidArgument"
    assert set(summary["invalid"]["fields"]) == {"name", 'context["item-id"]'}
    assert summary["timeline"] == ["order_shipped", "order_placed", "signed_up"]

    await assert_the_example_stored(db, "node-1", "node-1@example.com")

    # Running it again changes nothing: the event ids are the client's idempotency keys.
    code, again, stderr = await run_example(ingestion_server.port, EVENTLINE_CUSTOMER="node-1")
    assert code == 0, stderr
    assert again is not None and again["tracked_deduplicated"] is True
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE customer_id = 'node-1'") == 3


async def test_the_example_sends_its_api_key(
    node_example: None, db_url: str, stream_key: str, redis_client: Any, db: asyncpg.Connection
) -> None:
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings
    from tests.conftest import service_env

    _, token = await api_keys.create_key(db, "node", ["ingest", "read"])
    settings = Settings.from_env(service_env(db_url, stream_key, EVENTLINE_AUTH="true"))
    async with running(settings) as served:
        code, _, stderr = await run_example(served.port)
        assert code == 1
        assert "Unauthenticated" in stderr
        code, summary, stderr = await run_example(served.port, EVENTLINE_API_KEY=token)
        assert code == 0, stderr
        assert summary is not None and summary["batch"] == ["stored", "refused", "stored"]
