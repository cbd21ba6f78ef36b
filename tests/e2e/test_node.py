"""The Node.js example (examples/node) against a live ingestion server: protos/ are enough."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from eventline_shared import auth

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def node_client() -> Path:
    """examples/node with its packages installed (npm ci from the lock file; once per machine)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed to test examples/node (install Node.js 18 or newer)")
    installed = NODE_DIR / "node_modules" / "@grpc" / "grpc-js"
    if not installed.exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "CI": "true"},
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci failed in {NODE_DIR}:\n{result.stdout}\n{result.stderr}")
    return NODE_DIR / "client.js"


async def run_node(client: Path, port: int, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(client),
        f"127.0.0.1:{port}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_node_client_upserts_sends_and_reads_the_timeline(
    node_client: Path, ingestion_server: Any, db: asyncpg.Connection
) -> None:
    code, stdout, stderr = await run_node(node_client, ingestion_server.port, EVENTLINE_CUSTOMER="node-1")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {
        "customer_id": "node-1",
        "created": True,
        "tracked_deduplicated": False,
        "batch_results": 2,
        "timeline": ["order_shipped", "order_placed", "signed_up"],
    }
    row = await db.fetchrow("SELECT email, attributes FROM customers WHERE customer_id = 'node-1'")
    assert row is not None and row["email"] == "node-1@example.com"
    context = await db.fetchval(
        "SELECT context FROM customer_events WHERE customer_id = 'node-1' AND name = 'order_placed'"
    )
    assert json.loads(context) == {"total": 59.90, "items": 3}

    # Running it again changes nothing: the event ids are the client's idempotency keys.
    code, stdout, stderr = await run_node(node_client, ingestion_server.port, EVENTLINE_CUSTOMER="node-1")
    assert code == 0, stderr
    again = json.loads(stdout.strip().splitlines()[-1])
    assert again["created"] is False and again["tracked_deduplicated"] is True
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE customer_id = 'node-1'") == 3


async def test_node_client_sends_its_api_key(
    node_client: Path, db_url: str, stream_key: str, redis_client: Any, db: asyncpg.Connection
) -> None:
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings
    from tests.conftest import service_env

    _, token = await auth.create_key(db, "node", ["ingest", "read"])
    settings = Settings.from_env(service_env(db_url, stream_key, EVENTLINE_AUTH="true"))
    async with running(settings) as served:
        code, _, stderr = await run_node(node_client, served.port)
        assert code == 1
        assert "UNAUTHENTICATED" in stderr
        code, stdout, stderr = await run_node(node_client, served.port, EVENTLINE_API_KEY=token)
        assert code == 0, stderr
        assert json.loads(stdout.strip().splitlines()[-1])["batch_results"] == 2
