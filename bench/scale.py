"""Scale benchmark: batch ingest and the campaign consumer on a single Redis vs a 3-master Redis Cluster.

Starts a 6-node Redis Cluster (3 masters, 3 replicas) on loopback from the
same redis-server the embedded Redis uses, then for each configuration runs
ingestion and campaigns as their own processes (``python -m eventline_<service>``)
on a fresh database and measures from this process:

* batch ingest: 500 events per TrackEvents call, 4 calls in flight, until every
  event is committed and published on the stream (all partitions);
* trigger flow: the same events through the campaigns consumer group (each one's
  triggers evaluated; no campaign matches, so nothing is sent) until every
  partition's group has nothing pending and nothing unread;
* CPU per event of each service process (user + system, Linux /proc), over both.

Configurations: single Redis with 1 partition (the baseline); the cluster with
1, 2 and 4 partitions; the cluster with 4 partitions and 2 replicas of each
service. Redis, PostgreSQL, the services and this load generator share the
machine, so the figures compare configurations; they do not size a deployment.

Usage: python bench/scale.py [--quick]. The last line printed is one JSON object
with ``cluster_batch_events_per_s`` (1 partition), ``single_batch_events_per_s``
and their ``ratio``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import common
import grpc
from common import ROOT, drop_database, free_port, fresh_database, serving, start_service, stop
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from ingest import customer_request, make_events

sys.path.insert(0, str(ROOT / "libs"))

from eventline_shared.dev.embedded_cluster import RedisClusterNodes
from eventline_shared.streams import stream

REDIS_URL = os.environ.get("EVENTLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def consumed(client: stream.Client, keys: list[str], group: str) -> bool:
    """Whether the group has read and acknowledged everything on every partition."""
    for key in keys:
        for info in await client.xinfo_groups(key):
            if info["name"] in (group, group.encode()) and (info["pending"] or info.get("lag")):
                return False
    return True


async def run(redis_url: str, partitions: int, replicas: int, events: list) -> dict[str, float]:  # type: ignore[type-arg]
    name = f"eventline_bench_scale_{uuid.uuid4().hex[:6]}"
    url = await fresh_database(name)
    base = f"bench:{uuid.uuid4().hex[:8]}:events"
    layout = stream.StreamLayout(base, partitions)
    common = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": redis_url,
        "EVENTLINE_STREAM": base,
        "EVENTLINE_STREAM_PARTITIONS": str(partitions),
        "EVENTLINE_LOG_LEVEL": "WARNING",
    }
    ports = [free_port() for _ in range(replicas)]
    processes = [
        start_service(
            "ingestion",
            {**common, "EVENTLINE_INGESTION_PORT": str(p), "EVENTLINE_INGESTION_DB_POOL_SIZE": "8"},
        )
        for p in ports
    ]
    processes += [
        start_service(
            "campaigns",
            {**common, "EVENTLINE_CAMPAIGNS_PORT": str(free_port()), "EVENTLINE_CAMPAIGNS_GROUP": "bench"},
        )
        for _ in range(replicas)
    ]
    client = stream.connect(redis_url)
    try:
        for port in ports:
            await serving(port)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
        stubs = [ingestion_pb2_grpc.IngestionServiceStub(channel) for channel in channels]
        queue: asyncio.Queue[ingestion_pb2.TrackEventsRequest] = asyncio.Queue()
        for i in range(0, len(events), 500):
            items = [
                ingestion_pb2.TrackEventsItem(customer_event=customer_request(e)) for e in events[i : i + 500]
            ]
            queue.put_nowait(ingestion_pb2.TrackEventsRequest(events=items))

        async def worker(stub: ingestion_pb2_grpc.IngestionServiceStub) -> None:
            while not queue.empty():
                reply = await stub.TrackEvents(queue.get_nowait(), timeout=60)
                assert all(r.WhichOneof("result") == "event" for r in reply.results)

        cpu_before = {p.pid: cpu_seconds(p.pid) for p in processes}
        started = time.perf_counter()
        # 4 calls in flight, spread over the ingestion replicas; durable = on the stream's partitions.
        await asyncio.gather(*(worker(stubs[i % replicas]) for i in range(4)))
        while sum([await client.xlen(key) for key in layout.keys]) < len(events):
            await asyncio.sleep(0.005)
        batch_s = time.perf_counter() - started
        while not await consumed(client, layout.keys, "bench"):
            await asyncio.sleep(0.01)
        through_s = time.perf_counter() - started
        cpu = {p.pid: cpu_seconds(p.pid) - cpu_before[p.pid] for p in processes}
        for channel in channels:
            await channel.close()
    finally:
        stop(*processes)
        for key in layout.keys + layout.dead_letter_keys:
            await client.delete(key)
        await client.aclose()
        await drop_database(name)
    ingestion_cpu = sum(cpu[p.pid] for p in processes[:replicas])
    campaigns_cpu = sum(cpu[p.pid] for p in processes[replicas:])
    return {
        "batch_events_per_s": round(len(events) / batch_s),
        "through_campaigns_events_per_s": round(len(events) / through_s),
        "ingestion_cpu_us_per_event": round(ingestion_cpu / len(events) * 1e6, 1),
        "campaigns_cpu_us_per_event": round(campaigns_cpu / len(events) * 1e6, 1),
    }


async def main(quick: bool) -> dict[str, object]:
    events = make_events(10_000 if quick else 100_000, seed=1)
    with tempfile.TemporaryDirectory(prefix="eventline-bench-cluster-") as directory:
        cluster = RedisClusterNodes(Path(directory))
        await asyncio.to_thread(cluster.start)
        try:
            configurations = [
                ("single", REDIS_URL, 1, 1),
                ("cluster", cluster.url, 1, 1),
                ("cluster", cluster.url, 2, 1),
                ("cluster", cluster.url, 4, 1),
                ("cluster", cluster.url, 4, 2),
            ]
            results = {}
            for backend, url, partitions, replicas in configurations:
                label = f"{backend}_p{partitions}_r{replicas}"
                results[label] = await run(url, partitions, replicas, events)
                print(label, json.dumps(results[label]), flush=True)
        finally:
            await asyncio.to_thread(cluster.stop)
    single = results["single_p1_r1"]["batch_events_per_s"]
    clustered = results["cluster_p1_r1"]["batch_events_per_s"]
    return {
        "events": len(events),
        "runs": results,
        "cluster_batch_events_per_s": clustered,
        "single_batch_events_per_s": single,
        "ratio": round(clustered / single, 3),
        "cpus": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="a short run on less data")
    print(json.dumps(asyncio.run(main(parser.parse_args().quick))))
