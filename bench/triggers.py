"""Campaign benchmark: trigger latency at a steady event rate, and system-event fan-out throughput.

Starts ingestion, segmentation and campaigns as their own processes
(``python -m eventline_...``) on a database of their own, with every campaign
channel on the file sink, and measures:

* trigger latency: customer events tracked one per call at ``--rate`` events/s
  (1,000 by default) for a campaign "event Ping -> e-mail"; for each event, the
  time from its TrackCustomerEvent reply (the event is accepted: committed) to
  the modification time of the message file the sink wrote (the message was
  handed to the channel). The message subject carries the event id;
* fan-out: one system event for a campaign whose audience (a segmentation
  filter streamed by StreamCustomers: "has an e-mail address") is every
  customer; messages per second from the TrackSystemEvent reply to the last
  message file (rendered, ledgered and handed to the sink).

Data: 100,000 customers (20,000 with --quick) with an e-mail address and
e-mail consent, COPYed in; trigger events go to the first 1,000 of them.

Caveats: file modification times have the kernel's timestamp granularity
(a few ms on some file systems), and the load generator shares the machine's
cores with the three services, PostgreSQL and Redis; it also prints the
campaign service's own share (stream append -> sink).

Usage: python bench/triggers.py [--quick] [--rate N]. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import redis.asyncio as redis
from common import REDIS_URL, free_port, fresh_database, serving, start_service, stop
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg

TRIGGER_CUSTOMERS = 1000


async def database_with_customers(name: str, customers: int) -> str:
    url = await fresh_database(name)
    connection = await asyncpg.connect(url)
    try:
        await connection.copy_records_to_table(
            "customers",
            records=[(f"cust{i:06d}", f"cust{i:06d}@example.com", 1) for i in range(customers)],
            columns=["customer_id", "email", "email_consent"],
        )
        await connection.execute("ANALYZE customers")
    finally:
        await connection.close()
    return url


class Services:
    """The three services as processes, as they run in production."""

    def __init__(self, url: str, stream: str, sink: str) -> None:
        self.ports = {"ingestion": free_port(), "segmentation": free_port(), "campaigns": free_port()}
        env = {
            "EVENTLINE_DATABASE_URL": url,
            "EVENTLINE_REDIS_URL": REDIS_URL,
            "EVENTLINE_STREAM": stream,
            "EVENTLINE_LOG_LEVEL": os.environ.get("EVENTLINE_BENCH_LOG_LEVEL", "WARNING"),
            "EVENTLINE_INGESTION_PORT": str(self.ports["ingestion"]),
            "EVENTLINE_SEGMENTATION_PORT": str(self.ports["segmentation"]),
            "EVENTLINE_CAMPAIGNS_PORT": str(self.ports["campaigns"]),
            "EVENTLINE_SEGMENTATION_ADDR": f"127.0.0.1:{self.ports['segmentation']}",
            "EVENTLINE_CAMPAIGNS_SINK_DIR": sink,
            "EVENTLINE_INGESTION_DB_POOL_SIZE": "16",
            # Messages go to the file sink, whatever this shell has configured.
            "EVENTLINE_SMTP_HOST": "",
            "EVENTLINE_SMS_URL": "",
            "EVENTLINE_PUSH_URL": "",
        }
        self.processes = [start_service(name, env) for name in self.ports]

    async def ready(self) -> None:
        for port in self.ports.values():
            await serving(port)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each service process (Linux /proc)."""
        used: dict[str, float] = {}
        for name, process in zip(self.ports, self.processes, strict=True):
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                used[name] = 0.0
        return used

    def stop(self) -> None:
        stop(*self.processes)


def count_files(directory: str) -> int:
    with os.scandir(directory) as entries:
        return sum(1 for _ in entries)


async def wait_for_files(directory: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while count_files(directory) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_files(directory)} of {count} messages after {timeout_s} s")
        await asyncio.sleep(0.05)


def read_messages(directory: str) -> dict[str, int]:
    """Subject (the event id, or a customer id) -> file modification time in ns."""
    found: dict[str, int] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            with open(entry.path) as handle:
                for line in handle:
                    if line.startswith("Subject: "):
                        found[line[9:].strip()] = entry.stat().st_mtime_ns
                        break
    return found


async def activate(stub: campaigns_pb2_grpc.CampaignServiceStub, campaign: campaigns_pb2.Campaign) -> None:
    created = await stub.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=campaign))
    await stub.ActivateCampaign(
        campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
    )


async def bench_triggers(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub, sink: str, rate: int, seconds: float, stream: str
) -> tuple[float, float, float, float, int]:
    """(p50 ms, p99 ms, p50 ms from the request, p50 ms to the stream, events) of accepted -> handed to the sink."""
    rng = random.Random(1)
    run = uuid.uuid4().hex[:6]
    total = int(rate * seconds)
    sent: dict[str, int] = {}
    accepted: dict[str, int] = {}
    retries: list[str] = []

    async def track(i: int) -> None:
        event_id = f"{run}-{i}"
        request = ingestion_pb2.TrackCustomerEventRequest(
            event_id=event_id, customer_id=f"cust{rng.randrange(TRIGGER_CUSTOMERS):06d}", name="Ping"
        )
        sent[event_id] = time.time_ns()
        for _ in range(5):
            try:
                await ingestion.TrackCustomerEvent(request, timeout=30)
                accepted[event_id] = time.time_ns()
                return
            except grpc.aio.AioRpcError as exc:
                # The event id makes a retry safe; count them, they are reported.
                if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                    raise
                retries.append(exc.code().name)
                await asyncio.sleep(0.05)

    before = count_files(sink)
    start = time.monotonic()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(track(i)))
    await asyncio.gather(*tasks)
    await wait_for_files(sink, before + len(accepted), 60)
    handed = read_messages(sink)
    latencies = sorted(max(0, handed[e] - accepted[e]) / 1e6 for e in accepted)
    from_request = sorted((handed[e] - sent[e]) / 1e6 for e in accepted)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    # Where the time goes: accepted -> appended to the stream (the entry id is the append time in ms).
    client = redis.Redis.from_url(REDIS_URL)
    try:
        appended = {
            fields[b"event_id"].decode(): int(entry_id.split(b"-")[0]) * 1_000_000
            for entry_id, fields in await client.xrange(stream)
        }
    finally:
        await client.aclose()
    to_stream = statistics.median(max(0, appended[e] - accepted[e]) / 1e6 for e in accepted if e in appended)
    # The campaign service's own share: appended to the stream (ms resolution) -> handed to the sink.
    in_campaigns = sorted((handed[e] - appended[e]) / 1e6 for e in accepted if e in appended)
    print(
        f"campaigns only (stream append -> sink): p50 {statistics.median(in_campaigns):.2f} ms, "
        f"p99 {in_campaigns[int(len(in_campaigns) * 0.99)]:.2f} ms"
    )
    if retries:
        print(
            f"ingestion answered {len(retries)} calls with {sorted(set(retries))}; retried with the same event id"
        )
    return statistics.median(latencies), p99, statistics.median(from_request), to_stream, total


async def bench_fanout(
    ingestion: ingestion_pb2_grpc.IngestionServiceStub, sink: str, customers: int
) -> float:
    before = count_files(sink)
    reply = await ingestion.TrackSystemEvent(
        ingestion_pb2.TrackSystemEventRequest(event_id="sale-1", name="Sale")
    )
    accepted = time.time_ns()
    assert not reply.deduplicated
    await wait_for_files(sink, before + customers, 600)
    last = max(mtime for subject, mtime in read_messages(sink).items() if subject.startswith("Sale for "))
    return customers / ((last - accepted) / 1e9)


async def main(quick: bool, rate: int) -> dict[str, float]:
    customers = 20_000 if quick else 100_000
    seconds = 3.0 if quick else 10.0
    url = await database_with_customers("eventline_bench_triggers", customers)
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    sink = tempfile.mkdtemp(
        prefix="eventline-bench-sink-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    services = Services(url, stream, sink)
    try:
        await services.ready()
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{services.ports['ingestion']}") as ingestion_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{services.ports['campaigns']}") as campaigns_channel,
        ):
            ingestion = ingestion_pb2_grpc.IngestionServiceStub(ingestion_channel)
            campaigns = campaigns_pb2_grpc.CampaignServiceStub(campaigns_channel)
            await activate(
                campaigns,
                campaigns_pb2.Campaign(
                    display_name="Ping",
                    trigger=campaigns_pb2.Trigger(
                        customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Ping")
                    ),
                    actions=[
                        campaigns_pb2.Action(
                            email=campaigns_pb2.EmailAction(
                                subject="{{ event.event_id }}", text_body="Hello {{ client.customer_id }}"
                            )
                        )
                    ],
                ),
            )
            await activate(
                campaigns,
                campaigns_pb2.Campaign(
                    display_name="Sale",
                    trigger=campaigns_pb2.Trigger(
                        system_event=campaigns_pb2.SystemEventTrigger(event_name="Sale")
                    ),
                    audience=seg.Filter(customer=seg.CustomerCondition(has_address=seg.CHANNEL_EMAIL)),
                    actions=[
                        campaigns_pb2.Action(
                            email=campaigns_pb2.EmailAction(
                                subject="Sale for {{ client.customer_id }}",
                                html_body="<p>Dear {{ client.email }}, everything is 20% off.</p>",
                                text_body="Dear {{ client.email }}, everything is 20% off.",
                            )
                        )
                    ],
                ),
            )
            await asyncio.sleep(1.0)  # every replica has loaded the campaigns
            # Warm-up: connections, prepared statements, compiled templates.
            await bench_triggers(ingestion, sink, 200, 1.0, stream)
            cpu_before = services.cpu_seconds()
            p50, p99, p50_request, p50_stream, events = await bench_triggers(
                ingestion, sink, rate, seconds, stream
            )
            cpu_after = services.cpu_seconds()
            fanout_per_s = await bench_fanout(ingestion, sink, customers)
            cpu_fanout = services.cpu_seconds()
    finally:
        services.stop()
        shutil.rmtree(sink, ignore_errors=True)
    return {
        "trigger_events": events,
        "trigger_rate_per_s": rate,
        "trigger_p50_ms": round(p50, 2),
        "trigger_p99_ms": round(p99, 2),
        "trigger_from_request_p50_ms": round(p50_request, 2),
        "trigger_to_stream_p50_ms": round(p50_stream, 2),
        "trigger_campaigns_cpu_ms_per_event": round(
            (cpu_after["campaigns"] - cpu_before["campaigns"]) * 1000 / events, 3
        ),
        "trigger_ingestion_cpu_ms_per_event": round(
            (cpu_after["ingestion"] - cpu_before["ingestion"]) * 1000 / events, 3
        ),
        "fanout_customers": customers,
        "fanout_campaigns_cpu_ms_per_message": round(
            (cpu_fanout["campaigns"] - cpu_after["campaigns"]) * 1000 / customers, 3
        ),
        "fanout_messages_per_s": round(fanout_per_s),
        "cpus": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run on less data")
    parser.add_argument("--rate", type=int, default=1000, help="customer events per second (default 1000)")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments.quick, arguments.rate))
    print(
        f"trigger: p50 {result['trigger_p50_ms']} ms (target <= 10), p99 {result['trigger_p99_ms']} ms "
        f"(target <= 50) at {result['trigger_rate_per_s']} events/s"
    )
    print(
        f"fan-out: {result['fanout_messages_per_s']} messages/s to {result['fanout_customers']} customers (target >= 5000)"
    )
    print(json.dumps(result))
