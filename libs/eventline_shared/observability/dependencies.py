"""Whether the dependencies a service needs answer: what its grpc.health.v1 status follows.

A ``DependencyMonitor`` probes every dependency each ``interval_s`` seconds
(EVENTLINE_HEALTH_PROBE_INTERVAL_S) with a cheap call, and takes reports from
the service's own work (the outbox relay, the stream consumer), which see
failures between probes and failures a probe cannot see:

* PostgreSQL (``eventline_shared.storage.database.PostgreSQL``): ``SELECT 1`` on a connection of the monitor's own, so that a
  pool busy with long queries is not mistaken for an outage;
* Redis (``eventline_shared.streams.stream.Redis``): ``EXISTS`` of each partition's stream key (on a Redis Cluster each
  goes to the master holding it), which fails the way the real commands do:
  unreachable, timing out, out of memory, read-only, a cluster down or a
  slot without a master, or a Redis Cluster node answering MOVED because it
  does not hold the key to a client that is not cluster-aware (``PING``
  would succeed there).

Probes and work are two witnesses, each with hysteresis: one is against a
dependency after ``FALL`` failures in a row (so one dropped connection does not
take a replica out of rotation); the probes are for it again after ``RISE``
successes in a row, the work after one success. A dependency is up while both
are for it; work that has failed and then not reported for a while (nothing
left to do) is forgotten, and the probes decide.

A service is SERVING while every *required* dependency is up. The others are
reported under their own health names (``eventline.dependency.<name>``), in the
``eventline_dependency_up`` gauge and in the logs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventline_shared.observability.metrics import DEPENDENCY_UP

log = logging.getLogger(__name__)

POSTGRESQL = "postgresql"
REDIS = "redis"

FALL = 2
"""Failures in a row that make an up dependency down."""
RISE = 2
"""Successes in a row that make a down dependency up again."""

HEALTH_NAME_PREFIX = "eventline.dependency."


def health_name(dependency: str) -> str:
    """The grpc.health.v1 service name under which a dependency's state is reported."""
    return HEALTH_NAME_PREFIX + dependency


class Dependency:
    """Something a service calls, with a cheap probe; ``required``: the service cannot work without it."""

    def __init__(self, name: str, *, required: bool) -> None:
        self.name = name
        self.required = required

    async def probe(self) -> None:
        """Return when the dependency answers; raise when it does not."""
        raise NotImplementedError

    def explains(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by real work, means this dependency failed."""
        return False

    async def aclose(self) -> None:
        """Release what the probe holds."""


@dataclass
class _Witness:
    """What one source of evidence (the probes, or the service's work) says of a dependency."""

    up: bool = True
    streak: int = 0
    """Positive: successes in a row; negative: failures in a row."""
    heard_at: float = -math.inf

    def record(self, ok: bool, now: float, rise: int, memory_s: float = math.inf) -> None:
        if now - self.heard_at > memory_s:
            self.up, self.streak = True, 0  # what it said last is too old to count
        self.heard_at = now
        self.streak = max(self.streak, 0) + 1 if ok else min(self.streak, 0) - 1
        if self.up and self.streak <= -FALL:
            self.up = False
        elif not self.up and self.streak >= rise:
            self.up = True


@dataclass
class _State:
    probes: _Witness = field(default_factory=_Witness)
    work: _Witness = field(default_factory=_Witness)
    up: bool = True
    error: str = ""


class DependencyMonitor:
    """The state of a service's dependencies, from probes and from reports of real work."""

    def __init__(
        self,
        dependencies: Sequence[Dependency],
        *,
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dependencies = list(dependencies)
        self._monotonic = monotonic
        self.interval_s = interval_s
        self.timeout_s = min(max(interval_s, 1.0), 5.0)
        """How long a probe may take before it counts as a failure."""
        self.work_memory_s = max(10 * interval_s, 30.0)
        """Failing work that has not reported for this long no longer keeps a dependency down."""
        self._states = {dependency.name: _State() for dependency in self.dependencies}
        self._by_name = {dependency.name: dependency for dependency in self.dependencies}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probed = False

    @property
    def serving(self) -> bool:
        """Whether every required dependency is up."""
        return all(self._states[d.name].up for d in self.dependencies if d.required)

    def up(self, name: str) -> bool:
        return self._states[name].up

    def report_ok(self, name: str) -> None:
        """Real work that used dependency ``name`` succeeded."""
        self._record(name, None, probe=False)

    def report_error(self, exc: BaseException) -> None:
        """Real work failed with ``exc``: counted against the dependency it comes from, if any."""
        for dependency in self.dependencies:
            if dependency.explains(exc):
                self._record(dependency.name, exc, probe=False)
                return

    async def probe(self) -> None:
        """Probe every dependency once, at the same time."""
        await asyncio.gather(*(self._probe(dependency) for dependency in self.dependencies))
        self._probed = True

    async def _probe(self, dependency: Dependency) -> None:
        try:
            await asyncio.wait_for(dependency.probe(), self.timeout_s)
        except Exception as exc:  # a timeout included; CancelledError (stopping) goes through
            self._record(dependency.name, exc, probe=True)
        else:
            self._record(dependency.name, None, probe=True)

    def _record(self, name: str, error: BaseException | None, *, probe: bool) -> None:
        state = self._states[name]
        now = self._monotonic()
        if error is not None:
            state.error = repr(error)[:300]
        if probe and not self._probed:
            # The first probe at start: there is no history to smooth, its answer is the state.
            state.probes.up = error is None
            state.probes.heard_at = now
        elif probe:
            state.probes.record(error is None, now, RISE)
        else:
            # One success of the real work is enough: it is what the probes stand for.
            state.work.record(error is None, now, 1, self.work_memory_s)
        work_up = state.work.up or now - state.work.heard_at > self.work_memory_s
        self._set(name, state, state.probes.up and work_up)

    def _set(self, name: str, state: _State, up: bool) -> None:
        DEPENDENCY_UP.labels(name).set(1 if up else 0)
        if state.up == up:
            return
        state.up = up
        self._changed.set()
        if up:
            log.info("dependency is back", extra={"dependency": name})
        else:
            log.warning(
                "dependency is down",
                extra={"dependency": name, "required": self._by_name[name].required, "error": state.error},
            )

    async def changed(self) -> None:
        """Return after the next change of a dependency's state (or at once if one is unseen)."""
        await self._changed.wait()
        self._changed.clear()

    async def start(self) -> None:
        """Probe once (so the first status is known), then every ``interval_s`` in the background."""
        await self.probe()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for dependency in self.dependencies:
            await dependency.aclose()
