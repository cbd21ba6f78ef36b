"""``eventline segments``, ``campaigns`` and ``deliveries`` against live services."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from eventline_cli.main import cli


async def run(*args: str, input: str | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), input=input, catch_exceptions=False)


async def test_segments_count_list_explain_save_get(
    ingestion_server: Any, segmentation_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EVENTLINE_SEGMENTATION_TARGET", f"127.0.0.1:{segmentation_server.port}")
    ingestion = ["--target", f"127.0.0.1:{ingestion_server.port}"]
    for customer, name in (("c1", "order_placed"), ("c2", "order_placed"), ("c3", "page_viewed")):
        sent = await run(*ingestion, "events", "send", "--customer", customer, "--name", name)
        assert sent.exit_code == 0, sent.output
    flt = tmp_path / "buyers.yaml"
    flt.write_text("event:\n  name: order_placed\n")

    counted = await run("segments", "count", "--filter", str(flt))
    assert counted.exit_code == 0, counted.output
    assert counted.stdout.strip() == "2"
    listed = await run("segments", "list", "--filter", str(flt))
    assert sorted(listed.stdout.split()) == ["c1", "c2"]
    explained = await run("segments", "explain", "--filter", str(flt))
    assert explained.exit_code == 0, explained.output
    assert json.loads(explained.stdout)["valid"] is True

    bad = tmp_path / "bad.yaml"
    bad.write_text("all_of:\n  filters: []\n")
    refused = await run("segments", "count", "--filter", str(bad))
    assert refused.exit_code == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "filter.all_of.filters" in refused.stderr

    segment = tmp_path / "segment.yaml"
    segment.write_text(
        yaml.safe_dump({"display_name": "Buyers", "filter": {"event": {"name": "order_placed"}}})
    )
    saved = await run("segments", "save", "-f", str(segment), "--id", "buyers")
    assert saved.exit_code == 0, saved.output
    assert json.loads(saved.stdout)["segment_id"] == "buyers"
    got = await run("segments", "get", "buyers", "-o", "yaml")
    assert yaml.safe_load(got.stdout)["display_name"] == "Buyers"
    assert (await run("segments", "count", "--segment", "buyers")).stdout.strip() == "2"
    table = await run("segments", "list")
    assert "buyers" in table.stdout and "Buyers" in table.stdout


async def test_campaigns_create_activate_preview_pause_and_deliveries(
    ingestion_server: Any, campaigns_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EVENTLINE_CAMPAIGNS_TARGET", f"127.0.0.1:{campaigns_server.port}")
    campaign = tmp_path / "recovery.yaml"
    campaign.write_text(
        yaml.safe_dump(
            {
                "display_name": "Password recovery",
                "trigger": {"customer_event": {"event_name": "password_recovery_requested"}},
                "actions": [
                    {
                        "email": {
                            "subject": "Reset your password",
                            "text_body": "Hello {{ client.customer_id }}",
                        }
                    }
                ],
            }
        )
    )
    created = await run("campaigns", "create", "-f", str(campaign), "--id", "recovery")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["state"] == "CAMPAIGN_STATE_DRAFT"
    activated = await run("campaigns", "activate", "recovery")
    assert activated.exit_code == 0, activated.output
    assert "ACTIVE" in activated.stdout
    listed = await run("campaigns", "list")
    assert "recovery" in listed.stdout and "active" in listed.stdout

    upsert = await run(
        "--target", f"127.0.0.1:{ingestion_server.port}", "customers", "upsert", "-f", "-",
        input=json.dumps({"customer_id": "c1", "email": "ada@example.com", "email_consent": "CONSENT_GRANTED"}),
    )  # fmt: skip
    assert upsert.exit_code == 0, upsert.output
    request = tmp_path / "preview.json"
    request.write_text(json.dumps({"campaign_id": "recovery", "customer_id": "c1"}))
    previewed = await run("campaigns", "preview", "-f", str(request))
    assert previewed.exit_code == 0, previewed.output
    message = json.loads(previewed.stdout)["messages"][0]
    assert message.get("subject") == "Reset your password" and "Hello c1" in message.get("text_body", ""), (
        message
    )

    paused = await run("campaigns", "pause", "recovery")
    assert "PAUSED" in paused.stdout
    changed = tmp_path / "rename.yaml"
    changed.write_text("campaign_id: recovery\ndisplay_name: Recovery v2\n")
    updated = await run("campaigns", "update", "-f", str(changed), "--update", "display_name")
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["display_name"] == "Recovery v2"

    empty = await run("deliveries", "list", "--campaign", "recovery", "-o", "json")
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout) == []
    missing = await run("campaigns", "get", "nope")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.stderr
    usage = await run("deliveries", "list")
    assert usage.exit_code == 2


async def test_campaigns_caps_set_cap_and_test_send(
    ingestion_server: Any, campaigns_server: Any, smtp_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EVENTLINE_CAMPAIGNS_TARGET", f"127.0.0.1:{campaigns_server.port}")
    capped = await run("campaigns", "set-cap", "email", "3", "7d", "-o", "json")
    assert capped.exit_code == 0, capped.output
    assert json.loads(capped.stdout) == [{"channel": "CHANNEL_EMAIL", "max_sends": 3, "window": "604800s"}]
    await run("campaigns", "set-cap", "sms", "1", "12h")
    table = await run("campaigns", "caps")
    assert "email" in table.stdout and "7 days" in table.stdout and "12:00:00" in table.stdout
    removed = await run("campaigns", "set-cap", "sms", "0", "-o", "json")
    assert [c["channel"] for c in json.loads(removed.stdout)] == ["CHANNEL_EMAIL"]
    assert (await run("campaigns", "set-cap", "email", "3")).exit_code == 2  # no window
    assert (await run("campaigns", "set-cap", "email", "3", "7 weeks")).exit_code == 2

    campaign = tmp_path / "welcome.yaml"
    campaign.write_text(
        yaml.safe_dump(
            {
                "display_name": "Welcome",
                "trigger": {"customer_event": {"event_name": "signed_up"}},
                "actions": [{"email": {"subject": "Hi", "text_body": "Code {{ client.eventContext.code }}"}}],
            }
        )
    )
    assert (await run("campaigns", "create", "-f", str(campaign), "--id", "welcome")).exit_code == 0
    upsert = await run(
        "--target", f"127.0.0.1:{ingestion_server.port}", "customers", "upsert", "-f", "-",
        input=json.dumps({"customer_id": "c1", "email": "ada@example.com"}),
    )  # fmt: skip
    assert upsert.exit_code == 0, upsert.output
    sent = await run(
        "campaigns",
        "test-send",
        "welcome",
        "--to",
        "me@example.com",
        "--customer",
        "c1",
        "--context",
        "code=7",
    )
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.stdout)["status"] == "DELIVERY_STATUS_SENT"
    await smtp_server.wait_for(1)
    assert smtp_server.messages[0]["To"] == "me@example.com"
    assert "Code 7" in smtp_server.messages[0].get_content()
    bad = await run("campaigns", "test-send", "welcome", "--to", "nobody", "--customer", "c1")
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.stderr and "address" in bad.stderr
