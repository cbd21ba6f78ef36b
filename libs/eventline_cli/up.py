"""``eventline up``: the whole suite on one machine, stopped in order by Ctrl-C.

Starts an embedded PostgreSQL and Redis (data under the data folder) unless
EVENTLINE_DATABASE_URL / EVENTLINE_REDIS_URL are set, then every service whose
package has a ``__main__`` as a subprocess. Every child runs in its own session,
so a terminal Ctrl-C reaches only this process, which then stops the services
(SIGTERM: in-flight RPCs finish), then Redis, then PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from eventline_shared.dev import harness
from eventline_shared.dev.embedded import (
    EmbeddedError,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServer,
    ensure_database,
)
from eventline_shared.environment import ConfigError, env_bool, env_int


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    default_port: int
    http: bool = False
    """Serves HTTP (the gateway, ready when /readyz answers 200) rather than gRPC."""

    @property
    def default_metrics_port(self) -> int:
        """9051, 9052, 9053 (9080 for the gateway): the port's last digits, in the 9000s."""
        return 9000 + self.default_port % 1000


SERVICES = [
    ServiceSpec("ingestion", "eventline_ingestion", 50051),
    ServiceSpec("segmentation", "eventline_segmentation", 50052),
    ServiceSpec("campaigns", "eventline_campaigns", 50053),
    ServiceSpec("gateway", "eventline_gateway", 8080, http=True),
]

COLORS = {
    "postgres": "blue",
    "redis": "red",
    "ingestion": "green",
    "segmentation": "magenta",
    "campaigns": "cyan",
    "gateway": "yellow",
    "eventline": "bold white",
}
LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red", "critical": "bold red"}
_SKIPPED_KEYS = {"ts", "level", "service", "logger", "msg", "exc"}


def installed_services() -> list[ServiceSpec]:
    """The services that can run: those whose package has a ``__main__`` module."""
    found = []
    for spec in SERVICES:
        try:
            if importlib.util.find_spec(spec.module + ".__main__") is not None:
                found.append(spec)
        except ImportError:
            continue
    return found


def service_address(spec: ServiceSpec, environ: Mapping[str, str]) -> tuple[str, int]:
    prefix = f"EVENTLINE_{spec.name.upper()}_"
    host = environ.get(prefix + "HOST", "").strip() or "127.0.0.1"
    if host in {"0.0.0.0", "::", "[::]"}:
        host = "127.0.0.1"
    return host, env_int(environ, prefix + "PORT", spec.default_port)


@dataclass
class Logs:
    """Interleaved, labelled, coloured output of every child and of ``up`` itself."""

    console: Console
    width: int = 12

    def line(self, source: str, raw: str) -> None:
        text = Text(f"{source:<{self.width}}| ", style=COLORS.get(source, "white"))
        text.append_text(self._format(raw))
        self.console.print(text, soft_wrap=True, highlight=False)

    def say(self, message: str) -> None:
        self.line("eventline", message)

    @staticmethod
    def _format(raw: str) -> Text:
        raw = raw.rstrip()
        if not raw.startswith("{"):
            return Text(raw)
        try:
            entry: dict[str, Any] = json.loads(raw)
        except ValueError:
            return Text(raw)
        level = str(entry.get("level", "info"))
        text = Text()
        ts = str(entry.get("ts", ""))
        if "T" in ts:
            text.append(ts.split("T", 1)[1][:12] + " ", style="dim")
        text.append(f"{level:<7} ", style=LEVEL_STYLES.get(level, ""))
        text.append(str(entry.get("msg", "")), style=LEVEL_STYLES.get(level, ""))
        extras = " ".join(f"{key}={value}" for key, value in entry.items() if key not in _SKIPPED_KEYS)
        if extras:
            text.append(" " + extras, style="dim")
        if entry.get("exc"):
            text.append("\n" + str(entry["exc"]), style="red")
        return text


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    pump: asyncio.Task[None] | None = None
    server: EmbeddedServer | None = None


@dataclass
class Suite:
    data_dir: Path
    environ: dict[str, str]
    logs: Logs
    infrastructure: list[Child] = field(default_factory=list)
    services: list[Child] = field(default_factory=list)
    service_key_id: str = ""

    async def _pump(self, name: str, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the buffer: show what there is
                line = await stream.read(65536)
            if not line:
                return
            self.logs.line(name, line.decode(errors="replace"))

    async def _start_embedded(self, server: EmbeddedServer) -> str:
        try:
            url = await server.start()  # type: ignore[attr-defined]
        except BaseException:
            if server.process is not None:
                if server.process.returncode is None:
                    await server.stop(signal.SIGKILL, 5)
                await self._pump(server.name, server.process.stdout)
            raise
        assert server.process is not None
        child = Child(server.name, server.process, server=server)
        child.pump = asyncio.create_task(self._pump(server.name, server.process.stdout))
        self.infrastructure.append(child)
        return str(url)

    async def start_infrastructure(self) -> None:
        if not self.environ.get("EVENTLINE_DATABASE_URL", "").strip():
            postgres = EmbeddedPostgres(
                "postgres",
                self.data_dir / "postgres",
                port=env_int(self.environ, "EVENTLINE_EMBEDDED_POSTGRES_PORT", 0),
            )
            self.logs.say(f"starting an embedded PostgreSQL with its data in {postgres.data_dir}")
            maintenance = await self._start_embedded(postgres)
            self.environ["EVENTLINE_DATABASE_URL"] = await ensure_database(maintenance, "eventline")
            self.logs.say(f"PostgreSQL: {self.environ['EVENTLINE_DATABASE_URL']}")
        if not self.environ.get("EVENTLINE_REDIS_URL", "").strip():
            redis_server = EmbeddedRedis(
                "redis",
                self.data_dir / "redis",
                port=env_int(self.environ, "EVENTLINE_EMBEDDED_REDIS_PORT", 0),
            )
            self.logs.say(f"starting an embedded Redis with its data in {redis_server.data_dir}")
            self.environ["EVENTLINE_REDIS_URL"] = await self._start_embedded(redis_server)
            self.logs.say(f"Redis: {self.environ['EVENTLINE_REDIS_URL']}")

    def write_urls(self) -> None:
        """So that `eventline keys` finds the embedded database while the suite runs."""
        lines = [f"{name}={self.environ[name]}" for name in ("EVENTLINE_DATABASE_URL", "EVENTLINE_REDIS_URL")]
        (self.data_dir / "urls.env").write_text("\n".join(lines) + "\n")

    async def stop_leftover_services(self) -> None:
        """Stop services a previous, killed ``eventline up`` on this data folder left running."""
        pids_file = self.data_dir / "services.pids"
        try:
            pids = [int(pid) for pid in pids_file.read_text().split()]
        except (FileNotFoundError, ValueError):
            return
        for pid in pids:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(command) > 2 and command[1] == b"-m" and command[2].startswith(b"eventline_"):
                self.logs.say(f"stopping {command[2].decode()} (pid {pid}) left running by an earlier run")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                for _ in range(200):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    await asyncio.sleep(0.1)
        pids_file.unlink(missing_ok=True)

    async def create_service_key(self) -> None:
        """With API keys required, the services' calls to each other need one: a read key for this run."""
        if not env_bool(self.environ, "EVENTLINE_AUTH", False) or self.environ.get(
            "EVENTLINE_SERVICE_API_KEY"
        ):
            return
        import asyncpg

        from eventline_shared.security import api_keys
        from eventline_shared.storage import database

        url = self.environ["EVENTLINE_DATABASE_URL"]
        await database.migrate_url(url)
        connection = await asyncpg.connect(url)
        try:
            key, token = await api_keys.create_key(connection, "eventline up: calls between services", ["read"])
        finally:
            await connection.close()
        self.service_key_id = key.key_id
        self.environ["EVENTLINE_SERVICE_API_KEY"] = token
        self.logs.say(f"API keys are required; the services call each other with key {key.key_id} (read)")

    async def revoke_service_key(self) -> None:
        if not self.service_key_id:
            return
        import asyncpg

        from eventline_shared.security import api_keys

        with contextlib.suppress(Exception):
            connection = await asyncpg.connect(self.environ["EVENTLINE_DATABASE_URL"], timeout=5)
            try:
                await api_keys.revoke_key(connection, self.service_key_id)
            finally:
                await connection.close()

    async def start_services(self, specs: list[ServiceSpec]) -> None:
        await self.stop_leftover_services()
        await self.create_service_key()
        # Without SMTP or providers, campaigns writes messages here, where `eventline demo` reads them.
        self.environ.setdefault("EVENTLINE_CAMPAIGNS_SINK_DIR", str((self.data_dir / "messages").resolve()))
        # Campaigns calls segmentation, the gateway every gRPC service, wherever this run serves them.
        for called in SERVICES:
            if not called.http:
                host, port = service_address(called, self.environ)
                self.environ.setdefault(f"EVENTLINE_{called.name.upper()}_ADDR", f"{host}:{port}")
        for spec in specs:
            self.environ.setdefault(
                f"EVENTLINE_{spec.name.upper()}_METRICS_PORT", str(spec.default_metrics_port)
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                spec.module,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                limit=1024 * 1024,
            )
            child = Child(spec.name, process)
            child.pump = asyncio.create_task(self._pump(spec.name, process.stdout))
            self.services.append(child)
        (self.data_dir / "services.pids").write_text(
            " ".join(str(c.process.pid) for c in self.services) + "\n"
        )

    async def wait_healthy(self, specs: list[ServiceSpec], timeout_s: float = 120.0) -> bool:
        """Wait until every service reports SERVING; False when one exits first."""

        async def healthy(spec: ServiceSpec, child: Child) -> bool:
            host, port = service_address(spec, self.environ)
            return await harness.wait_ready(
                host,
                port,
                http=spec.http,
                timeout_s=timeout_s,
                interval_s=0.2,
                exited=lambda: child.process.returncode is not None,
            )

        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(healthy(spec, child) for spec, child in zip(specs, self.services, strict=True))
                ),
                timeout_s,
            )
        except TimeoutError:
            return False
        return all(results)

    async def stop(self) -> int:
        """Services first (SIGTERM, in-flight RPCs finish), then Redis, then PostgreSQL."""
        grace = float(self.environ.get("EVENTLINE_SHUTDOWN_GRACE_S", "") or 10) + 10
        worst = 0

        async def stop_service(child: Child) -> int:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
                try:
                    await asyncio.wait_for(child.process.wait(), grace)
                except TimeoutError:
                    self.logs.say(f"{child.name} did not stop in {grace:.0f}s, killing it")
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
                    await child.process.wait()
            if child.pump is not None:
                await child.pump
            code = child.process.returncode or 0
            self.logs.say(f"{child.name} stopped" + (f" with exit code {code}" if code else ""))
            return code

        if self.services:
            self.logs.say("stopping the services")
            codes = await asyncio.gather(*(stop_service(child) for child in self.services))
            worst = max([worst, *(abs(code) for code in codes)])
        await self.revoke_service_key()
        for child in sorted(self.infrastructure, key=lambda c: c.name != "redis"):
            assert child.server is not None
            self.logs.say(f"stopping {child.name}")
            code = await child.server.stop()
            if child.pump is not None:
                await child.pump
            self.logs.say(f"{child.name} stopped" + (f" with exit code {code}" if code else ""))
            worst = max(worst, abs(code or 0))
        return worst


def banner(specs: list[ServiceSpec], environ: Mapping[str, str]) -> list[str]:
    auth = environ.get("EVENTLINE_AUTH", "").strip().lower() in {"1", "true", "yes", "on"}
    lines = [
        "Eventline is up (Ctrl-C stops it; the data stays). "
        + (
            "API keys are required: create one with `eventline keys create`."
            if auth
            else "Authentication is off."
        )
    ]
    for spec in specs:
        host, port = service_address(spec, environ)
        metrics = environ.get(f"EVENTLINE_{spec.name.upper()}_METRICS_PORT", "")
        address = f"http://{host}:{port}" if spec.http else f"{host}:{port}"
        lines.append(
            f"  {spec.name:<13} {address}"
            + (f"   metrics http://{host}:{metrics}/metrics" if metrics else "")
        )
    ingestion = next((spec for spec in specs if spec.name == "ingestion"), None)
    if ingestion is not None:
        host, port = service_address(ingestion, environ)
        target = f"--target {host}:{port} " if port != ingestion.default_port or host != "127.0.0.1" else ""
        lines += [
            "Try, in another terminal:",
            f"  eventline {target}events send --customer c42 --name order_placed --context total=59.90",
            f"  eventline {target}timeline c42",
            f"  grpcurl -plaintext {host}:{port} list",
        ]
    gateway = next((spec for spec in specs if spec.http), None)
    if gateway is not None:
        host, port = service_address(gateway, environ)
        lines += [
            f"  curl http://{host}:{port}/v1/customers/c42/timeline     # the same API over HTTP/JSON",
            f"  curl http://{host}:{port}/openapi.json",
        ]
    # `eventline demo` is one of the CLI's own commands (main.py registers it with every other).
    lines.append("  eventline demo          # seeds customers, events and campaigns, shows the messages sent")
    return lines


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "up.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedError(f"another `eventline up` is using {data_dir}") from None
        yield


async def run(data_dir: Path, environ: Mapping[str, str], console: Console) -> int:
    logs = Logs(console)
    suite = Suite(data_dir, dict(environ), logs)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        specs = installed_services()
        for spec in specs:
            service_address(spec, suite.environ)  # fail fast on a malformed port
        with _exclusive(data_dir):
            try:
                await suite.start_infrastructure()
                suite.write_urls()
                if not stop.is_set():
                    await suite.start_services(specs)
                    logs.say("starting " + ", ".join(spec.name for spec in specs))
                    healthy = asyncio.create_task(suite.wait_healthy(specs))
                    stopping = asyncio.create_task(stop.wait())
                    await asyncio.wait({healthy, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if healthy.done() and healthy.result():
                        for line in banner(specs, suite.environ):
                            logs.say(line)
                    elif not stop.is_set():
                        logs.say("a service did not become healthy, stopping everything")
                        code = 1
                        stop.set()
                    healthy.cancel()
                    exited = [asyncio.create_task(child.process.wait()) for child in suite.services]
                    exited += [asyncio.create_task(child.process.wait()) for child in suite.infrastructure]
                    await asyncio.wait({stopping, *exited}, return_when=asyncio.FIRST_COMPLETED)
                    if not stop.is_set():
                        gone = [
                            c.name
                            for c in suite.services + suite.infrastructure
                            if c.process.returncode is not None
                        ]
                        logs.say(f"{', '.join(gone)} exited unexpectedly, stopping everything")
                        code = 1
                    stopping.cancel()
                    for task in exited:
                        task.cancel()
            finally:
                (data_dir / "urls.env").unlink(missing_ok=True)
                stopped = await suite.stop()
                (data_dir / "services.pids").unlink(missing_ok=True)
                code = code or stopped
    except (EmbeddedError, ConfigError) as exc:
        logs.say(f"error: {exc}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    logs.say("everything stopped" + (f" (exit code {code})" if code else ""))
    return code


def up(data_dir: Path) -> int:
    console = Console(highlight=False, force_terminal=None if sys.stdout.isatty() else False)
    return asyncio.run(run(data_dir, os.environ, console))
