"""Services as real processes (``python -m eventline_<service>``), for faults that need them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import grpc
import psutil

from eventline_shared.dev import harness
from eventline_shared.dev.harness import free_port as free_port
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent


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
        self.env = {**env, f"EVENTLINE_{service.upper()}_PORT": str(self.port)}
        self.log_path = log_dir / f"{service}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = harness.start_service(
                self.service, {**self.env, **extra_env}, cwd=ROOT, output=log
            )
        return self

    async def serving(self, timeout_s: float = 30.0) -> None:
        """Wait until the health service reports SERVING."""
        process = self.process
        assert process is not None
        try:
            up = await harness.wait_serving_at(
                self.address,
                credentials=self.credentials,
                timeout_s=timeout_s,
                interval_s=0.05,
                exited=lambda: process.poll() is not None,
            )
        except TimeoutError:
            raise TimeoutError(f"{self.service} did not start: {self.logs()[-2000:]}") from None
        if not up:
            raise RuntimeError(f"{self.service} exited with {process.returncode}: {self.logs()[-2000:]}")

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

    async def listening_workers(self, count: int) -> list[psutil.Process]:
        """Wait until the supervisor started has ``count`` workers all listening on the port and
        itself does not; returns the workers."""
        assert self.process is not None
        supervisor = psutil.Process(self.process.pid)
        await wait_until(
            lambda: (
                len(supervisor.children()) == count
                and all(_listening_on(w.pid, self.port) for w in supervisor.children())
            ),
            60,
            f"{count} workers never listened on the {self.service} port",
        )
        assert not _listening_on(supervisor.pid, self.port)  # the supervisor serves nothing
        return supervisor.children()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _listening_on(pid: int, port: int) -> bool:
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets)
