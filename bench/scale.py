"""Scale benchmark: batch ingest and the campaign consumer on a single Redis vs a 3-master Redis Cluster.

Starts a 6-node Redis Cluster (3 masters, 3 replicas) and, for the baseline, a
single ``redis-server`` of its own, both on loopback from the same binary the
embedded Redis uses and with the same persistence (none): each server's CPU is
then this benchmark's alone. Ingestion and campaigns run as their own processes
(``python -m eventline_<service>``), each set-up on a database of its own.

One round sends a fresh set of events and measures, from this process:

* batch ingest: 500 events per TrackEvents call, 4 calls in flight, from the
  first call until every event is committed and published on the stream (all
  partitions);
* through campaigns: until every partition's campaigns group has nothing pending
  and nothing unread (each event's triggers evaluated; no campaign matches, so
  nothing is sent);
* CPU per event of each process over the round (user + system, from the kernel):
  ingestion, campaigns and each redis-server.

Before the rounds, the client's own CPU per command (this process, one call at
a time) of what the relay and the consumer send: append (the relay's script),
XREADGROUP, XACK, XCLAIM, on the single Redis and on the cluster.

The comparison the issue asks for (single Redis vs the cluster, one partition,
one replica of each service) keeps both set-ups running and alternates their
rounds, in the order S C C S S C C S …, after a warm-up round each: a change of
the machine's load (other work shares it) then falls on both alike, and with an
even number of pairs a steady drift (the figures sink a little as the stream and
the database grow) weighs on both equally. Then the same number of rounds run
both set-ups at once (each its own events): every moment's load falls on both,
and each round gives a ratio of its own (``together_ratios``). It reports each
set-up's median and spread (min-max) and the ratio of the medians. Then the
cluster with 2 and 4 partitions and with 4 partitions and 2 replicas of each
service run one after another (one warm-up and one measured round each).

Redis, PostgreSQL, the services and this load generator share the machine, so
the figures compare configurations; they do not size a deployment (see
docs/scaling.md for what they predict).

Usage: python bench/scale.py [--quick] [--pairs N] [--events N]. The last line
printed is one JSON object with ``cluster_batch_events_per_s`` (1 partition,
median), ``single_batch_events_per_s`` (median) and their ``ratio``, the median of
the paired rounds' ratios, and two ratios the machine's load moves less: CPU per
event of the single set-up over the cluster's, for the services alone
(``services_cpu_ratio``, what the cluster client costs) and with the Redis
servers (``all_cpu_ratio``, the replicas' copies included).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import grpc
from common import ROOT, cpu_seconds, drop_database, free_port, fresh_database, serving, start_service, stop
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from ingest import customer_request, make_events

sys.path.insert(0, str(ROOT / "libs"))

from eventline_shared.dev import embedded
from eventline_shared.dev.embedded_cluster import RedisClusterNodes, wait_for
from eventline_shared.streams import stream

POLL_S = 0.02
"""How often this process asks Redis whether a round is done (the same for every set-up)."""


async def client_cpu_per_command(url: str, calls: int) -> dict[str, float]:
    """This process's CPU per call (µs) of the commands the relay and the consumer send, one at a time:
    what the client costs on top of Redis (a cluster client finds each command's node itself)."""
    client = stream.connect(url)
    key = f"bench:{uuid.uuid4().hex[:8]}:commands"
    appender = stream.Appender(client, key)
    entry = stream.pack_entry("c1", "e1", "A", b"payload", "")
    await appender.append([entry])
    await client.xgroup_create(key, "g", id="0")
    commands: dict[str, Callable[[], Awaitable[Any]]] = {
        "append": lambda: appender.append([entry]),
        "xreadgroup": lambda: client.xreadgroup("g", "c", {key: ">"}, count=10),
        "xack": lambda: client.xack(key, "g", "0-1"),
        "xclaim": lambda: client.xclaim(key, "g", "c", 0, ["0-1"], justid=True),
    }
    found = {}
    try:
        for name, command in commands.items():
            for _ in range(calls // 10):
                await command()
            started = time.process_time()
            for _ in range(calls):
                await command()
            found[name] = round((time.process_time() - started) / calls * 1e6, 1)
    finally:
        await client.delete(key)
        await client.aclose()
    return found


def start_single_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A plain ``redis-server`` on a free port, no persistence (like the cluster's nodes)."""
    import redis

    port = free_port()
    process = subprocess.Popen(
        [
            *(embedded.find_redis_server(), "--port", str(port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), "--save", "", "--appendonly", "no", "--protected-mode", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = redis.Redis(port=port, socket_timeout=5)
    wait_for(lambda: bool(node.ping()), "the single redis-server did not start")
    node.close()
    return process, f"redis://127.0.0.1:{port}/0"


@dataclass
class SetUp:
    """Ingestion and campaigns replicas on one Redis (or cluster) and a database of their own."""

    label: str
    redis_url: str
    redis_pids: dict[str, int]
    """Each redis-server of this set-up by a name (``redis`` or ``master<port>``/``replica<port>``)."""
    partitions: int = 1
    replicas: int = 1
    database: str = field(default_factory=lambda: f"eventline_bench_scale_{uuid.uuid4().hex[:6]}")
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    published: int = 0

    async def start(self) -> None:
        url = await fresh_database(self.database)
        self.layout = stream.StreamLayout(f"bench:{uuid.uuid4().hex[:8]}:events", self.partitions)
        env = {
            "EVENTLINE_DATABASE_URL": url,
            "EVENTLINE_REDIS_URL": self.redis_url,
            "EVENTLINE_STREAM": self.layout.base,
            "EVENTLINE_STREAM_PARTITIONS": str(self.partitions),
            "EVENTLINE_LOG_LEVEL": "WARNING",
        }
        self.ports = [free_port() for _ in range(self.replicas)]
        self.processes = [
            start_service(
                "ingestion",
                {**env, "EVENTLINE_INGESTION_PORT": str(p), "EVENTLINE_INGESTION_DB_POOL_SIZE": "8"},
            )
            for p in self.ports
        ]
        self.processes += [
            start_service(
                "campaigns",
                {**env, "EVENTLINE_CAMPAIGNS_PORT": str(free_port()), "EVENTLINE_CAMPAIGNS_GROUP": "bench"},
            )
            for _ in range(self.replicas)
        ]
        self.client = stream.connect(self.redis_url)
        for port in self.ports:
            await serving(port)
        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in self.ports]
        self.stubs = [ingestion_pb2_grpc.IngestionServiceStub(channel) for channel in self.channels]

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        stop(*self.processes)
        for key in self.layout.keys + self.layout.dead_letter_keys:
            await self.client.delete(key)
        await self.client.aclose()
        await drop_database(self.database)

    def _cpu(self) -> dict[str, float]:
        found = {}
        for i, process in enumerate(self.processes):
            role = "ingestion" if i < self.replicas else "campaigns"
            found[f"{role}{i % self.replicas}"] = cpu_seconds(process.pid)
        for name, pid in self.redis_pids.items():
            found[name] = cpu_seconds(pid)
        return found

    async def round(self, count: int) -> dict[str, Any]:
        """Send ``count`` fresh events and measure them through (see the module's description)."""
        events = make_events(count, seed=self.published)
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

        target = self.published + count
        load = os.getloadavg()[0]
        cpu_before = self._cpu()
        started = time.perf_counter()
        # 4 calls in flight, spread over the ingestion replicas; durable = on the stream's partitions.
        await asyncio.gather(*(worker(self.stubs[i % self.replicas]) for i in range(4)))
        while sum([await self.client.xlen(key) for key in self.layout.keys]) < target:
            await asyncio.sleep(POLL_S)
        batch_s = time.perf_counter() - started
        while not await common.consumed(self.client, self.layout.keys, "bench"):
            await asyncio.sleep(POLL_S)
        through_s = time.perf_counter() - started
        cpu = {name: seconds - cpu_before[name] for name, seconds in self._cpu().items()}
        self.published = target

        def per_event(seconds: float) -> float:
            return round(seconds / count * 1e6, 1)

        return {
            "batch_events_per_s": round(count / batch_s),
            "through_campaigns_events_per_s": round(count / through_s),
            "ingestion_cpu_us_per_event": per_event(
                sum(v for k, v in cpu.items() if k.startswith("ingestion"))
            ),
            "campaigns_cpu_us_per_event": per_event(
                sum(v for k, v in cpu.items() if k.startswith("campaigns"))
            ),
            "redis_cpu_us_per_event": per_event(sum(v for k, v in cpu.items() if k in self.redis_pids)),
            "redis_cpu_us_per_event_by_server": {k: per_event(cpu[k]) for k in self.redis_pids},
            "seconds": round(through_s, 1),
            "load_average": round(load, 1),
        }


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, with the spread (min-max) of the throughputs."""
    numbers = [key for key, value in rounds[0].items() if isinstance(value, int | float)]
    found: dict[str, Any] = {key: statistics.median(float(r[key]) for r in rounds) for key in numbers}
    for key in ("batch_events_per_s", "through_campaigns_events_per_s"):
        values = [float(r[key]) for r in rounds]
        found[f"{key}_spread"] = [min(values), max(values)]
    servers = rounds[0]["redis_cpu_us_per_event_by_server"]
    assert isinstance(servers, dict)
    found["redis_cpu_us_per_event_by_server"] = {
        name: statistics.median(r["redis_cpu_us_per_event_by_server"][name] for r in rounds)
        for name in servers
    }
    found["rounds"] = len(rounds)
    return found


async def main(quick: bool, pairs: int | None, count: int | None) -> dict[str, Any]:
    pairs = pairs or (4 if quick else 8)
    count = count or (30_000 if quick else 100_000)
    others_count = 10_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="eventline-bench-cluster-") as directory:
        cluster = RedisClusterNodes(Path(directory))
        await asyncio.to_thread(cluster.start)
        single_redis, single_url = start_single_redis(Path(directory))
        try:
            roles = cluster.roles()
            cluster_pids = {
                f"{'master' if roles[port] == 'master' else 'replica'}{port}": process.pid
                for port, process in zip(cluster.ports, cluster.processes, strict=True)
            }
            single = SetUp("single_p1_r1", single_url, {"redis": single_redis.pid})
            clustered = SetUp("cluster_p1_r1", cluster.url, cluster_pids)
            client_cpu = {
                label: await client_cpu_per_command(url, 2000 if quick else 10_000)
                for label, url in (("single", single_url), ("cluster", cluster.url))
            }
            print("client CPU per command (us)", json.dumps(client_cpu), flush=True)
            rounds: dict[str, list[dict[str, Any]]] = {single.label: [], clustered.label: []}
            together: list[tuple[dict[str, Any], dict[str, Any]]] = []
            await single.start()
            await clustered.start()
            try:
                for setup in (single, clustered):
                    print(setup.label, "warm-up", json.dumps(await setup.round(count // 3)), flush=True)
                for pair in range(pairs):
                    order = (single, clustered) if pair % 2 == 0 else (clustered, single)
                    for setup in order:
                        result = await setup.round(count)
                        rounds[setup.label].append(result)
                        print(setup.label, f"round {pair}", json.dumps(result), flush=True)
                for pair in range(pairs):
                    both = await asyncio.gather(single.round(count), clustered.round(count))
                    together.append(both)
                    for setup, result in zip((single, clustered), both, strict=True):
                        print(setup.label, f"together {pair}", json.dumps(result), flush=True)
            finally:
                await single.stop()
                await clustered.stop()
            results = {label: summary(each) for label, each in rounds.items()}
            paired = [
                round(float(c["batch_events_per_s"]) / float(s["batch_events_per_s"]), 3)
                for s, c in zip(rounds[single.label], rounds[clustered.label], strict=True)
            ]
            paired_together = [
                round(float(c["batch_events_per_s"]) / float(s["batch_events_per_s"]), 3) for s, c in together
            ]
            for label, index in ((single.label, 0), (clustered.label, 1)):
                results[f"{label}_together"] = summary([pair[index] for pair in together])
            for partitions, replicas in ((2, 1), (4, 1), (4, 2)):
                setup = SetUp(
                    f"cluster_p{partitions}_r{replicas}", cluster.url, cluster_pids, partitions, replicas
                )
                await setup.start()
                try:
                    await setup.round(others_count // 3)
                    results[setup.label] = summary([await setup.round(others_count)])
                finally:
                    await setup.stop()
                print(setup.label, json.dumps(results[setup.label]), flush=True)
        finally:
            single_redis.terminate()
            single_redis.wait(30)
            await asyncio.to_thread(cluster.stop)
    single_batch = float(results[single.label]["batch_events_per_s"])
    cluster_batch = float(results[clustered.label]["batch_events_per_s"])
    single_through = float(results[single.label]["through_campaigns_events_per_s"])
    cluster_through = float(results[clustered.label]["through_campaigns_events_per_s"])

    def cpu_per_event(label: str, parts: tuple[str, ...]) -> float:
        return sum(float(results[label][f"{part}_cpu_us_per_event"]) for part in parts)

    services = ("ingestion", "campaigns")
    return {
        "events_per_round": count,
        "pairs": pairs,
        "runs": results,
        "cluster_batch_events_per_s": cluster_batch,
        "single_batch_events_per_s": single_batch,
        "ratio": round(cluster_batch / single_batch, 3),
        "paired_ratios": paired,
        "paired_ratio_median": statistics.median(paired),
        "together_ratios": paired_together,
        "together_ratio_median": statistics.median(paired_together),
        # Load-independent: what the cluster costs per event, as a throughput ratio if CPU were the
        # only limit (all processes on the same cores): the services alone (the cluster client's
        # cost), and with every redis-server (the replicas' copies included).
        "services_cpu_ratio": round(
            cpu_per_event(single.label, services) / cpu_per_event(clustered.label, services), 3
        ),
        "all_cpu_ratio": round(
            cpu_per_event(single.label, (*services, "redis"))
            / cpu_per_event(clustered.label, (*services, "redis")),
            3,
        ),
        "ratio_through_campaigns": round(cluster_through / single_through, 3),
        "client_cpu_us_per_command": client_cpu,
        "cpus": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="a short run on less data")
    parser.add_argument(
        "--pairs",
        type=int,
        help="measured rounds of each set-up (4 quick, 8 full; even: S C C S balances a drift)",
    )
    parser.add_argument("--events", type=int, help="events per round (30,000 quick, 100,000 full)")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.quick, arguments.pairs, arguments.events))))
