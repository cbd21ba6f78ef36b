"""Erasure leaves nothing of the customer behind (issue 10, item 8).

After EraseCustomer, the customer's id, e-mail address, phone number and push
token are searched for in every text, varchar, json, bytea and array column of
every table of the database, in every entry of every stream of the test, and in
the names and contents of the message files of two campaign replicas - one that
was running during the erasure, one that was down and started afterwards. The
customer's sends counted against the caps across campaigns go too, and so do test sends
rendered for the customer or sent to one of the customer's addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from google.protobuf import duration_pb2

from eventline_shared.streams.stream import StreamEntry
from tests.conftest import CampaignsEnv
from tests.support import (
    add_email_customers,
    customer_event,
    system_campaign,
    value,
    wait_for_entries,
    wait_until,
)

pytestmark = pytest.mark.slow

VICTIM = "victim7f3a"
EMAIL = "victim7f3a@example.com"
PHONE = "+15550007788"
TOKEN = "pushtokenQ93Z"
NEEDLES = (VICTIM, EMAIL, PHONE, TOKEN)
GRANTED = common_pb2.CONSENT_GRANTED

EVERYTHING = "{{ client.customer_id }} {{ client.email }} {{ client.phone }} {{ client.attributes.nickname|default('') }}"
PING = campaigns_pb2.Campaign(
    display_name="Ping",
    trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ping")),
    actions=[
        campaigns_pb2.Action(
            email=campaigns_pb2.EmailAction(subject="Hi {{ client.email }}", text_body=EVERYTHING)
        ),
        campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text=EVERYTHING)),
        campaigns_pb2.Action(push=campaigns_pb2.PushAction(title="Hi", body=EVERYTHING)),
    ],
)
RESTOCK = system_campaign(
    "Restock", campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Back", text_body=EVERYTHING))
)


async def traces_in_database(db: asyncpg.Connection) -> dict[str, int]:
    """(table.column -> rows holding a needle) over every text-like column of every table."""
    columns = await db.fetch(
        """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE table_schema = 'public'
          AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY')
        ORDER BY table_name, column_name
        """
    )
    assert len(columns) >= 20, "the scan sees too few columns to prove anything"
    found: dict[str, int] = {}
    for column in columns:
        table = '"' + column["table_name"].replace('"', '""') + '"'
        name = '"' + column["column_name"].replace('"', '""') + '"'
        if column["data_type"] == "bytea":
            holds = f"position(convert_to($1, 'UTF8') in {name}) > 0"
        else:
            holds = f"position($1 in {name}::text) > 0"
        for needle in NEEDLES:
            rows = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {holds}", needle)
            if rows:
                key = f"{column['table_name']}.{column['column_name']}"
                found[key] = found.get(key, 0) + rows
    return found


async def traces_in_redis(client: redis.Redis, stream_key: str) -> list[str]:
    """Every key of the test (the stream, the dead-letter stream...) whose content holds a needle."""
    prefix = stream_key.rsplit(":", 1)[0]
    found = []
    async for key in client.scan_iter(match=f"{prefix}*"):
        assert await client.type(key) == b"stream", key
        for _, fields in await client.xrange(key):
            blob = b" ".join(k + b"=" + v for k, v in fields.items())
            if any(needle.encode() in blob for needle in NEEDLES):
                found.append(key.decode())
    return found


def traces_in_files(directories: Iterable[Path]) -> list[str]:
    found = []
    for directory in directories:
        for path in directory.rglob("*"):
            text = path.name + (path.read_text(errors="replace") if path.is_file() else "")
            if any(needle in text for needle in NEEDLES):
                found.append(str(path))
    return found


async def test_erasure_leaves_no_row_entry_or_file_of_the_customer(  # type: ignore[no-untyped-def]
    campaigns_env: CampaignsEnv,
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
    db: asyncpg.Connection,
    redis_client: redis.Redis,
    stream_key: str,
    tmp_path: Path,
) -> None:
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    sinks = [tmp_path / "replica-a", tmp_path / "replica-b"]

    def env(sink: Path) -> dict[str, str]:
        # No provider configured: every channel writes message files (local development).
        return campaigns_env(
            EVENTLINE_SMTP_HOST="",
            EVENTLINE_SMS_URL="",
            EVENTLINE_PUSH_URL="",
            EVENTLINE_CAMPAIGNS_SINK_DIR=str(sink),
        )

    others = await add_email_customers(db, "c", 30)  # their ids sort before the victim's
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id=VICTIM,
                email=EMAIL,
                phone=PHONE,
                push_tokens=[TOKEN],
                attributes={"nickname": value(f"the one with {EMAIL}")},
                email_consent=GRANTED,
                sms_consent=GRANTED,
                push_consent=GRANTED,
            )
        )
    )
    async with running(Settings.from_env(env(sinks[0])), consume=False) as replica_a:
        async with running(Settings.from_env(env(sinks[1])), consume=False) as replica_b:
            engine = replica_b.engine
            async with grpc.aio.insecure_channel(f"127.0.0.1:{replica_b.port}") as channel:
                stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
                # E-mails are capped across campaigns: the victim's sends are counted (channel_sends).
                await stub.SetChannelCaps(
                    campaigns_pb2.SetChannelCapsRequest(
                        caps=[
                            campaigns_pb2.ChannelCap(
                                channel=campaigns_pb2.CHANNEL_EMAIL,
                                max_sends=10,
                                window=duration_pb2.Duration(seconds=86400),
                            )
                        ]
                    )
                )
                ids = []
                for campaign in (PING, RESTOCK):
                    created = await stub.CreateCampaign(
                        campaigns_pb2.CreateCampaignRequest(campaign=campaign)
                    )
                    ids.append(created.campaign.campaign_id)
                    await stub.ActivateCampaign(
                        campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
                    )
                # Test sends: to the victim's e-mail address and push token (rendered for
                # someone else), and one rendered for the victim (to someone else's address).
                # Replica B writes their files.
                for campaign_id, channel, address, sample in (
                    (ids[1], campaigns_pb2.CHANNEL_EMAIL, EMAIL.upper(), "c0001"),
                    (ids[0], campaigns_pb2.CHANNEL_PUSH, TOKEN, "c0001"),
                    (ids[1], campaigns_pb2.CHANNEL_EMAIL, "marketer@example.com", VICTIM),
                ):
                    sent = await stub.SendTestMessage(
                        campaigns_pb2.SendTestMessageRequest(
                            campaign_id=campaign_id,
                            channel=channel,
                            address=address,
                            sample_customer_id=sample,
                        )
                    )
                    assert sent.test_delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT
            for replica in (replica_a, replica_b):
                await replica.cache.refresh()

            # Replica A sends the victim (and c0000) the customer-event campaign on every channel.
            await ingestion.TrackCustomerEvent(customer_event(VICTIM, "Ping", "ping-1", note=EMAIL))
            await ingestion.TrackCustomerEvent(customer_event("c0000", "Ping", "ping-2"))
            await wait_for_entries(redis_client, stream_key, 2)
            await replica_a.consumer.drain()

            # Replica B fans a system event out to everyone, the victim last, and is killed after
            # recording the victim's batch: its fan-out is unfinished when the victim is erased.
            await ingestion.TrackSystemEvent(
                ingestion_pb2.TrackSystemEventRequest(event_id="restock-1", name="Restock")
            )
            await wait_for_entries(redis_client, stream_key, 3)
            entries = await redis_client.xreadgroup("campaigns", "crashed", {stream_key: ">"}, count=10)
            [restock] = [StreamEntry.from_fields(i, f) for i, f in entries[0][1] if f[b"name"] == b"Restock"]
            engine.fan_out.batch = 10
            batches = 0

            async def killed_after_the_last_batch() -> None:
                nonlocal batches
                batches += 1
                if batches == 4:  # 10 + 10 + 10 + the victim
                    raise RuntimeError("killed")

            with pytest.raises(RuntimeError):
                await engine.handle_system_event(restock.event(), killed_after_the_last_batch)
            assert not await db.fetchval("SELECT done FROM campaign_fanouts WHERE event_id = 'restock-1'")

        # Everything holds the victim now: the scans can fail.
        before = await traces_in_database(db)
        assert {
            "customers.email",
            "customers.phone",
            "deliveries.customer_id",
            "customer_events.context",
            "channel_sends.customer_id",
            "test_deliveries.address",
            "test_deliveries.sample_customer_id",
        } <= set(before), before
        assert await traces_in_redis(redis_client, stream_key)
        # Replica B: the victim's fan-out e-mail and the three test sends.
        assert len(traces_in_files(sinks[:1])) == 3 and len(traces_in_files(sinks[1:])) == 4
        assert await db.fetchval("SELECT count(*) FROM test_deliveries") == 3

        # Replica B is down; replica A runs while the customer is erased.
        erased = await ingestion.EraseCustomer(ingestion_pb2.EraseCustomerRequest(customer_id=VICTIM))
        assert erased.customer_erased
        await wait_until(
            lambda: not traces_in_files(sinks[:1]), 30, "replica A kept the victim's message files"
        )

    # Replica B starts again: it clears its own files and finishes the fan-out, the victim excepted.
    async with running(Settings.from_env(env(sinks[1])), consume=False) as replica_b:
        await wait_until(
            lambda: not traces_in_files(sinks[1:]), 30, "replica B kept the victim's message files"
        )
        await replica_b.consumer.drain()
        assert await db.fetchval("SELECT done FROM campaign_fanouts WHERE event_id = 'restock-1'")

    assert await traces_in_database(db) == {}
    assert await db.fetchval("SELECT count(*) FROM test_deliveries") == 0
    assert await traces_in_redis(redis_client, stream_key) == []
    assert traces_in_files(sinks) == []
    # The others' messages stay, once each.
    [kept] = sinks[0].iterdir()  # c0000's e-mail (it has no phone or push token)
    assert "To: c0000@example.com" in kept.read_text()
    written = sorted(p.read_text().split("To: ")[1].split("\n")[0] for p in sinks[1].iterdir())
    assert written == sorted(others)
