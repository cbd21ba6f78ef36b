"""Service processes on loopback: a free port, ``python -m eventline_<service>`` started, and
waiting until its gRPC health service reports SERVING.

The one harness that ``eventline up``, ``eventline demo``, the tests and the benchmarks use.
It lives in the shared libraries rather than in eventline_cli because the dev/test servers of
``eventline_shared.dev.embedded`` need free ports too, and the shared libraries never import the
CLI (the CLI sits above them). No service imports it, and it needs nothing the services do
not already depend on (grpcio-health-checking; aiohttp for the gateway's /readyz).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
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


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _never() -> bool:
    return False


async def _poll(
    ready: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float, exited: Callable[[], bool]
) -> bool:
    """True once ``ready()`` is; False as soon as ``exited()`` is; TimeoutError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not exited():
        if await ready():
            return True
        if loop.time() > deadline:
            raise TimeoutError(f"not ready after {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
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
    health = health_pb2_grpc.HealthStub(channel)

    async def serving() -> bool:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return await _poll(serving, timeout_s, interval_s, exited)


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


async def wait_http_ready(
    url: str,
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.2,
    exited: Callable[[], bool] = _never,
) -> bool:
    """``wait_serving`` for an HTTP server (the gateway): ready once a GET of ``url`` (its
    ``/readyz``) answers 200."""
    import aiohttp  # only the HTTP gateway's callers need it

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

        async def ready() -> bool:
            try:
                async with session.get(url) as reply:
                    return reply.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        return await _poll(ready, timeout_s, interval_s, exited)


async def wait_ready(
    host: str,
    port: int,
    *,
    http: bool = False,
    timeout_s: float = 30.0,
    interval_s: float = 0.2,
    exited: Callable[[], bool] = _never,
) -> bool:
    """Wait for the service on ``host:port``: a gRPC service until its health reports SERVING,
    the HTTP gateway (``http``) until its ``/readyz`` answers 200."""
    if http:
        return await wait_http_ready(
            f"http://{host}:{port}/readyz", timeout_s=timeout_s, interval_s=interval_s, exited=exited
        )
    return await wait_serving_at(f"{host}:{port}", timeout_s=timeout_s, interval_s=interval_s, exited=exited)
