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
import contextlib
import fcntl
import os
import random
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LOOPBACK = "127.0.0.1"


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000  # below: well-known and registered servers' ports
_RESERVATIONS = Path(tempfile.gettempdir()) / "eventline-ports"
_reserved: dict[int, int] = {}
"""port -> the descriptor of its lock file, held while this process lives (a bare descriptor, not a
file object: one still open at exit is what the reservation means, not a leak to warn about)."""
_pick = random.Random()  # seeded from the OS, not the global generator a test may seed


def ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports (and ``bind(port=0)``)."""
    try:
        low, high = (int(bound) for bound in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def _bindable(port: int, host: str) -> bool:
    """Whether ``port`` can be bound on ``host`` and on every address right now (no listener,
    no connection using it as its local port)."""
    for address in {host, ""}:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def _reserve(port: int) -> bool:
    """Take the machine-wide reservation of ``port``: an exclusive flock on a file of its own,
    held until this process exits, so that concurrent test suites never hand out the same port."""
    if not _RESERVATIONS.is_dir():
        _RESERVATIONS.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # shared by every user, as /tmp is (umask aside)
            _RESERVATIONS.chmod(0o1777)
    lock = os.open(_RESERVATIONS / str(port), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return False
    _reserved[port] = lock
    return True


def _release(port: int) -> None:
    os.close(_reserved.pop(port))


def free_port(host: str = LOOPBACK, *, companions: Sequence[int] = ()) -> int:
    """A TCP port for a server to listen on, free now and reserved for this process.

    Picked at random outside the kernel's ephemeral range, so no outgoing connection on the
    machine takes it between the pick and the server's bind (as it can a ``bind(port=0)`` port),
    and reserved machine-wide (``_reserve``), so no other process using this helper picks it,
    even after the server that used it stopped (a restart on the same port finds it free).
    ``companions`` are offsets of further ports reserved with it (a Redis cluster bus at +10000).
    """
    ephemeral = ephemeral_ports()
    offsets = (0, *companions)
    for _ in range(10000):
        port = _pick.randrange(_LOWEST_PORT, 65536 - max(offsets))
        group = [port + offset for offset in offsets]
        if any(each in ephemeral or each in _reserved for each in group):
            continue
        taken = [each for each in group if _reserve(each)]
        if len(taken) == len(group) and all(_bindable(each, host) for each in group):
            return port
        for each in taken:
            _release(each)
    raise OSError(f"no free port outside the ephemeral range {ephemeral.start}-{ephemeral.stop - 1}")


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
