"""How a failed dial reads in the agent's retry log, and whether it reached a server.

DNS discovery turns to the other address family only for failures that reached
no server (`ServerUnreachableError`): these check which failures are those.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import ssl

import pytest
import trio

from pvtunnel._errors import ServerUnreachableError, TunnelClosedError
from pvtunnel._trio.dial import describe_failure, dial
from pvtunnel._trio.sockio import unreachable


def _refused_port() -> tuple[socket.socket, int]:
    """A bound socket that never listens: connects to its port are refused."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    return closed, closed.getsockname()[1]


async def test_a_refused_connect_says_why() -> None:
    closed, port = _refused_port()
    with closed, pytest.raises(OSError, match="all attempts to connect") as caught:
        await trio.open_tcp_stream("127.0.0.1", port)
    refused = f"{errno.ECONNREFUSED}: {os.strerror(errno.ECONNREFUSED)}"
    assert describe_failure(caught.value) == f"cannot connect: {refused}"


def test_a_timeout_names_the_setting_that_bounds_it() -> None:
    assert describe_failure(trio.TooSlowError()) == "no connection and handshake within connect_s"


def test_a_name_that_does_not_resolve_keeps_its_own_words() -> None:
    failure = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert describe_failure(failure) == "[Errno -2] Name or service not known"


async def test_a_refused_dial_reached_no_server() -> None:
    closed, port = _refused_port()
    with closed, pytest.raises(ServerUnreachableError) as caught:
        await dial("127.0.0.1", port, None, timeout_s=5.0)
    refused = f"{errno.ECONNREFUSED}: {os.strerror(errno.ECONNREFUSED)}"
    assert describe_failure(caught.value) == f"cannot connect: {refused}"


async def test_a_connect_that_gets_no_answer_in_time_reached_no_server() -> None:
    """A listener whose accept queue is full drops new SYNs, as an address that
    routes nowhere does: the connect is still waiting when ``timeout_s`` is up."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        with pytest.raises(ServerUnreachableError) as caught:
            await dial("127.0.0.1", port, None, timeout_s=0.3)
        for sock in queued:
            sock.close()
    assert describe_failure(caught.value) == "cannot connect: no TCP connection within connect_s"


async def test_a_server_that_answers_without_tls_was_reached(nursery: trio.Nursery) -> None:
    async def plain(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, plain, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(TunnelClosedError, match="TLS handshake"):
        await dial("localhost", port, ssl.create_default_context(), "127.0.0.1", timeout_s=5.0)
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("cause", "reached_none"),
    [
        (OSError(errno.ECONNREFUSED, "Connection refused"), True),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), True),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), True),
        (OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol"), True),
        # Shortages of this host, not the way to the server.
        (OSError(errno.EMFILE, "Too many open files"), False),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), False),
    ],
)
def test_which_connect_errors_reached_no_server(cause: OSError, reached_none: bool) -> None:
    failed = OSError("all attempts to connect to 192.0.2.1:80 failed")
    failed.__cause__ = ExceptionGroup("all attempts", [cause])
    assert unreachable(failed) is reached_none


def test_a_name_that_does_not_resolve_is_not_a_server_unreachable() -> None:
    assert not unreachable(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
