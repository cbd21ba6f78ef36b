"""Service processes on loopback: a free port, ``python -m eventline_<service>`` started, and
waiting until its gRPC health service reports SERVING.

The one harness that ``eventline up``, ``eventline demo``, the tests and the benchmarks use.
It lives in the shared libraries rather than in eventline_cli because the dev/test servers of
``eventline_shared.embedded`` need free ports too, and the shared libraries never import the
CLI (the CLI sits above them). No service imports it; it needs only grpcio-health-checking,
which every service already depends on for its own health service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def service_command(service: str) -> list[str]:
    """The command that runs ``service`` (ingestion, segmentation, campaigns, gateway) in this Python."""
    return [sys.executable, "-m", f"eventline_{service}"]


def start_service(
    service: str,
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    output: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m eventline_<service>`` with ``env`` added to this process's environment;
    its stdout and stderr go to ``output`` when given (the services log JSON lines to stderr)."""
    return subprocess.Popen(
        service_command(service),
        env={**os.environ, **env},
        cwd=cwd,
        stdout=output,
        stderr=output,
    )


def _never() -> bool:
    return False


async def wait_serving(
    channel: grpc.aio.Channel,
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    exited: Callable[[], bool] = _never,
) -> bool:
    """Wait until the health service behind ``channel`` reports SERVING (for the whole server).

    True once it does; False as soon as ``exited()`` says the process that should serve has
    stopped; ``TimeoutError`` after ``timeout_s``. Unanswered checks (the server not listening
    yet) count as not serving.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    health = health_pb2_grpc.HealthStub(channel)
    while not exited():
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        if loop.time() > deadline:
            raise TimeoutError(f"not SERVING after {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
    return False


async def wait_serving_at(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, str]] = (),
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    exited: Callable[[], bool] = _never,
) -> bool:
    """``wait_serving`` over a channel of its own to ``address`` (TLS with ``credentials``)."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address, options=options)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    async with channel:
        return await wait_serving(channel, timeout_s=timeout_s, interval_s=interval_s, exited=exited)
