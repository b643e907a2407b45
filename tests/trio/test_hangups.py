"""The server-wide hang-up watch: a peek that yields, and a check that fails.

`watch_hangups` is one task for the whole server, in the same nursery as every
connection: whatever one client's socket does, it must go on and must not raise.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, cast

import attrs
import pytest
import trio
import trio.testing

from pvtunnel._config import ServerConfig
from pvtunnel._trio.hangups import HANGUP_CHECK_S, _closed_at_peek, watch_hangups
from pvtunnel._trio.state import ServerState

if TYPE_CHECKING:
    from pvtunnel._trio.stream import Channel


class ClosedDuringPeek:
    """A socket whose connection task closes it while the watch's peek yields.

    The peek succeeds, then (as trio's socket methods do) yields to the scheduler;
    here the client's own task finishes its exchange in that pass and closes the
    socket, so the watch resumes holding a closed socket.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    async def recv(self, size: int, flags: int) -> bytes:
        data = await self.sock.recv(size, flags)
        self.sock.close()
        return data


@pytest.mark.parametrize("pending", [b"X", b""], ids=["data-behind", "nothing-behind"])
async def test_a_socket_closed_while_its_peek_yields_is_no_hang_up(pending: bytes) -> None:
    ours, peer = trio.socket.socketpair()
    with peer:
        if pending:
            await peer.send(pending)  # a byte to peek at: the kernel is asked next
        else:
            peer.shutdown(socket.SHUT_WR)
        closing = ClosedDuringPeek(ours)
        assert await _closed_at_peek(cast("trio.socket.SocketType", closing)) is False
    assert ours.fileno() == -1


@attrs.define(eq=False)
class Client:
    address: str
    error: Exception | None = None
    checks: int = 0

    async def check_hangup(self, channel: Channel) -> bool:
        self.checks += 1
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        return False


async def test_a_failing_check_is_logged_and_the_watch_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = ServerState(ServerConfig())
    broken = Client("192.0.2.1", error=ValueError("file descriptor cannot be -1"))
    waiting = Client("192.0.2.2")
    channel = cast("Channel", object())
    state.awaiting[broken] = channel
    state.awaiting[waiting] = channel
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_hangups, state)
        for _ in range(3):
            await state.hangups_checked.park()
        nursery.cancel_scope.cancel()
    # The broken client is dropped after its one failed check; the other is still
    # watched, round after round.
    assert broken.checks == 1
    assert waiting.checks == 3
    assert list(state.awaiting) == [waiting]
    assert trio.current_time() >= 3 * HANGUP_CHECK_S
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "checking 192.0.2.1 for a hang-up failed"
    assert record.exc_info is not None
