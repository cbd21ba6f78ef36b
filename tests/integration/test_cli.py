"""The ``eventline`` API commands against a live ingestion server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from click.testing import CliRunner, Result

from eventline_cli.main import cli


async def run(port: int, *args: str, input: str | None = None) -> Result:
    """Invoke the CLI in a thread: the server shares this test's event loop."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, cli, ["--target", f"127.0.0.1:{port}", *args], input=input, catch_exceptions=False
    )


async def test_send_prints_the_stored_event_with_typed_context(
    ingestion_server: Any, db: asyncpg.Connection
) -> None:
    send = ("events", "send", "--customer", "c42", "--name", "order_placed", "--event-id", "order-1")
    result = await run(
        ingestion_server.port,
        *send,
        "-c",
        "total=59.90",
        "-c",
        "items=3",
        "-c",
        "gift=true",
        "-c",
        "code:string=007",
        "-c",
        "shipped=2026-01-02T03:04:05Z",
    )
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    context = reply["event"]["context"]
    assert reply["event"]["event_id"] == "order-1"
    assert context["total"] == {"decimal_value": "59.90"}
    assert context["items"] == {"integer_value": "3"}
    assert context["gift"] == {"boolean_value": True}
    assert context["code"] == {"string_value": "007"}
    assert context["shipped"] == {"timestamp_value": "2026-01-02T03:04:05Z"}
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE customer_id = 'c42'") == 1

    again = await run(ingestion_server.port, *send)  # the same event id, without the context
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["deduplicated"] is True


async def test_send_without_customer_is_a_system_event(ingestion_server: Any, db: asyncpg.Connection) -> None:
    result = await run(ingestion_server.port, "events", "send", "--name", "item_in_stock", "-c", "sku=A1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["event"]["kind"] == "EVENT_KIND_SYSTEM"
    assert await db.fetchval("SELECT count(*) FROM system_events") == 1


async def test_server_errors_print_field_paths_and_exit_non_zero(ingestion_server: Any) -> None:
    result = await run(ingestion_server.port, "events", "send", "--customer", "c1", "--name", "bad-name")
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "name:" in result.stderr


async def test_send_reads_a_yaml_file(ingestion_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "event.yaml"
    path.write_text(
        "event_id: from-file\ncustomer_id: c7\nname: signed_up\noccurred_at: 2026-01-01T00:00:00Z\n"
        "context:\n  plan: {string_value: pro}\n"
    )
    result = await run(ingestion_server.port, "events", "send", "-f", str(path))
    assert result.exit_code == 0, result.output
    event = json.loads(result.stdout)["event"]
    assert (event["event_id"], event["occurred_at"], event["context"]["plan"]) == (
        "from-file",
        "2026-01-01T00:00:00Z",
        {"string_value": "pro"},
    )


async def test_import_ndjson_twice_stores_nothing_twice_and_reports_bad_lines(
    ingestion_server: Any, db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    lines = [
        json.dumps({"customer_id": f"c{i % 7}", "name": "viewed", "context": {"n": {"integer_value": i}}})
        for i in range(25)
    ]
    lines.insert(3, json.dumps({"name": "price_dropped"}))  # a system event
    lines.insert(5, json.dumps({"customer_id": "c1", "name": "bad-name"}))  # refused by the server
    lines.insert(8, "{not json")  # refused locally
    path.write_text("\n".join(lines) + "\n")

    first = await run(ingestion_server.port, "events", "import", str(path), "--batch-size", "10")
    assert first.exit_code == 1, first.output
    assert "26 stored, 0 already stored before, 2 refused" in first.stderr
    assert "line 6:" in first.stderr and "INVALID_ARGUMENT" in first.stderr and "name:" in first.stderr
    assert "line 9: not valid JSON" in first.stderr
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 25
    assert await db.fetchval("SELECT count(*) FROM system_events") == 1

    second = await run(ingestion_server.port, "events", "import", str(path))
    assert "0 stored, 26 already stored before, 2 refused" in second.stderr
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 25


async def test_import_csv_types_columns_and_is_idempotent(
    ingestion_server: Any, db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,name,occurred_at,total:decimal,items,note\n"
        "c1,order_placed,2026-11-01T10:00:00Z,10.50,2,first\n"
        "c2,order_placed,2026-11-02T10:00:00Z,7,1,\n"
        ",sale_started,2026-11-03T10:00:00Z,,,\n"
    )
    first = await run(ingestion_server.port, "events", "import", str(path))
    assert first.exit_code == 0, first.output
    assert "3 stored" in first.stderr
    context = await db.fetchval("SELECT context FROM customer_events WHERE customer_id = 'c1'")
    assert json.loads(context) == {"total": 10.50, "items": 2, "note": "first"} or "total" in json.loads(
        context
    )
    second = await run(ingestion_server.port, "events", "import", str(path))
    assert second.exit_code == 0
    assert "0 stored, 3 already stored before" in second.stderr
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 2


async def test_timeline_table_and_json(ingestion_server: Any) -> None:
    for index, name in enumerate(["signed_up", "order_placed", "order_shipped"]):
        sent = await run(
            ingestion_server.port,
            "events",
            "send",
            "--customer",
            "c5",
            "--name",
            name,
            "--occurred-at",
            f"2026-11-0{index + 1}T10:00:00Z",
        )
        assert sent.exit_code == 0, sent.output
    table = await run(ingestion_server.port, "timeline", "c5")
    assert table.exit_code == 0, table.output
    assert (
        table.stdout.index("order_shipped")
        < table.stdout.index("order_placed")
        < table.stdout.index("signed_up")
    )
    as_json = await run(ingestion_server.port, "timeline", "c5", "--limit", "2", "-o", "json")
    assert [event["name"] for event in json.loads(as_json.stdout)] == ["order_shipped", "order_placed"]
    only = await run(ingestion_server.port, "timeline", "c5", "--name", "signed_up", "-o", "json")
    assert [event["name"] for event in json.loads(only.stdout)] == ["signed_up"]


async def test_customers_upsert_get_erase(
    ingestion_server: Any, db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "customer.yaml"
    path.write_text(
        "customer_id: c9\nemail: ada@example.com\npush_tokens: [tok-1]\n"
        "attributes:\n  plan: {string_value: pro}\nemail_consent: CONSENT_GRANTED\n"
    )
    upserted = await run(ingestion_server.port, "customers", "upsert", "-f", str(path), "-o", "yaml")
    assert upserted.exit_code == 0, upserted.output
    assert "created c9" in upserted.stderr
    assert yaml.safe_load(upserted.stdout)["email"] == "ada@example.com"

    partial = await run(
        ingestion_server.port,
        "customers",
        "upsert",
        "-f",
        "-",
        "--update",
        "phone",
        input='{"customer_id": "c9", "phone": "+15550100"}',
    )
    assert partial.exit_code == 0, partial.output
    got = await run(ingestion_server.port, "customers", "get", "c9")
    profile = json.loads(got.stdout)
    assert (profile["email"], profile["phone"], profile["email_consent"]) == (
        "ada@example.com",
        "+15550100",
        "CONSENT_GRANTED",
    )

    erased = await run(ingestion_server.port, "customers", "erase", "c9", "--yes")
    assert erased.exit_code == 0, erased.output
    assert await db.fetchval("SELECT count(*) FROM customers WHERE customer_id = 'c9'") == 0
    missing = await run(ingestion_server.port, "customers", "get", "c9")
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.stderr


async def test_bad_file_is_a_usage_error(ingestion_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "customer.json"
    path.write_text('{"customer_id": "c1", "no_such_field": 1}')
    result = await run(ingestion_server.port, "customers", "upsert", "-f", str(path))
    assert result.exit_code == 2
    assert "no_such_field" in result.output


@pytest.mark.slow
async def test_the_installed_command_exits_non_zero_on_server_errors(ingestion_server: Any) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventline_cli",
        "--target",
        f"127.0.0.1:{ingestion_server.port}",
        "customers",
        "get",
        "nobody",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 1
    assert b"NOT_FOUND" in stderr


async def test_import_hints_a_bulk_import_unless_live(
    ingestion_server: Any, redis_client: Any, stream_key: str, tmp_path: Path
) -> None:
    """``events import`` sends its batches with ``bulk_import`` (ingestion then publishes the
    "import running" mark); ``--live`` sends them as live events (no mark)."""
    from eventline_shared.streams import stream

    key = stream.import_mark_key(stream_key)
    path = tmp_path / "events.ndjson"
    path.write_text(json.dumps({"customer_id": "c1", "name": "viewed"}) + "\n")
    live = await run(ingestion_server.port, "events", "import", "--live", str(path))
    assert live.exit_code == 0, live.output
    await ingestion_server.imports.settled()
    assert await redis_client.get(key) is None
    path.write_text(json.dumps({"customer_id": "c2", "name": "viewed"}) + "\n")
    bulk = await run(ingestion_server.port, "events", "import", str(path))
    assert bulk.exit_code == 0, bulk.output
    await ingestion_server.imports.settled()
    assert await redis_client.get(key) is not None
