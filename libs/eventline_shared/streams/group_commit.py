"""Group commit: concurrent requests share one statement and one commit.

Every caller hands its request to the group and awaits its own result. While a
statement runs, new requests queue up; when it finishes, the next statement
takes everything queued (whole requests only, up to ``max_size``), so under
load each commit carries many requests and under no load a request goes out at
once: the window is the time the statement before took, never a timer. A
request is always in one statement, so it is stored entirely or not at all.

A statement beside one already running (up to ``concurrency``) only starts for
at least ``overlap_size`` of queued work; less waits for the running statement
to end and goes in the next. A statement costs the database (and the driver) a
fixed part whatever it carries, so small requests arriving at a steady pace
(unary calls) are better grouped than spread over two statements, while large
ones (batches) still overlap the database's work with the next statement's.

With ``settle_turns``, a statement that ends with requests queued (less than ``overlap_size``) keeps its place for up to that
many more turns of the event loop (no timer) before the next statement takes the queue: requests
whose callbacks are ready meanwhile (calls being received, the replies' next calls) join it,
instead of the next statement going out with the few queued at the very moment the last one
ended. A statement that ends with nothing queued frees its place at once, and a request
submitted with no statement running goes out at once.

``run`` gets the requests of one statement and returns one result per request,
in order; if it raises, every request of that statement gets the exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


@dataclass
class _Pending(Generic[RequestT, ResultT]):
    request: RequestT
    size: int
    done: asyncio.Future[ResultT] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[RequestT, ResultT]):
    """Runs ``run`` over the requests queued meanwhile, ``concurrency`` statements at a time
    (a statement beside a running one only for at least ``overlap_size`` of queued work; the
    next one after ``settle_turns`` more turns of the loop)."""

    def __init__(
        self,
        run: Callable[[list[RequestT]], Awaitable[Sequence[ResultT]]],
        *,
        size: Callable[[RequestT], int] = lambda _: 1,
        max_size: int = 2000,
        concurrency: int = 2,
        overlap_size: int = 1,
        settle_turns: int = 0,
    ) -> None:
        self.run = run
        self.size = size
        self.max_size = max_size
        self.concurrency = concurrency
        self.overlap_size = overlap_size
        self.settle_turns = settle_turns
        self._queue: list[_Pending[RequestT, ResultT]] = []
        self._queue_total = 0  # the sizes in ``_queue``, cancelled ones included
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: RequestT) -> ResultT:
        """The result ``run`` gave for ``request``, once its statement has committed."""
        pending: _Pending[RequestT, ResultT] = _Pending(request, self.size(request))
        self._queue.append(pending)
        self._queue_total += pending.size
        self._start_statements()
        return await pending.done

    async def submit_many(self, requests: Sequence[RequestT]) -> list[ResultT]:
        """The result of each of ``requests``, in order, once all have committed.

        All are queued before any statement starts, so requests that arrive together share
        statements (as many as ``max_size`` needs) instead of the first going out alone;
        each is still whole in one statement. If a statement fails, its exception is raised
        once every statement of ``requests`` has ended; if the caller is cancelled, the
        requests not yet in a statement are dropped, as ``submit``'s are."""
        pendings: list[_Pending[RequestT, ResultT]] = [_Pending(r, self.size(r)) for r in requests]
        if not pendings:
            return []
        self._queue.extend(pendings)
        self._queue_total += sum(p.size for p in pendings)
        self._start_statements()
        try:
            await asyncio.wait([p.done for p in pendings])
        except asyncio.CancelledError:
            for pending in pendings:
                pending.done.cancel()
            raise
        failures = [p.done.exception() for p in pendings]  # each one read: none is "never retrieved"
        failed = next((exc for exc in failures if exc is not None), None)
        if failed is not None:
            raise failed
        return [p.done.result() for p in pendings]

    def _start_statements(self) -> None:
        while self._queue and self._running < self.concurrency:
            if self._running and self._queued_size() < self.overlap_size:
                return  # the running statement's end starts the next one
            taken: list[_Pending[RequestT, ResultT]] = []
            count = 0
            while self._queue and (not taken or count + self._queue[0].size <= self.max_size):
                pending = self._queue.pop(0)
                self._queue_total -= pending.size
                if pending.done.cancelled():
                    continue
                taken.append(pending)
                count += pending.size
            if not taken:
                return
            self._running += 1
            task = asyncio.create_task(self._statement(taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _queued_size(self) -> int:
        total = 0
        for pending in self._queue:
            if not pending.done.cancelled():
                total += pending.size
                if total >= self.overlap_size:
                    break
        return total

    def _settle(self, turns_left: int) -> None:
        """Keep the ended statement's place while less than ``overlap_size`` is queued and more
        than nothing, up to ``turns_left`` more turns of the loop (work enough for a statement of
        its own goes out at once); then free it and start what is queued.

        A callback that schedules itself for the next turn, not a task awaiting
        ``asyncio.sleep(0)`` per turn: a turn then costs the loop a handle instead of a task's
        step, and the statement's task ends at once (docs/performance.md, issue 16's eighth
        round)."""
        if turns_left > 0 and self._queue and self._queue_total < self.overlap_size:
            asyncio.get_running_loop().call_soon(self._settle, turns_left - 1)
            return
        self._running -= 1
        self._start_statements()

    async def _statement(self, taken: list[_Pending[RequestT, ResultT]]) -> None:
        try:
            results = await self.run([pending.request for pending in taken])
            if len(results) != len(taken):
                raise RuntimeError(f"{len(results)} results for {len(taken)} requests")
        except Exception as exc:
            for pending in taken:
                if not pending.done.done():
                    pending.done.set_exception(exc)
        else:
            for pending, result in zip(taken, results, strict=True):
                if not pending.done.done():
                    pending.done.set_result(result)
        finally:
            self._settle(self.settle_turns)
