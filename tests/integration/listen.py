"""A loopback listener for the small servers the integration tests run."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def serve_on_loopback(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on a free 127.0.0.1 port until cancelled (startable: the port)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_listeners, handler, listeners))
        task_status.started(listeners[0].socket.getsockname()[1])


async def refused_port() -> int:
    """A 127.0.0.1 port that was just free and that nothing listens on: a connect
    there is refused."""
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
