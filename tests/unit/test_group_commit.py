"""Group commit's batches: what goes into one statement, in order, and what a failure or a
cancellation does to the requests that share it (no sockets: ``run`` records its batches)."""

from __future__ import annotations

import asyncio

import pytest

from eventline_shared.streams.group_commit import GroupCommit


class Recorder:
    """A ``run`` that records each batch and answers each request with itself doubled;
    it waits for ``gate`` so that a test decides when a statement ends."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, requests: list[int]) -> list[int]:
        self.batches.append(list(requests))
        await self.gate.wait()
        if self.fail_on in requests:
            raise RuntimeError(f"statement with {self.fail_on} failed")
        return [2 * r for r in requests]


async def settle() -> None:
    """Let every task that can run do so (a few turns of the loop; no timer)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_submit_many_puts_requests_given_together_in_one_statement() -> None:
    run = Recorder()
    group = GroupCommit(run, concurrency=2)
    many = asyncio.create_task(group.submit_many([1, 2, 3, 4]))
    await asyncio.sleep(0)
    run.gate.set()
    assert await many == [2, 4, 6, 8]
    # One at a time would have sent 1 alone and 2 alone (two statements may run), then 3 and 4.
    assert run.batches == [[1, 2, 3, 4]]


async def test_submit_many_splits_at_max_size_keeping_requests_whole_and_in_order() -> None:
    run = Recorder()
    group = GroupCommit(run, size=lambda r: r, max_size=5, concurrency=1)
    many = asyncio.create_task(group.submit_many([2, 3, 4, 1]))
    await asyncio.sleep(0)
    run.gate.set()
    assert await many == [4, 6, 8, 2]
    assert run.batches == [[2, 3], [4, 1]]


async def test_submit_many_joins_requests_queued_by_others_while_a_statement_runs() -> None:
    run = Recorder()
    group = GroupCommit(run, concurrency=1)
    first = asyncio.create_task(group.submit(10))
    await asyncio.sleep(0)
    many = asyncio.create_task(group.submit_many([1, 2]))
    single = asyncio.create_task(group.submit(3))
    await asyncio.sleep(0)
    run.gate.set()
    assert (await first, await many, await single) == (20, [2, 4], 6)
    assert run.batches == [[10], [1, 2, 3]]


async def test_submit_many_raises_a_failed_statements_error_after_all_its_statements_end() -> None:
    run = Recorder(fail_on=3)
    group = GroupCommit(run, size=lambda r: 1, max_size=2, concurrency=2)
    many = asyncio.create_task(group.submit_many([1, 2, 3, 4, 5]))
    await asyncio.sleep(0)
    run.gate.set()
    with pytest.raises(RuntimeError, match="statement with 3 failed"):
        await many
    # Every request went into a statement; the ones after the failed statement still ran.
    assert sorted(r for batch in run.batches for r in batch) == [1, 2, 3, 4, 5]


async def test_cancelling_submit_many_drops_the_requests_not_yet_in_a_statement() -> None:
    run = Recorder()
    group = GroupCommit(run, size=lambda r: 1, max_size=1, concurrency=1)
    many = asyncio.create_task(group.submit_many([1, 2, 3]))
    await settle()
    assert run.batches == [[1]]
    many.cancel()
    with pytest.raises(asyncio.CancelledError):
        await many
    run.gate.set()
    assert await group.submit(7) == 14
    assert run.batches == [[1], [7]]


async def test_submit_many_of_nothing_runs_no_statement() -> None:
    run = Recorder()
    group = GroupCommit(run)
    assert await group.submit_many([]) == []
    assert run.batches == []


async def test_a_second_statement_starts_only_for_at_least_overlap_size_of_queued_work() -> None:
    """Small requests queued while a statement runs wait for it and share the next statement;
    enough queued work starts a statement beside the running one."""
    run = Recorder()
    group = GroupCommit(run, size=lambda r: r, concurrency=2, overlap_size=10)
    first = asyncio.create_task(group.submit(1))
    await settle()
    small = [asyncio.create_task(group.submit(r)) for r in (2, 3)]
    await settle()
    assert run.batches == [[1]]  # 5 queued: no second statement yet
    large = asyncio.create_task(group.submit(6))
    await settle()
    assert run.batches == [[1], [2, 3, 6]]  # 11 queued: it starts beside the first
    run.gate.set()
    assert (await first, [await t for t in small], await large) == (2, [4, 6], 12)


async def test_what_waited_for_overlap_goes_out_when_the_running_statement_ends() -> None:
    run = Recorder()
    group = GroupCommit(run, concurrency=2, overlap_size=10)
    first = asyncio.create_task(group.submit(1))
    await settle()
    rest = [asyncio.create_task(group.submit(r)) for r in (2, 3)]
    await settle()
    assert run.batches == [[1]]
    run.gate.set()
    assert (await first, [await t for t in rest]) == (2, [4, 6])
    assert run.batches == [[1], [2, 3]]


async def test_with_settle_turns_what_is_ready_when_a_statement_ends_joins_the_next() -> None:
    """A request submitted by a callback that was ready when the running statement ended (the
    reply's next call) shares the next statement with the one that waited, rather than the
    waiting one going out alone and the ready one waiting for it in turn."""

    async def batches_with(settle_turns: int) -> list[list[int]]:
        run = Recorder()
        group = GroupCommit(run, concurrency=2, overlap_size=10, settle_turns=settle_turns)
        first = asyncio.create_task(group.submit(1))
        await settle()
        waiting = asyncio.create_task(group.submit(2))
        await settle()
        ready: list[asyncio.Task[int]] = []
        first.add_done_callback(lambda _: ready.append(asyncio.create_task(group.submit(3))))
        run.gate.set()
        assert (await first, await waiting) == (2, 4)
        assert await ready[0] == 6
        return run.batches

    assert await batches_with(0) == [[1], [2], [3]]
    assert await batches_with(3) == [[1], [2, 3]]


async def test_with_settle_turns_a_lone_request_goes_out_at_once() -> None:
    run = Recorder()
    group = GroupCommit(run, settle_turns=3)
    lone = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)  # submit runs and starts the statement's task
    await asyncio.sleep(0)  # which runs: no turn waited for others
    assert run.batches == [[1]]
    run.gate.set()
    assert await lone == 2


async def test_with_settle_turns_work_enough_for_overlap_does_not_wait_for_the_turns() -> None:
    """Batches (at least ``overlap_size`` queued) take the ended statement's place at once."""
    run = Recorder()
    group = GroupCommit(run, size=lambda r: r, concurrency=1, overlap_size=10, settle_turns=1000)
    first = asyncio.create_task(group.submit(1))
    await settle()
    large = asyncio.create_task(group.submit(10))
    await settle()
    gate, run.gate = run.gate, asyncio.Event()
    gate.set()
    await settle()
    assert run.batches == [[1], [10]]  # within the few turns settle gives, not a thousand
    run.gate.set()
    assert (await first, await large) == (2, 20)
