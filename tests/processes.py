"""Services as real processes (``python -m eventline_<service>``), for faults that need them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """One service process with its own port; its stderr (JSON logs) goes to a file."""

    def __init__(
        self,
        service: str,
        env: dict[str, str],
        log_dir: Path,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.service = service
        self.credentials = credentials
        """TLS credentials to reach the service with, when it serves TLS."""
        self.port = free_port()
        self.env = {**os.environ, **env, f"EVENTLINE_{service.upper()}_PORT": str(self.port)}
        self.log_path = log_dir / f"{service}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"eventline_{self.service}"],
                env={**self.env, **extra_env},
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        return self

    async def serving(self, timeout_s: float = 30.0) -> None:
        """Wait until the health service reports SERVING."""
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        if self.credentials is None:
            channel = grpc.aio.insecure_channel(self.address)
        else:
            channel = grpc.aio.secure_channel(self.address, self.credentials)
        async with channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.service} exited with {self.process.returncode}: {self.logs()[-2000:]}"
                    )
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{self.service} did not start: {self.logs()[-2000:]}")
                await asyncio.sleep(0.05)

    async def exited(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        for _ in range(int(timeout_s / 0.02)):
            code = self.process.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.service} did not exit")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
