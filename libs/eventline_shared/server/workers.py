"""Several worker processes of one service on one port (SO_REUSEPORT), for a host with many cores.

One Python process serves gRPC on about one core. With
``EVENTLINE_<SERVICE>_WORKERS=N`` (N > 1) the process started becomes a
supervisor: it starts N copies of the service, each binding the same port with
SO_REUSEPORT so that the kernel spreads new connections over them, forwards
SIGTERM and SIGINT to them, and exits when they have all exited. When one
worker exits on its own, the others are stopped and the supervisor exits with
its code, so that the orchestrator restarts the whole unit rather than leaving
it short of a worker. Worker ``i`` serves metrics on the metrics port plus
``i``. Everything a worker shares with the others is in PostgreSQL and Redis,
exactly as between replicas.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from types import FrameType

from eventline_shared.environment import ConfigError, env_int

WORKER_INDEX = "EVENTLINE_WORKER_INDEX"
"""Set by the supervisor in each worker's environment: which worker it is (0 to N-1)."""
REUSEPORT_OPTION = ("grpc.so_reuseport", 1)
"""The server option every worker binds with."""
_PR_SET_PDEATHSIG = 1


def worker_count(environ: Mapping[str, str], service: str) -> int:
    """How many worker processes the service runs (``EVENTLINE_<SERVICE>_WORKERS``, default 1)."""
    return env_int(environ, f"EVENTLINE_{service.upper()}_WORKERS", 1, minimum=1)


def supervising(environ: Mapping[str, str], service: str) -> bool:
    """Whether this process is to start workers rather than serve itself."""
    return worker_count(environ, service) > 1 and WORKER_INDEX not in environ


def _die_with_parent() -> None:
    """In a worker, before it runs: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: workers outlive a killed supervisor


def supervise(service: str, environ: Mapping[str, str]) -> int:
    """Run the service's workers until they exit; returns the exit code for this process."""
    count = worker_count(environ, service)
    prefix = f"EVENTLINE_{service.upper()}_"
    if env_int(environ, prefix + "PORT", 1) == 0:
        raise ConfigError(f"{prefix}PORT must be a fixed port when {prefix}WORKERS is more than 1")
    metrics_port = env_int(environ, prefix + "METRICS_PORT", -1, minimum=-1)
    workers = []
    for index in range(count):
        env = {**environ, WORKER_INDEX: str(index)}
        if metrics_port > 0:
            env[prefix + "METRICS_PORT"] = str(metrics_port + index)
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", f"eventline_{service}"], env=env, preexec_fn=_die_with_parent
            )
        )
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = 0
    while any(worker.poll() is None for worker in workers):
        for worker in workers:
            exited = worker.poll()
            if exited is not None and not stopping:
                # One worker gone on its own: stop the unit so that it is restarted whole.
                print(
                    f"eventline-{service}: worker {workers.index(worker)} exited with {exited}; stopping",
                    file=sys.stderr,
                )
                code = exited or 1
                forward(signal.SIGTERM, None)
        time.sleep(0.1)
    return code or next((worker.returncode for worker in workers if worker.returncode), 0)
