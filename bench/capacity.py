"""Capacity: CPU per event of each component, the input of docs/scaling.md's capacity model.

Starts ingestion, segmentation and campaigns as their own processes (as bench/triggers.py
does, with its SMTP receiver) and measures the CPU time (user + system, from Linux
/proc) each component spends per event in two flows:

* batch: customer events that trigger nothing, sent as TrackEvents batches of 500:
  stored, published by the outbox relay, read and evaluated by the campaign service.
  Measured until the consumer group has read and acknowledged every entry;
* triggered: customer events tracked one per call at ``--rate`` for a campaign with an
  audience (so each event also costs a MatchCustomer in segmentation), rendered,
  recorded in the ledger and sent by e-mail. Measured until every message arrived.

Components: each service process; PostgreSQL (the postmaster and every process it
started: backends, WAL writer, checkpointer...); Redis (its INFO used_cpu_*). Those
two are whole servers, so run this against servers of its own, for example embedded
ones: ``EVENTLINE_EMBEDDED=1 python -m eventline_shared.dev.embedded test -- sh -c
'EVENTLINE_BENCH_POSTGRES_URL=$EVENTLINE_TEST_POSTGRES_URL
EVENTLINE_BENCH_REDIS_URL=$EVENTLINE_TEST_REDIS_URL python bench/capacity.py --quick'``
The SMTP receiver and the load generator run in this
process and are not counted.

Usage: python bench/capacity.py [--quick] [--rate N]. The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import common
import redis.asyncio as redis
from common import POSTGRES_URL, REDIS_URL, drop_database
from eventline.campaigns.v1 import campaigns_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg
from triggers import PING_CAMPAIGN, Services, SmtpReceiver, activate, bench_triggers, database_with_customers

BATCH = 500
GROUP = "campaigns"

AUDIENCE_PING = campaigns_pb2.Campaign()
AUDIENCE_PING.CopyFrom(PING_CAMPAIGN)
AUDIENCE_PING.audience.CopyFrom(seg.Filter(customer=seg.CustomerCondition(has_address=seg.CHANNEL_EMAIL)))
"""bench/triggers.py's Ping campaign with an audience: every trigger also asks segmentation."""


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s(parent: int) -> float:
    """CPU of ``parent`` and its direct children (a postmaster's processes), living ones only."""
    total = _process_cpu_s(parent)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


class Meter:
    """CPU seconds used so far by each component."""

    def __init__(self, services: Services, postmaster: int, client: redis.Redis) -> None:
        self.services, self.postmaster, self.client = services, postmaster, client

    async def read(self) -> dict[str, float]:
        used = self.services.cpu_seconds()
        used["postgresql"] = _children_cpu_s(self.postmaster)
        info = await self.client.info("cpu")
        used["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return used


def per_event_ms(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    return {name: round((after[name] - before[name]) * 1000 / events, 3) for name in before}


async def consumed(client: redis.Redis, stream: str, timeout_s: float = 300) -> None:
    """Wait until the campaign service has read and acknowledged every entry of the stream."""
    deadline = time.monotonic() + timeout_s
    while True:
        groups = {g["name"].decode(): g for g in await client.xinfo_groups(stream)}
        group = groups.get(GROUP)
        if group is not None and group["lag"] == 0 and group["pending"] == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the campaign service did not consume {stream} in {timeout_s} s: {group}")
        await asyncio.sleep(0.05)


async def bench_batches(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub, client: redis.Redis, stream: str, events: int
) -> None:
    run = uuid.uuid4().hex[:6]
    published = await client.xlen(stream)

    async def send(first: int) -> None:
        items = [
            ingestion_pb2.TrackEventsItem(
                customer_event=ingestion_pb2.TrackCustomerEventRequest(
                    event_id=f"{run}-{i}", customer_id=f"cust{i % 20_000:06d}", name="Viewed"
                )
            )
            for i in range(first, min(first + BATCH, events))
        ]
        reply = await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items), timeout=60)
        assert all(r.WhichOneof("result") == "event" for r in reply.results)

    for start in range(0, events, BATCH * 4):  # four batches in flight
        await asyncio.gather(*(send(first) for first in range(start, min(start + BATCH * 4, events), BATCH)))
    deadline = time.monotonic() + 300
    while await client.xlen(stream) < published + events:
        assert time.monotonic() < deadline, "the relay did not publish every event"
        await asyncio.sleep(0.05)
    await consumed(client, stream)


async def main(quick: bool, rate: int) -> dict[str, object]:
    customers = 20_000
    batch_events = 20_000 if quick else 100_000
    seconds = 4.0 if quick else 15.0
    database_name = f"eventline_bench_capacity_{uuid.uuid4().hex[:8]}"
    url = await database_with_customers(database_name, customers)
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    sink = tempfile.mkdtemp(prefix="eventline-bench-sink-")
    admin = await asyncpg.connect(POSTGRES_URL)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # The postmaster: the parent of this connection's backend process.
        backend = int(await admin.fetchval("SELECT pg_backend_pid()"))
        postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        with SmtpReceiver() as receiver:
            services = Services(url, stream, receiver.port, sink)
            meter = Meter(services, postmaster, client)
            try:
                await services.ready()
                async with services.stubs() as (ingestion, campaigns):
                    await activate(campaigns, AUDIENCE_PING)
                    await asyncio.sleep(1.0)  # the campaign service has loaded the campaign
                    # Warm-up: connections, prepared statements, compiled templates.
                    await bench_triggers(ingestion, receiver, 200, 1.0, stream)
                    await bench_batches(ingestion, client, stream, 2 * BATCH)

                    before = await meter.read()
                    await bench_batches(ingestion, client, stream, batch_events)
                    batch = per_event_ms(before, await meter.read(), batch_events)

                    before = await meter.read()
                    run = await bench_triggers(ingestion, receiver, rate, seconds, stream)
                    await consumed(client, stream)
                    triggered = per_event_ms(before, await meter.read(), run.events)
            finally:
                services.stop()
    finally:
        await admin.close()
        await client.delete(stream, stream + ":dead")
        await client.aclose()
        shutil.rmtree(sink, ignore_errors=True)
        await drop_database(database_name)
    return {
        "batch_events": batch_events,
        "batch_cpu_ms_per_event": batch,
        "batch_total_cpu_ms_per_event": round(sum(batch.values()), 3),
        "triggered_events": run.events,
        "triggered_rate_per_s": rate,
        "triggered_cpu_ms_per_event": triggered,
        "triggered_total_cpu_ms_per_event": round(sum(triggered.values()), 3),
        "cpus": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="a short run on less data")
    parser.add_argument("--rate", type=int, default=300, help="triggered events per second (default 300)")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments.quick, arguments.rate))
    for flow in ("batch", "triggered"):
        parts = ", ".join(f"{k} {v}" for k, v in result[f"{flow}_cpu_ms_per_event"].items())  # type: ignore[union-attr]
        print(f"{flow}: {result[f'{flow}_total_cpu_ms_per_event']} CPU ms per event ({parts})")
    print(json.dumps(result))
