"""The client connections' time limits, kept by one task (`Deadlines`).

A limit must fire at its time, never earlier, never later, whichever way it moved;
and moves that only put it later, as every request does, must not grow the heap.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import attrs
import trio
import trio.testing

from pvtunnel._trio.deadlines import PRUNE_AT, Deadline, Deadlines

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@attrs.define(eq=False)
class Connection:
    """A task in a cancel scope under a limit, as a client connection is."""

    deadline: Deadline
    ended_at: float | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.deadline.scope:
            task_status.started()
            await trio.sleep_forever()
        self.ended_at = trio.current_time()


def ended(connection: Connection) -> float | None:
    """When the connection's task ended (read afresh: it changes under an await)."""
    return connection.ended_at


class Keeper:
    def __init__(self, nursery: trio.Nursery, deadlines: Deadlines) -> None:
        self.nursery = nursery
        self.deadlines = deadlines

    async def connection(self) -> Connection:
        connection = Connection(self.deadlines.deadline(trio.CancelScope()))
        await self.nursery.start(connection.serve)
        return connection


@contextlib.asynccontextmanager
async def kept() -> AsyncIterator[Keeper]:
    """A running `Deadlines` and a way to start connections under it."""
    deadlines = Deadlines()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        yield Keeper(nursery, deadlines)
        nursery.cancel_scope.cancel()


async def step(mock_clock: trio.testing.MockClock, seconds: float) -> None:
    """Move the clock, and let everything due run."""
    mock_clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_limit_fires_at_its_time(mock_clock: trio.testing.MockClock) -> None:
    async with kept() as keep:
        connection = await keep.connection()
        connection.deadline.set(trio.current_time() + 5.0)
        await step(mock_clock, 4.999)
        assert connection.ended_at is None
        await step(mock_clock, 0.001)
        assert ended(connection) == 5.0


async def test_a_limit_moved_later_fires_only_at_its_last_time_and_keeps_one_entry(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with kept() as keep:
        connection = await keep.connection()
        # A request a second on a kept-alive connection, each moving the limit twice.
        connection.deadline.set(2.0)
        for second in range(100):
            # A head's limit, then the upstream's: later than the last, and earlier.
            connection.deadline.set(second + 3.0)
            connection.deadline.set(second + 2.0)
            await step(mock_clock, 1.0)
            assert connection.ended_at is None
            # One live entry, re-armed each time the old one came due.
            assert len(keep.deadlines) == 1
        await step(mock_clock, 0.999)
        assert connection.ended_at is None
        await step(mock_clock, 0.001)
        assert ended(connection) == 101.0


async def test_a_limit_moved_earlier_fires_at_the_earlier_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    async with kept() as keep:
        late, early = await keep.connection(), await keep.connection()
        late.deadline.set(75.0)
        early.deadline.set(60.0)
        early.deadline.set(30.0)  # the task sleeps until 60 now: it must wake sooner
        await trio.sleep(100)
        assert (early.ended_at, late.ended_at) == (30.0, 75.0)


async def test_a_limit_already_passed_fires_at_once(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.jump(10.0)
    async with kept() as keep:
        connection = await keep.connection()
        connection.deadline.set(9.0)
        await trio.testing.wait_all_tasks_blocked()
        assert connection.ended_at == 10.0


async def test_a_lifted_or_released_limit_never_fires(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    async with kept() as keep:
        lifted, released, held = [await keep.connection() for _ in range(3)]
        for connection in (lifted, released, held):
            connection.deadline.set(5.0)
        lifted.deadline.set(math.inf)
        released.deadline.release()
        released.deadline.set(math.inf)
        await trio.sleep(1000)
        assert (lifted.ended_at, released.ended_at, held.ended_at) == (None, None, 5.0)
        assert lifted.deadline.due == math.inf
        # Lifted, then set again: it fires at the new time.
        lifted.deadline.set(trio.current_time() + 1.0)
        await trio.sleep(2)
        assert lifted.ended_at == 1001.0


async def test_many_limits_fire_each_at_its_own_time(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    async with kept() as keep:
        connections = [await keep.connection() for _ in range(50)]
        # Set in an order unlike their times, some moved later once armed.
        for index, connection in enumerate(connections):
            connection.deadline.set(float((index * 7) % 50 + 1))
        for connection in connections[::5]:
            connection.deadline.set(connection.deadline.due + 100.0)
        await trio.sleep(1000)
        for index, connection in enumerate(connections):
            expected = float((index * 7) % 50 + 1) + (100.0 if index % 5 == 0 else 0.0)
            assert connection.ended_at == expected


async def test_entries_of_ended_connections_do_not_pile_up(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Connections that come and go much faster than their limits (a client per
    # request): the heap is pruned, not left to hold one entry per connection ever made.
    deadlines = Deadlines()
    scope = trio.CancelScope()
    for _ in range(PRUNE_AT * 20):
        deadline = deadlines.deadline(scope)
        deadline.set(trio.current_time() + 30.0)
        deadline.release()
    assert len(deadlines) <= PRUNE_AT * 2 + 1
    # Limits moved earlier and earlier leave stale entries behind, pruned the same way.
    moved = deadlines.deadline(scope)
    for step in range(PRUNE_AT * 20):
        moved.set(1e6 - step)
    assert len(deadlines) <= PRUNE_AT * 2 + 1
    assert not scope.cancel_called
