"""How a failed dial reads in the agent's retry log: each reason the system gave."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio

from pvtunnel._trio.dial import describe_failure


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
