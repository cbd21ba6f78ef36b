"""A partition's hash slot moved to another master while it is published and consumed (MOVED and ASK).

Resharding moves a slot the way ``redis-cli --cluster reshard`` does: the target
imports it, the source migrates it, its keys are MIGRATEd, and every master is
told the new owner. In the middle (keys already moved, the slot not yet handed
over) the source answers ASK; afterwards a client with the old slot map hears
MOVED. The stream client routes XREADGROUP itself (``stream.connect``): appends,
reads and acknowledgements must follow both, and every entry is handed over
once, in order. A second test checks that no read asks a node ``COMMAND GETKEYS``
(what redis-py does before every read otherwise).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis
from redis.cluster import key_slot

from eventline_shared.dev.embedded_cluster import RedisClusterNodes
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import ConsumerGroup
from tests.integration.test_stream_order import Recorder
from tests.support import packed_entry


async def _masters(cluster: RedisClusterNodes) -> dict[int, tuple[str, list[tuple[int, int]]]]:
    """Each master's port, node id and slot ranges (CLUSTER NODES of one node)."""
    async with redis.Redis(port=cluster.ports[0]) as node:
        text: Any = await node.execute_command("CLUSTER", "NODES")
    masters = {}
    for line in (text.decode() if isinstance(text, bytes) else text).splitlines():
        fields = line.split()
        if "master" not in fields[2].split(","):
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        ranges = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = part.partition("-")
            ranges.append((int(first), int(last or first)))
        masters[port] = (fields[0], ranges)
    return masters


@pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)
async def test_appends_and_reads_follow_a_partition_whose_slot_moves_to_another_master(
    stream_key, redis_url, redis_client, redis_cluster
):
    key = stream.StreamLayout(stream_key, 2).key(1)
    slot = key_slot(key.encode())
    appender = stream.Appender(redis_client, key)
    recorder = Recorder()
    # Group and consumer named like XREADGROUP's keyword: the client must not take them for it.
    group = ConsumerGroup(redis_client, recorder, streams=[key], group="STREAMS", consumer="STREAMS", batch=3)

    async def publish(first: int, count: int) -> None:
        await appender.append([packed_entry(f"c{i % 2}", f"e{i}") for i in range(first, first + count)])

    await publish(0, 5)
    assert await group.drain() == 5

    masters = await _masters(redis_cluster)
    [source] = [port for port, (_, ranges) in masters.items() if any(a <= slot <= b for a, b in ranges)]
    target = next(port for port in masters if port != source)
    source_id, target_id = masters[source][0], masters[target][0]
    async with redis.Redis(port=source) as old, redis.Redis(port=target) as new:
        await new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys: Any = await old.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        assert key.encode() in keys
        await old.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)

        # The keys live on the target, the slot still on the source: it answers ASK.
        await publish(5, 5)
        assert await group.drain() == 5

        for port in [target, source, *(p for p in masters if p not in (source, target))]:
            async with redis.Redis(port=port) as master:
                await master.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    # The client still maps the slot to the source: it hears MOVED and follows.
    await publish(10, 5)
    assert await group.drain() == 5
    assert [event_id for _, event_id in recorder.handled] == [f"e{i}" for i in range(15)]
    assert (await redis_client.xpending(key, "STREAMS"))["pending"] == 0
    async with redis.Redis(port=target) as new:
        assert await new.xlen(key) == 15


async def _getkeys_calls(cluster: RedisClusterNodes) -> int:
    """How many COMMAND GETKEYS the cluster's nodes have served (INFO commandstats)."""
    total = 0
    for port in cluster.ports:
        async with redis.Redis(port=port) as node:
            stats: Any = await node.info("commandstats")
        total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


@pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)
async def test_reads_ask_no_node_for_their_keys(stream_key, redis_url, redis_client, redis_cluster):
    """redis-py would send COMMAND GETKEYS before every XREADGROUP (its keys are "movable")."""
    await stream.Appender(redis_client, stream_key).append([packed_entry("c1", "e0")])
    group = ConsumerGroup(redis_client, Recorder(), streams=[stream_key], group="g", consumer="c")
    await group.ensure_group()
    before = await _getkeys_calls(redis_cluster)
    assert await group.drain() == 1
    await redis_client.xreadgroup("g", "c", {stream_key: ">"}, count=1)
    assert await _getkeys_calls(redis_cluster) == before
