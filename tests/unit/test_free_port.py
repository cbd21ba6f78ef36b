"""``free_port``: outside the kernel's ephemeral range, bindable, and reserved machine-wide."""

from __future__ import annotations

import socket
import subprocess
import sys

from eventline_shared.dev.harness import LOOPBACK, ephemeral_ports, free_port


def test_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    ephemeral = ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not any(port in ephemeral for port in ports)
    with socket.socket() as server:
        server.bind((LOOPBACK, ports[0]))


def test_a_cluster_node_port_comes_with_its_bus_port() -> None:
    port = free_port(companions=(10000,))
    assert port + 10000 not in ephemeral_ports()
    with socket.socket() as server, socket.socket() as bus:
        server.bind((LOOPBACK, port))
        bus.bind((LOOPBACK, port + 10000))


def test_another_process_never_gets_a_port_this_one_reserved() -> None:
    mine = {free_port() for _ in range(200)}
    theirs = subprocess.run(
        [
            sys.executable,
            "-c",
            "from eventline_shared.dev.harness import _reserve\n"
            f"print(sorted(port for port in {sorted(mine)!r} if _reserve(port)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert theirs.strip() == "[]"
