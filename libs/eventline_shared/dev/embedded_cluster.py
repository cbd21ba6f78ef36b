"""A real Redis Cluster on loopback for tests and benchmarks: 6 nodes (3 masters, 3 replicas).

The nodes are the ``redis-server`` the embedded Redis uses
(``eventline_shared.dev.embedded.find_redis_server``), started with cluster mode
on free ports; the cluster is formed the way ``redis-cli --cluster create``
does it (ADDSLOTSRANGE, MEET, REPLICATE), from Python, so no other tool is
needed. Every wait is for a condition (a node answering, the cluster state
``ok``, a replica's link up), with a generous deadline.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from eventline_shared.dev import embedded
from eventline_shared.dev.harness import free_port

SLOT_RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


def cluster_node_port() -> int:
    """A free port whose cluster bus port (port + 10000, the default) is free too."""
    return free_port(companions=(10000,))


def start_cluster_node(binary: str, port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    """One cluster-enabled ``redis-server`` on 127.0.0.1:``port``, no persistence."""
    return subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
            *("--save", "", "--appendonly", "no", "--protected-mode", "no", *extra),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cluster_command(node: redis.Redis, *args: str | int) -> Any:
    """``CLUSTER <args>`` on one node."""
    return node.execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@dataclass
class RedisClusterNodes:
    """A running 6-node cluster; ``url`` is what EVENTLINE_REDIS_URL says to reach it."""

    directory: Path
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def start(self) -> RedisClusterNodes:
        binary = embedded.find_redis_server()
        self.ports = [cluster_node_port() for _ in range(6)]
        for port in self.ports:
            # A short node timeout: a failover is decided in about a second, not fifteen.
            self.processes.append(
                start_cluster_node(binary, port, self.directory, "--cluster-node-timeout", "1000")
            )
        nodes = [self.node(port) for port in self.ports]
        for node in nodes:
            wait_for(lambda node=node: bool(node.ping()), "a cluster node did not start")  # type: ignore[misc]
        for master, (first, last) in zip(nodes[:3], SLOT_RANGES, strict=True):
            cluster_command(master, "ADDSLOTSRANGE", first, last)
        for node in nodes[1:]:
            cluster_command(node, "MEET", "127.0.0.1", self.ports[0])
        wait_for(lambda: all(len(self._nodes_line(node)) == 6 for node in nodes), "the nodes did not meet")
        for replica, master in zip(nodes[3:], nodes[:3], strict=True):
            master_id = cluster_command(master, "MYID").decode()
            wait_for(
                lambda replica=replica, master_id=master_id: (  # type: ignore[misc]
                    cluster_command(replica, "REPLICATE", master_id) is not None
                ),
                "a replica could not follow its master",
            )
        self.wait_healthy()
        for node in nodes:
            node.close()
        return self

    @staticmethod
    def _nodes_line(node: redis.Redis) -> list[str]:
        return [line for line in cluster_command(node, "NODES").decode().splitlines() if line]

    def roles(self) -> dict[int, str]:
        """Each node's role now: ``master`` or ``slave``."""
        found = {}
        for port in self.ports:
            with self.node(port) as node:
                found[port] = node.info("replication")["role"]
        return found

    def wait_healthy(self) -> None:
        """Until every node says the cluster is ok and every replica's link to its master is up."""

        def healthy() -> bool:
            for port in self.ports:
                with self.node(port) as node:
                    if node.cluster("info")["cluster_state"] != "ok":
                        return False
                    info = node.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            return list(self.roles().values()).count("master") == 3

        wait_for(healthy, "the cluster did not become healthy")

    def replica_of(self, key: str) -> int:
        """The port of a replica of the master holding ``key``'s slot."""
        with self.node(self.ports[0]) as any_node:
            slot = int(cluster_command(any_node, "KEYSLOT", key))
            for first, last, _master, *replicas in cluster_command(any_node, "SLOTS"):
                if first <= slot <= last and replicas:
                    return int(replicas[0][1])
        raise AssertionError(f"no replica serves the slot of {key}")

    def failover(self, replica_port: int) -> None:
        """CLUSTER FAILOVER on a replica: it becomes its master's master, the master its replica."""
        with self.node(replica_port) as replica:
            cluster_command(replica, "FAILOVER")
        wait_for(lambda: self.roles()[replica_port] == "master", "the replica did not take over")
        self.wait_healthy()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
