"""The dependency monitor's rules: hysteresis, required or not, probes and work as two witnesses.

The dependencies here are scripted (each probe answers what the test says); the
real probes against PostgreSQL and Redis are exercised in
``tests/integration/test_health.py``.
"""

from __future__ import annotations

import asyncio

import redis.exceptions

from eventline_shared.observability.dependencies import FALL, RISE, Dependency, DependencyMonitor
from eventline_shared.streams import stream


class Scripted(Dependency):
    """A dependency whose probe fails while ``down`` is set; it explains ConnectionResetError."""

    def __init__(self, name: str, *, required: bool) -> None:
        super().__init__(name, required=required)
        self.down = False

    async def probe(self) -> None:
        if self.down:
            raise ConnectionRefusedError("scripted outage")

    def explains(self, exc: BaseException) -> bool:
        return isinstance(exc, ConnectionResetError)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(*dependencies: Scripted) -> tuple[DependencyMonitor, Clock]:
    clock = Clock()
    return DependencyMonitor(dependencies, interval_s=1.0, monotonic=clock), clock


async def test_down_after_fall_failures_and_up_after_rise_successes() -> None:
    database = Scripted("db", required=True)
    health, _ = monitor(database)
    await health.probe()
    assert health.serving and health.up("db")
    database.down = True
    for _ in range(FALL - 1):
        await health.probe()
        assert health.serving, "one failed probe must not take the service out"
    await health.probe()
    assert not health.serving and not health.up("db")
    database.down = False
    for _ in range(RISE - 1):
        await health.probe()
        assert not health.serving, "one good probe must not bring it back"
    await health.probe()
    assert health.serving


async def test_the_first_probe_decides_at_once() -> None:
    database = Scripted("db", required=True)
    database.down = True
    health, _ = monitor(database)
    await health.probe()
    assert not health.serving


async def test_an_optional_dependency_down_leaves_the_service_serving() -> None:
    database, stream = Scripted("db", required=True), Scripted("stream", required=False)
    health, _ = monitor(database, stream)
    await health.probe()
    stream.down = True
    for _ in range(FALL):
        await health.probe()
    assert health.serving and health.up("db") and not health.up("stream")


async def down_by_failing_work() -> tuple[DependencyMonitor, Clock]:
    """A required database whose probe succeeds, taken down by FALL connection errors of the work."""
    health, clock = monitor(Scripted("db", required=True))
    await health.probe()
    for _ in range(FALL):
        health.report_error(ConnectionResetError())
    return health, clock


async def test_failing_work_keeps_a_dependency_down_while_its_probe_succeeds() -> None:
    """Probes can miss what the work meets (e.g. a write refused while reads answer)."""
    health, clock = await down_by_failing_work()
    assert not health.serving
    for _ in range(RISE + 3):
        clock.now += 1
        await health.probe()
        assert not health.serving
    health.report_ok("db")
    assert health.serving


async def test_work_that_stops_reporting_is_forgotten_and_the_probes_decide() -> None:
    health, clock = await down_by_failing_work()
    clock.now += health.work_memory_s / 2
    await health.probe()
    assert not health.serving
    clock.now += health.work_memory_s
    await health.probe()
    assert health.serving
    health.report_error(ConnectionResetError())
    assert health.serving, "a fresh failure after the old ones were forgotten counts as the first"


async def test_errors_no_dependency_explains_are_ignored() -> None:
    database = Scripted("db", required=True)
    health, _ = monitor(database)
    await health.probe()
    for _ in range(FALL + 3):
        health.report_error(ValueError("a bug, not an outage"))
        health.report_error(redis.exceptions.ResponseError("WRONGTYPE"))
    assert health.serving


async def test_changes_are_signalled() -> None:
    database = Scripted("db", required=True)
    health, _ = monitor(database)
    await health.probe()
    database.down = True
    for _ in range(FALL):
        await health.probe()
    await asyncio.wait_for(health.changed(), 10)  # a change happened since the last look: at once


def test_which_redis_errors_mean_redis_cannot_serve_the_stream() -> None:
    errors = redis.exceptions
    for outage in (
        errors.ConnectionError("refused"),
        errors.TimeoutError("timed out"),
        errors.BusyLoadingError("LOADING"),
        errors.MovedError("3999 127.0.0.1:6381"),
        errors.AskError("3999 127.0.0.1:6381"),
        errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
        errors.TryAgainError("TRYAGAIN"),
        errors.OutOfMemoryError("OOM command not allowed"),
        errors.ReadOnlyError("READONLY You can't write against a read only replica."),
        errors.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
    ):
        assert stream.unavailable(outage), outage
    for bug in (errors.ResponseError("WRONGTYPE"), errors.DataError("bad"), ValueError("x")):
        assert not stream.unavailable(bug), bug
