"""Rendering off the event loop: a pool of worker processes (``render_worker``).

A hostile template can keep a CPU busy up to its budget and try to allocate;
neither may slow the service's other RPCs or grow its memory. So the service
never renders itself: it sends batches of render jobs to worker processes,
each limited in address space, and awaits their results like any other I/O.

* Jobs are split into chunks spread over the workers, so a fan-out batch
  renders on every worker at once.
* A worker that dies, or sends nothing for ``stall_s``, is killed and
  replaced; the jobs it had not answered fail with a reason (their
  deliveries are recorded as failed, a preview shows the error).
* A caller that gives up (a cancelled preview) has its worker killed and
  replaced rather than left rendering for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from eventline_campaigns.render_worker import FRAME, Job, Renderer, Result, frame
from eventline_campaigns.templates import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

CHUNK_JOBS = 100
"""Jobs sent to one worker at a time."""


class RenderPoolError(Exception):
    """The worker pool cannot render (it could not start a worker)."""


class Rendering(Protocol):
    """Renders jobs (see ``render_worker``): per job, per template, ``(True, text)`` or ``(False, reason)``."""

    async def render(
        self, templates: Sequence[tuple[str, bool]], jobs: Sequence[Job]
    ) -> list[list[Result]]: ...


class InlineRendering:
    """Renders on the caller's thread: for unit tests and tools, never for the service."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.renderer = Renderer(limits)

    async def render(self, templates: Sequence[tuple[str, bool]], jobs: Sequence[Job]) -> list[list[Result]]:
        return [self.renderer.run(templates, job) for job in jobs]


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.stdin = process.stdin
        self.stdout = process.stdout

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read(self, timeout_s: float) -> Any:
        header = await asyncio.wait_for(self.stdout.readexactly(FRAME.size), timeout_s)
        (size,) = FRAME.unpack(header)
        return pickle.loads(await asyncio.wait_for(self.stdout.readexactly(size), timeout_s))

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


class RenderPool:
    """``workers`` render processes, started by ``start()`` and stopped by ``close()``."""

    def __init__(
        self,
        workers: int = 2,
        limits: Limits = DEFAULT_LIMITS,
        *,
        memory_mb: int = 256,
        stall_s: float = 30.0,
    ) -> None:
        self.size = workers
        self.limits = limits
        self.memory_mb = memory_mb
        self.stall_s = stall_s
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (for tests and metrics)."""
        return sorted(worker.pid for worker in self._all)

    async def __aenter__(self) -> RenderPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    async def _spawn(self) -> _Worker:
        config = json.dumps(
            {
                "steps": self.limits.steps,
                "cpu_s": self.limits.cpu_s,
                "memory_mb": self.memory_mb,
                "service_pid": os.getpid(),
            }
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eventline_campaigns.render_worker",
            config,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(process)
        self._all.add(worker)
        try:
            ready = await worker.read(self.stall_s)
        except (asyncio.IncompleteReadError, TimeoutError, pickle.UnpicklingError) as exc:
            self._retire(worker)
            raise RenderPoolError(f"a render worker did not start: {exc!r}") from None
        if ready != "ready":
            self._retire(worker)
            raise RenderPoolError("a render worker did not start")
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)

    async def _replace(self, worker: _Worker) -> None:
        self._retire(worker)
        await worker.process.wait()
        if not self._closed:
            try:
                self._idle.put_nowait(await self._spawn())
            except RenderPoolError:
                log.exception("cannot replace a render worker")
                # Without a replacement the pool shrinks; the next render tries again.
                asyncio.get_running_loop().call_later(1.0, self._respawn_later)

    def _respawn_later(self) -> None:
        if not self._closed and len(self._all) < self.size:
            task = asyncio.ensure_future(self._spawn_one())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _spawn_one(self) -> None:
        try:
            self._idle.put_nowait(await self._spawn())
        except RenderPoolError:
            log.exception("cannot start a render worker")
            asyncio.get_running_loop().call_later(1.0, self._respawn_later)

    async def render(self, templates: Sequence[tuple[str, bool]], jobs: Sequence[Job]) -> list[list[Result]]:
        if not jobs:
            return []
        if self._closed:
            raise RenderPoolError("the render pool is closed")
        chunks = [jobs[i : i + CHUNK_JOBS] for i in range(0, len(jobs), CHUNK_JOBS)]
        answers = await asyncio.gather(*(self._render_chunk(list(templates), chunk) for chunk in chunks))
        return [result for answer in answers for result in answer]

    async def _render_chunk(
        self, templates: list[tuple[str, bool]], jobs: Sequence[Job]
    ) -> list[list[Result]]:
        worker = await self._idle.get()
        results: list[list[Result]] = []
        healthy = False
        try:
            worker.stdin.write(frame((templates, list(jobs))))
            await worker.stdin.drain()
            while len(results) < len(jobs):
                results += await worker.read(self.stall_s)
            healthy = True
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, pickle.UnpicklingError) as exc:
            stopped = (
                "stopped" if worker.process.returncode is not None else f"sent nothing for {self.stall_s:g} s"
            )
            log.error(
                "render worker %s; replacing it", stopped, extra={"pid": worker.pid, "error": repr(exc)}
            )
            reason = f"refused by the sandbox: the render worker {stopped}"
            results += [[(False, reason)] * len(job[0]) for job in jobs[len(results) :]]
        finally:
            if healthy:
                self._idle.put_nowait(worker)
            else:
                # Also when the caller was cancelled: the worker may still be rendering for nobody.
                task = asyncio.ensure_future(self._replace(worker))
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        return results

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.stdin.close()
        for worker in list(self._all):
            try:
                await asyncio.wait_for(worker.process.wait(), 5.0)
            except TimeoutError:
                worker.kill()
                await worker.process.wait()
        self._all.clear()
