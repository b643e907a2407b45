"""`FastSocket`: Trio's stream semantics, kept, on top of bare ``os.read``/``os.write``.

`FastSocket` goes around `trio.SocketStream` to save a scheduling round per call, so
everything the stream used to guarantee has to be earned again: data intact in both
directions, EOF as ``b""``, waiting when the kernel says so, Trio's exceptions rather
than raw `OSError`, cancellation checked before any byte moves, and a yield now and
then so a busy connection cannot starve the other tasks. Every test runs on real
sockets (a socket pair, or loopback TCP where TCP itself matters), and synchronises
through Trio, never through sleeping. `FastSocket` reads and writes file
descriptors, so these tests are for POSIX systems, where `fast_io` uses it (as are
the CLI tests, which stop processes with SIGTERM and SIGINT).
"""

from __future__ import annotations

import hashlib
import socket
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

import pytest
import trio
import trio.testing

from pvtunnel._trio.sockio import FastSocket, fast_io

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

LIMIT_S = 10
Kind = Literal["socketpair", "tcp"]
KINDS: tuple[Kind, ...] = ("socketpair", "tcp")


@asynccontextmanager
async def stream_pair(kind: Kind) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """Two connected socket streams, (local, peer), both closed when the block ends."""
    if kind == "socketpair":
        a, b = trio.socket.socketpair()
        local, peer = trio.SocketStream(a), trio.SocketStream(b)
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listeners[0]:
            port: int = listeners[0].socket.getsockname()[1]
            local = await trio.open_tcp_stream("127.0.0.1", port)
            peer = await listeners[0].accept()
    async with local, peer:
        yield local, peer


async def receive_exactly(stream: trio.abc.ReceiveStream | FastSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def reset_on_close(stream: trio.SocketStream) -> None:
    """Make closing ``stream`` abort the connection with a RST instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# 1. Round trips and EOF


@pytest.mark.parametrize("kind", KINDS)
async def test_sent_bytes_arrive_intact_at_a_plain_stream(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            pieces: list[bytes | bytearray | memoryview] = [
                b"hello, ",
                bytearray(b"world"),
                memoryview(b"--\x00\xff--")[2:4],
                b"",
            ]
            expected = b"hello, world\x00\xff"
            for piece in pieces:
                await fast.send_all(piece)
            assert await receive_exactly(peer, len(expected)) == expected
            await local.send_eof()
            assert await peer.receive_some() == b""


@pytest.mark.parametrize("kind", KINDS)
async def test_receive_some_returns_what_the_peer_sent(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            await peer.send_all(b"abcdef")
            assert await receive_exactly(fast, 6) == b"abcdef"
            await peer.send_all(b"0123456789")
            first = await fast.receive_some(4)
            assert first == b"0123"
            assert await receive_exactly(fast, 6) == b"456789"


@pytest.mark.parametrize("kind", KINDS)
async def test_two_fast_sockets_talk_both_ways(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            ours, theirs = FastSocket(local), FastSocket(peer)
            for i in range(100):
                ping = b"ping %d" % i
                await ours.send_all(ping)
                assert await receive_exactly(theirs, len(ping)) == ping
                pong = b"pong %d!" % i
                await theirs.send_all(pong)
                assert await receive_exactly(ours, len(pong)) == pong


@pytest.mark.parametrize("kind", KINDS)
async def test_receive_some_returns_empty_after_send_eof(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            await peer.send_all(b"last")
            await peer.send_eof()
            assert await receive_exactly(fast, 4) == b"last"
            assert await fast.receive_some() == b""
            assert await fast.receive_some() == b""
            # Half closed: the other direction still works.
            await fast.send_all(b"reply")
            assert await receive_exactly(peer, 5) == b"reply"


@pytest.mark.parametrize("kind", KINDS)
async def test_receive_some_returns_empty_when_the_peer_closes(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            await peer.aclose()
            assert await fast.receive_some() == b""


# 2. A send larger than the socket buffers


async def test_a_large_send_waits_for_the_reader_and_arrives_intact() -> None:
    size = 8 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    payload = hashlib.sha256(payload).digest() + payload  # not just a repeating pattern
    received = hashlib.sha256()
    count = 0
    count_when_sent: list[int] = []

    with trio.fail_after(LIMIT_S):
        async with stream_pair("socketpair") as (local, peer):
            sender, reader = FastSocket(local), FastSocket(peer)

            async def read_all() -> None:
                nonlocal count
                while chunk := await reader.receive_some():
                    received.update(chunk)
                    count += len(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await sender.send_all(payload)
                count_when_sent.append(count)
                await local.send_eof()

    assert count == len(payload)
    assert received.digest() == hashlib.sha256(payload).digest()
    # The reader only runs while the sender waits: that it got bytes before send_all
    # returned shows the send did wait for room, and resumed when it came.
    assert 0 < count_when_sent[0] < len(payload)


# 3. Waiting for data


@pytest.mark.parametrize("kind", KINDS)
async def test_receive_some_waits_until_data_comes(kind: Kind) -> None:
    results: list[bytes] = []
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)

            async def receive() -> None:
                results.append(await fast.receive_some())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                await peer.send_all(b"wake up")
    assert results == [b"wake up"]


# 4. A closed stream


@pytest.mark.parametrize("kind", KINDS)
async def test_calls_after_close_raise_closed_resource_error(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            await peer.send_all(b"unread")
            await local.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await fast.send_all(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await fast.receive_some()
            # Also on the calls that would have yielded: the count never matters.
            for _ in range(40):
                with pytest.raises(trio.ClosedResourceError):
                    await fast.send_all(b"x")


async def test_close_while_receive_some_waits_raises_closed_resource_error() -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair("socketpair") as (local, _):
            fast = FastSocket(local)

            async def receive() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await fast.receive_some()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                await local.aclose()


async def test_close_while_send_all_waits_raises_closed_resource_error() -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair("socketpair") as (local, _):
            fast = FastSocket(local)

            async def send() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await fast.send_all(b"x" * (8 * 1024 * 1024))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked()
                await local.aclose()


# 5. A connection reset by the peer


async def test_receive_some_after_a_reset_raises_broken_resource_error() -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair("tcp") as (local, peer):
            fast = FastSocket(local)
            await fast.send_all(b"never read")
            reset_on_close(peer)
            await peer.aclose()
            # Waits for the RST if it is not there yet, then reports it.
            with pytest.raises(trio.BrokenResourceError):
                await fast.receive_some()


async def test_send_all_after_a_reset_raises_broken_resource_error() -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair("tcp") as (local, peer):
            fast = FastSocket(local)
            await fast.send_all(b"never read")
            reset_on_close(peer)
            await peer.aclose()
            # A RST makes the socket readable: once it is, it has arrived.
            await trio.lowlevel.wait_readable(local.socket)
            # The first write meets the pending error, later ones a socket shut both ways.
            for _ in range(3):
                with pytest.raises(trio.BrokenResourceError):
                    await fast.send_all(b"more")


# 6. Cancellation


@pytest.mark.parametrize("kind", KINDS)
async def test_send_all_in_a_cancelled_scope_raises_and_writes_nothing(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            with trio.CancelScope() as scope:
                scope.cancel()
                # More than one yield period: the calls that would yield, and the others.
                for _ in range(40):
                    with pytest.raises(trio.Cancelled):
                        await fast.send_all(b"must not be sent")
            await local.send_eof()
            assert await peer.receive_some() == b""


@pytest.mark.parametrize("kind", KINDS)
async def test_receive_some_in_a_cancelled_scope_raises_and_consumes_nothing(kind: Kind) -> None:
    with trio.fail_after(LIMIT_S):
        async with stream_pair(kind) as (local, peer):
            fast = FastSocket(local)
            await peer.send_all(b"kept")
            with trio.CancelScope() as scope:
                scope.cancel()
                for _ in range(40):
                    with pytest.raises(trio.Cancelled):
                        await fast.receive_some()
            assert await receive_exactly(fast, 4) == b"kept"


# 7. Fairness


async def test_a_run_of_sends_that_never_wait_lets_other_tasks_run() -> None:
    sends = 200
    with trio.fail_after(LIMIT_S):
        # Loopback TCP takes far more than 200 small writes without blocking (a socket
        # pair may not), so no send waits: any yield is the periodic one.
        async with stream_pair("tcp") as (local, peer):
            fast = FastSocket(local)
            ran = False
            sends_before_it_ran: int | None = None
            drained = 0

            async def other_task() -> None:
                nonlocal ran
                ran = True

            async def drain() -> None:
                nonlocal drained
                while chunk := await peer.receive_some():
                    drained += len(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                nursery.start_soon(other_task)
                for i in range(sends):
                    await fast.send_all(b"x")
                    if ran:
                        sends_before_it_ran = i + 1
                        break
                sent = sends if sends_before_it_ran is None else sends_before_it_ran
                await local.send_eof()

    assert sends_before_it_ran is not None, f"{sends} sends in a row never yielded"
    assert drained == sent


async def test_a_call_that_need_not_wait_does_not_yield() -> None:
    # The point of FastSocket: no scheduling round when the system call succeeds.
    with trio.fail_after(LIMIT_S):
        async with stream_pair("tcp") as (local, peer):
            fast = FastSocket(local)
            runs = 0

            async def other_task() -> None:
                nonlocal runs
                runs += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other_task)
                await fast.send_all(b"x")
                assert runs == 0
                await peer.send_all(b"y")
                await trio.lowlevel.wait_readable(local.socket)  # yields: the task runs
                assert runs == 1
                nursery.start_soon(other_task)
                assert await fast.receive_some() == b"y"
                assert runs == 1
            assert runs == 2
            assert await receive_exactly(peer, 1) == b"x"


# 8. fast_io


async def test_fast_io_wraps_a_socket_stream() -> None:
    async with stream_pair("socketpair") as (local, peer):
        wrapped = fast_io(local)
        assert isinstance(wrapped, FastSocket)
        await wrapped.send_all(b"via fast_io")
        assert await receive_exactly(peer, 11) == b"via fast_io"


async def test_fast_io_returns_any_other_stream_itself() -> None:
    left, right = trio.testing.memory_stream_pair()
    assert fast_io(left) is left
    assert fast_io(right) is right
    async with left, right:
        await fast_io(left).send_all(b"memory")
        assert await receive_exactly(right, 6) == b"memory"


async def test_a_second_sender_is_refused_while_the_first_waits() -> None:
    """Two sends interleaved would splice their bytes; the second is refused instead."""
    a, b = trio.socket.socketpair()
    local, peer = trio.SocketStream(a), trio.SocketStream(b)
    fast = FastSocket(local)
    big = b"x" * (4 * 1024 * 1024)  # far more than the socket buffers: the send waits
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fast.send_all, big)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await fast.send_all(b"spliced?")
            received = 0
            while received < len(big):
                chunk = await peer.receive_some(1 << 20)
                assert set(chunk) == {ord("x")}
                received += len(chunk)
    await local.aclose()
    await peer.aclose()


# 9. try_send: what the kernel takes now, never a wait


async def test_try_send_writes_what_fits_and_never_waits() -> None:
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB: far more than the socket buffers
    async with stream_pair("socketpair") as (local, peer):
        fast = FastSocket(local)
        assert fast.try_send(b"small") == 5
        assert await receive_exactly(peer, 5) == b"small"
        taken = fast.try_send(big)
        assert 0 < taken < len(big)  # a part, at once
        assert fast.try_send(big[taken:]) == 0  # full: nothing, and no waiting
        with trio.fail_after(LIMIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fast.send_all, big[taken:])
                assert await receive_exactly(peer, len(big)) == big


async def test_try_send_is_refused_while_a_send_all_waits() -> None:
    big = b"x" * (4 * 1024 * 1024)
    async with stream_pair("socketpair") as (local, peer):
        fast = FastSocket(local)
        with trio.fail_after(LIMIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fast.send_all, big)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    fast.try_send(b"spliced?")
                assert await receive_exactly(peer, len(big)) == big


@pytest.mark.parametrize("kind", KINDS)
async def test_try_send_on_a_shut_or_closed_socket_raises(kind: Kind) -> None:
    async with stream_pair(kind) as (local, _peer):
        fast = FastSocket(local)
        local.socket.shutdown(socket.SHUT_WR)
        with pytest.raises(trio.BrokenResourceError):
            fast.try_send(b"after shutdown")
        await local.aclose()
        with pytest.raises(trio.ClosedResourceError):
            fast.try_send(b"after close")
