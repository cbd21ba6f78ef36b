"""Soak: mixed traffic at half the measured capacity, watching memory, errors and stream lag.

Not part of CI. Starts the three services as processes on a database of their
own (file-sink channel for messages), seeds customers and two campaigns, then:

1. probes capacity: the traffic mix as fast as 32 workers can go, for a while;
2. runs the same mix at half that rate for ``--minutes`` (10 by default) as an
   open loop (an operation starts every 1/rate s whatever the replies' latency,
   as independent clients do), and every few seconds samples each service's
   resident memory, the campaign consumer group's lag and pending entries, and
   the error count; each kind of operation's p50/p99 latency in the first and
   the last minute shows whether the services slow down as the data grows.

Before the probe each customer gets 30 days of history (25 events), so that
reads do not start on empty tables. The mix, as a platform sees it: 65% a
customer event that triggers a campaign e-mail, 25% a batch of 20 events, 8% a
timeline read, 2% a segment count ("at least 2 purchases in 30 days": its cost
grows with the events in the window); a system event that fans out to every
customer every 30 s.

PostgreSQL: the benchmark server's, unless its autovacuum is off (the
development machine's is): a 10-minute soak then measures table bloat, not the
services, so the soak starts an embedded PostgreSQL with stock settings, as
``eventline up`` runs it.

Usage: python bench/soak.py [--minutes N] [--quick]. The last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import common
import grpc
import psutil
import redis.asyncio as redis
from common import POSTGRES_URL, REDIS_URL, fresh_database, serving, start_service, stop
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from eventline_shared.dev.embedded import EmbeddedPostgres

PORTS = {"ingestion": 50961, "segmentation": 50962, "campaigns": 50963}
CUSTOMERS = 2000
HISTORY = 25


def start_services(url: str, stream: str, sink: str) -> dict[str, subprocess.Popen[bytes]]:
    env = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": stream,
        "EVENTLINE_LOG_LEVEL": "WARNING",
        "EVENTLINE_CAMPAIGNS_SINK_DIR": sink,
        "EVENTLINE_SEGMENTATION_ADDR": f"127.0.0.1:{PORTS['segmentation']}",
        **{f"EVENTLINE_{name.upper()}_PORT": str(port) for name, port in PORTS.items()},
    }
    return {name: start_service(name, env) for name in PORTS}


def event(
    customer: str, name: str, occurred_at: float | None = None, **context: int
) -> ingestion_pb2.TrackCustomerEventRequest:
    request = ingestion_pb2.TrackCustomerEventRequest(
        event_id=uuid.uuid4().hex,
        customer_id=customer,
        name=name,
        context={k: common_pb2.Value(integer_value=v) for k, v in context.items()},
    )
    if occurred_at is not None:
        request.occurred_at.FromNanoseconds(int(occurred_at * 1e9))
    return request


class Traffic:
    def __init__(self, channels: dict[str, grpc.aio.Channel]) -> None:
        self.ingestion = ingestion_pb2_grpc.IngestionServiceStub(channels["ingestion"])
        self.segmentation = segmentation_pb2_grpc.SegmentationServiceStub(channels["segmentation"])
        self.rng = random.Random(19)
        self.errors: dict[str, int] = {}
        self.latencies: list[tuple[float, str, float]] = []  # (finished at, kind, seconds) per success
        self.segment = segmentation_pb2.Filter(
            event=segmentation_pb2.EventCondition(
                name="Purchase",
                count=segmentation_pb2.CountTest(
                    period=segmentation_pb2.Period(
                        last=segmentation_pb2.RecentPeriod(amount=30, unit=segmentation_pb2.TIME_UNIT_DAY)
                    ),
                    at_least=2,
                ),
            )
        )

    def customer(self) -> str:
        return f"soak{self.rng.randrange(CUSTOMERS)}"

    async def one(self) -> None:
        roll = self.rng.random()
        started = time.monotonic()
        try:
            if roll < 0.65:
                kind = "event"
                await self.ingestion.TrackCustomerEvent(
                    event(self.customer(), "Purchase", amount=5), timeout=10
                )
            elif roll < 0.9:
                kind = "batch"
                items = [
                    ingestion_pb2.TrackEventsItem(customer_event=event(self.customer(), "PageView", page=i))
                    for i in range(20)
                ]
                await self.ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items), timeout=10)
            elif roll < 0.98:
                kind = "timeline"
                await self.ingestion.ListTimeline(
                    ingestion_pb2.ListTimelineRequest(customer_id=self.customer(), page_size=20), timeout=10
                )
            else:
                kind = "count"
                await self.segmentation.CountCustomers(
                    segmentation_pb2.CountCustomersRequest(filter=self.segment), timeout=10
                )
            finished = time.monotonic()
            self.latencies.append((finished, kind, finished - started))
        except grpc.aio.AioRpcError as error:
            key = error.code().name
            self.errors[key] = self.errors.get(key, 0) + 1

    async def as_fast_as_possible(self, seconds: float, workers: int = 32) -> float:
        """The mix from ``workers`` closed loops for ``seconds``; returns ops/s."""
        start_ops, started = len(self.latencies), time.monotonic()
        end = started + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                await self.one()

        await asyncio.gather(*(worker() for _ in range(workers)))
        return (len(self.latencies) - start_ops) / (time.monotonic() - started)

    async def at_rate(self, rate: float, seconds: float, max_in_flight: int = 512) -> float:
        """Start an operation every 1/``rate`` s for ``seconds`` whatever the replies' latency (an
        open loop, as real clients are), with at most ``max_in_flight`` outstanding. Returns ops/s."""
        start_ops, started = len(self.latencies), time.monotonic()
        end = started + seconds
        slots = asyncio.Semaphore(max_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def run() -> None:
            try:
                await self.one()
            finally:
                slots.release()

        next_at = started
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await slots.acquire()
            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / rate
        await asyncio.gather(*tasks)
        return (len(self.latencies) - start_ops) / (time.monotonic() - started)

    def latency_ms(self, since: float, until: float) -> dict[str, float]:
        """p50 and p99 of each kind of operation that finished in [since, until)."""
        by_kind: dict[str, list[float]] = {}
        for finished, kind, seconds in self.latencies:
            if since <= finished < until:
                by_kind.setdefault(kind, []).append(seconds * 1000)
        figures: dict[str, float] = {}
        for kind, values in sorted(by_kind.items()):
            values.sort()
            figures[f"{kind}_p50"] = round(values[len(values) // 2], 1)
            figures[f"{kind}_p99"] = round(values[min(len(values) - 1, len(values) * 99 // 100)], 1)
        return figures


async def seed(channels: dict[str, grpc.aio.Channel]) -> None:
    ingestion = ingestion_pb2_grpc.IngestionServiceStub(channels["ingestion"])
    for start in range(0, CUSTOMERS, 100):
        await asyncio.gather(
            *(
                ingestion.UpsertCustomer(
                    ingestion_pb2.UpsertCustomerRequest(
                        customer=common_pb2.Customer(
                            customer_id=f"soak{i}",
                            email=f"soak{i}@example.com",
                            email_consent=common_pb2.CONSENT_GRANTED,
                        )
                    )
                )
                for i in range(start, start + 100)
            )
        )
    # History first (campaigns are not active yet, so it sends nothing).
    rng, now = random.Random(7), time.time()
    history = [
        ingestion_pb2.TrackEventsItem(
            customer_event=event(
                f"soak{i}", rng.choice(["Purchase", "PageView"]), now - rng.uniform(60, 30 * 86400), page=1
            )
        )
        for i in range(CUSTOMERS)
        for _ in range(HISTORY)
    ]
    for start in range(0, len(history), 1000):
        await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=history[start : start + 1000]))
    campaigns = campaigns_pb2_grpc.CampaignServiceStub(channels["campaigns"])
    email = campaigns_pb2.Action(
        email=campaigns_pb2.EmailAction(
            subject="Thanks {{ client.customer_id }}", text_body="Amount {{ client.eventContext.amount }}"
        )
    )
    for campaign_id, trigger in [
        (
            "soak-purchase",
            campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="Purchase")),
        ),
        (
            "soak-news",
            campaigns_pb2.Trigger(system_event=campaigns_pb2.SystemEventTrigger(event_name="News")),
        ),
    ]:
        await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                campaign_id=campaign_id,
                campaign=campaigns_pb2.Campaign(display_name=campaign_id, trigger=trigger, actions=[email]),
            )
        )
        await campaigns.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id))


async def sample(
    processes: dict[str, subprocess.Popen[bytes]], client: redis.Redis, stream: str
) -> dict[str, float]:
    row: dict[str, float] = {}
    for name, process in processes.items():
        row[f"{name}_rss_mb"] = psutil.Process(process.pid).memory_info().rss / 2**20
    for group in await client.xinfo_groups(stream):
        row["lag"] = float(group.get("lag") or 0)
        row["pending"] = float(group["pending"])
    return row


async def postgres_server(run_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The benchmark PostgreSQL when its autovacuum is on, else an embedded one with stock settings."""
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        autovacuum = await admin.fetchval("SHOW autovacuum")
    finally:
        await admin.close()
    if autovacuum == "on":
        return POSTGRES_URL, None
    print("autovacuum is off on the benchmark PostgreSQL: starting an embedded one", flush=True)
    server = EmbeddedPostgres("postgres", run_dir / "postgres", log_file=open(run_dir / "postgres.log", "ab"))
    return await server.start(), server


async def main(minutes: float, probe_s: float) -> dict[str, object]:
    run_dir = Path(tempfile.mkdtemp(prefix="eventline-soak-pg-"))
    server_url, embedded = await postgres_server(run_dir)
    try:
        return await soak(server_url, minutes, probe_s)
    finally:
        if embedded is not None:
            await embedded.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


async def soak(server_url: str, minutes: float, probe_s: float) -> dict[str, object]:
    url = await fresh_database("eventline_bench_soak", server_url)
    stream = f"soak:{uuid.uuid4().hex[:8]}:events"
    sink = tempfile.mkdtemp(prefix="eventline-soak-")
    processes = start_services(url, stream, sink)
    client = redis.Redis.from_url(REDIS_URL)
    samples: list[dict[str, float]] = []
    try:
        await asyncio.gather(*(serving(port) for port in PORTS.values()))
        channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{port}") for name, port in PORTS.items()}
        await seed(channels)
        traffic = Traffic(channels)
        capacity = await traffic.as_fast_as_possible(probe_s)
        rate = capacity / 2
        print(f"capacity {capacity:.0f} ops/s; soaking at {rate:.0f} ops/s for {minutes} min", flush=True)
        probe_errors = dict(traffic.errors)
        traffic.errors.clear()
        ingestion = traffic.ingestion
        end = time.monotonic() + minutes * 60
        next_news = time.monotonic() + 30

        async def watch() -> None:
            nonlocal next_news
            while time.monotonic() < end:
                samples.append(await sample(processes, client, stream))
                if time.monotonic() >= next_news:
                    next_news += 30
                    await ingestion.TrackSystemEvent(
                        ingestion_pb2.TrackSystemEventRequest(event_id=uuid.uuid4().hex, name="News")
                    )
                await asyncio.sleep(5)

        watcher = asyncio.create_task(watch())
        soak_started = time.monotonic()
        achieved = await traffic.at_rate(rate, minutes * 60)
        soak_ended = time.monotonic()
        await watcher
        await asyncio.sleep(5)
        samples.append(await sample(processes, client, stream))
        for channel in channels.values():
            await channel.close()
    finally:
        stop(*processes.values())
        await client.delete(stream, stream + ":dead")
        await client.aclose()
    settled = samples[max(1, len(samples) // 5)]  # after warm-up
    result: dict[str, object] = {
        "minutes": minutes,
        "capacity_ops_per_s": round(capacity),
        "soak_ops_per_s": round(achieved),
        "errors": sum(traffic.errors.values()),
        "error_codes": ",".join(f"{k}:{v}" for k, v in sorted(traffic.errors.items())),
        "probe_errors": sum(probe_errors.values()),
        "max_lag": max(s.get("lag", 0) for s in samples),
        "final_lag": samples[-1].get("lag", 0),
        "max_pending": max(s.get("pending", 0) for s in samples),
        "final_pending": samples[-1].get("pending", 0),
        "messages_in_sink": sum(1 for _ in Path(sink).rglob("*") if _.is_file()),
        "latency_ms_first_minute": traffic.latency_ms(soak_started, soak_started + 60),
        "latency_ms_last_minute": traffic.latency_ms(soak_ended - 60, soak_ended),
    }
    for name in PORTS:
        result[f"{name}_rss_settled_mb"] = round(settled[f"{name}_rss_mb"], 1)
        result[f"{name}_rss_end_mb"] = round(samples[-1][f"{name}_rss_mb"], 1)
        result[f"{name}_rss_max_mb"] = round(max(s[f"{name}_rss_mb"] for s in samples), 1)
    return result


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="one minute, shorter probe")
    parser.add_argument("--minutes", type=float, default=10.0)
    options = parser.parse_args()
    minutes = 1.0 if options.quick else options.minutes
    print(json.dumps(asyncio.run(main(minutes, probe_s=10 if options.quick else 30))))
