"""Reads and writes on a plain TCP stream that skip Trio's scheduling round when they can.

`trio.SocketStream.send_all` and ``receive_some`` end with a scheduling checkpoint
even when the system call succeeded at once. On the tunnel's hot path every read
and every write then costs a whole extra pass of the scheduler (an ``epoll_wait``
and a task switch): at one connection, most of what a request costs. `FastSocket`
makes the system call first and waits only when it would block. Cancellation is
still checked first, as Trio's own operations do, and a run of calls that never
had to wait yields once in a while so no task can starve the others.

Anything but a plain socket stream on a POSIX system (TLS, the memory streams of
tests, Windows sockets, which are not file descriptors) keeps Trio's methods.
"""

from __future__ import annotations

import errno
import os
from typing import Final, Protocol

import trio

# Calls that did not have to wait, in a row, before one yields anyway.
_YIELD_EVERY: Final = 32
# Bytes asked of the kernel per read when the caller does not say.
RECEIVE_SIZE: Final = 65536
# What a stream raises once it broke or was closed, ours and Trio's alike.
BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class ByteStream(Protocol):
    async def receive_some(self, max_bytes: int | None = None, /) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview, /) -> None: ...


class FastSocket:
    """``receive_some`` and ``send_all`` of a `trio.SocketStream`, without the extra round.

    One task may receive while another sends, as with the stream itself; a second
    call in the same direction while one is under way raises `trio.BusyResourceError`
    (a send that interleaved with a waiting one would splice their bytes).
    """

    __slots__ = ("_receiving", "_sending", "_sock", "_unyielded")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._sock = stream.socket
        self._unyielded = 0
        self._sending = False
        self._receiving = False

    async def _checkpoint(self) -> None:
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def _fd(self) -> int:
        # Asked for on every call: once the stream is closed the number may be reused.
        fd = self._sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        return fd

    async def receive_some(self, max_bytes: int | None = None, /) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this socket")
        await self._checkpoint()
        size = RECEIVE_SIZE if max_bytes is None else max_bytes
        self._receiving = True
        try:
            while True:
                try:
                    return os.read(self._fd(), size)
                except BlockingIOError:
                    self._unyielded = 0
                    await trio.lowlevel.wait_readable(self._sock)
                except OSError as exc:
                    raise trio.BrokenResourceError(f"receiving failed: {exc}") from exc
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview, /) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this socket")
        await self._checkpoint()
        self._sending = True
        try:
            with memoryview(data) as view:
                sent = 0
                total = len(view)
                while sent < total:
                    try:
                        sent += os.write(self._fd(), view[sent:])
                    except BlockingIOError:
                        self._unyielded = 0
                        await trio.lowlevel.wait_writable(self._sock)
                    except OSError as exc:
                        raise trio.BrokenResourceError(f"sending failed: {exc}") from exc
        finally:
            self._sending = False

    def try_send(self, data: bytes | bytearray | memoryview, /) -> int:
        """Write what the kernel takes now, without waiting: the bytes written (0 if none).

        For code that must not yield (a write at the end of a scheduler pass);
        whatever is left is for `send_all`.

        Raises:
            trio.BusyResourceError: a `send_all` is under way.
            trio.BrokenResourceError / trio.ClosedResourceError: as for `send_all`.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this socket")
        try:
            return os.write(self._fd(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"sending failed: {exc}") from exc


def fast_io(stream: trio.abc.Stream) -> ByteStream:
    """The quickest way to read and write ``stream``: a `FastSocket` where one applies."""
    if isinstance(stream, trio.SocketStream) and os.name == "posix":
        return FastSocket(stream)
    return stream


def _attempt_errors(exc: OSError) -> tuple[BaseException, ...]:
    """The errors behind a failed ``trio.open_tcp_stream``.

    trio reports each attempt's error (one per address tried) only as the cause of
    its own "all attempts ... failed", which says nothing of why; a failure before
    any attempt (a name that does not resolve) is its own.
    """
    group = exc.__cause__
    return tuple(group.exceptions) if isinstance(group, BaseExceptionGroup) else (exc,)


def why_connect_failed(exc: OSError) -> str:
    """What the system said when ``trio.open_tcp_stream`` failed, as nginx logs it
    ("111: Connection refused")."""
    if not isinstance(exc.__cause__, BaseExceptionGroup):
        return exc.strerror or str(exc)
    reasons = dict.fromkeys(
        f"{cause.errno}: {os.strerror(cause.errno)}"
        if isinstance(cause, OSError) and cause.errno is not None
        else str(cause)
        for cause in _attempt_errors(exc)
    )
    return "; ".join(reasons)


_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE})
# What a connect fails with when the network brings it to no listening peer:
# refused, reset while connecting, no answer, no route, the network or host down,
# or the address family not available on this host at all.
_UNREACHABLE: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ETIMEDOUT,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EAFNOSUPPORT,
    }
)


def unreachable(exc: OSError) -> bool:
    """Whether a failed ``trio.open_tcp_stream`` never reached a peer: every attempt
    met one of the network's refusals, not a shortage here (out of descriptors, of
    local ports) or a name that does not resolve."""
    return all(
        isinstance(cause, OSError) and cause.errno in _UNREACHABLE for cause in _attempt_errors(exc)
    )


def out_of_descriptors(exc: OSError) -> bool:
    """Whether a failed ``trio.open_tcp_stream`` ran out of file descriptors here: this
    process's limit or the system's, not anything the peer did."""
    return any(
        isinstance(cause, OSError) and cause.errno in _OUT_OF_DESCRIPTORS
        for cause in _attempt_errors(exc)
    )
