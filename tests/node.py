"""Node.js for the tests: the TypeScript client (clients/typescript) and the example using it.

`make test` installs their npm packages from the lock files (npm ci); the tests build them
once per session with tsc, so a changed source is always what runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
TYPESCRIPT_CLIENT = ROOT / "clients" / "typescript"
NODE_EXAMPLE = ROOT / "examples" / "node"


def build(directory: Path) -> None:
    """Compile a TypeScript package (its npm packages installed by `make node`)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the TypeScript client's tests (Node.js 18 or newer)")
    if not (directory / "node_modules" / ".bin" / "tsc").exists():
        raise RuntimeError(
            f"{directory.relative_to(ROOT)} has no npm packages: run `make node` (make test does)"
        )
    result = subprocess.run(
        ["npm", "run", "--silent", "build"], cwd=directory, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm run build failed in {directory}:\n{result.stdout}\n{result.stderr}")


async def run_node(script: Path, *args: str, timeout_s: float = 120, **env: str) -> tuple[int, str, str]:
    """Run ``node script args…``; returns its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def assert_the_example_stored(db: asyncpg.Connection, customer_id: str, email: str) -> None:
    """What both examples (examples/node, examples/http) store for ``customer_id``: the profile,
    the signed-up event's millisecond date and int64 past 2**53 exactly, and the order's context."""
    row = await db.fetchrow("SELECT email, attributes FROM customers WHERE customer_id = $1", customer_id)
    assert row is not None and row["email"] == email
    assert json.loads(row["attributes"]) == {"plan": "pro", "seats": 5}
    signed_up = await db.fetchrow(
        "SELECT occurred_at, context FROM customer_events WHERE event_id = $1", f"{customer_id}-signed-up"
    )
    assert signed_up["occurred_at"] == dt.datetime(2024, 1, 15, 9, 30, 0, 250000, tzinfo=dt.UTC)
    assert json.loads(signed_up["context"])["referrer_id"] == 2**53 + 1
    order = await db.fetchval(
        "SELECT context FROM customer_events WHERE customer_id = $1 AND name = 'order_placed'", customer_id
    )
    assert json.loads(order) == {"total": 59.90, "items": 3}
