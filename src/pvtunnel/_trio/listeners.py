"""Opening a TCP listener, with an error that says which one failed.

A server opens up to three listeners (internal, external, admin) and an agent an
admin listener: "Address already in use" alone leaves the operator guessing
which port is taken.

A host name may resolve to several addresses ("localhost" to 127.0.0.1 and ::1),
each with a listener of its own. Asked for port 0, they all get the one port the
first was given, so the one port that is reported (the ready line,
`ServerAddresses`) reaches every one of them.

`serve_listeners` is `trio.serve_listeners` with the shortage of descriptors (or
of kernel memory) said the way an operator can act on: each accept that fails
for it is retried after `ACCEPT_RETRY_S`, as Trio does, but the line about it
goes out at most once per `SHORTAGE_LOG_EVERY_S`, under the listener's own
logger, with the count of failures since the last and what to raise; Trio's
own is a traceback per attempt, ten a second per listener, under a name no
setup of ours routes. A line says when accepting works again.
"""

from __future__ import annotations

import errno
import math
import os
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from pvtunnel._logs import LogThrottle

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable, Sequence

# Another program may take the port between its choice and its other addresses' binds.
SAME_PORT_TRIES: Final = 8
# Where each listener's port is set, for the hint when it is taken.
_PORT_FLAG: Final = {
    "internal": "--internal-port, or internal.port",
    "external": "--external-port, or external.port",
    "admin": "--admin-port, or admin.port",
}


async def open_listeners(what: str, port: int, host: str | None) -> list[trio.SocketListener]:
    """`trio.open_tcp_listeners` for ``host``:``port``.

    Raises:
        OSError: as trio raises it (same ``errno``), its message naming ``what``
            listener and the address asked for.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and len(listeners) > 1:
            listeners = await _on_one_port(listeners, host)
        return listeners
    except OSError as exc:
        shown = host if host is not None else "*"
        where = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE and port != 0:
            # What to change is the next question: say it (the agent's inspector
            # takes 4040 unasked, which another agent on the machine may hold).
            reason += f"; give it another port ({_PORT_FLAG.get(what, 'its port')})"
        raise OSError(exc.errno, f"the {what} listener on {where}: {reason}") from None


async def _on_one_port(
    listeners: list[trio.SocketListener], host: str | None
) -> list[trio.SocketListener]:
    """Listeners on every address of ``host``, on the port the first of ``listeners`` got."""
    for attempt in range(SAME_PORT_TRIES):
        port = listeners[0].socket.getsockname()[1]
        for listener in listeners:
            await listener.aclose()
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == SAME_PORT_TRIES - 1:
                raise
        listeners = await trio.open_tcp_listeners(0, host=host)
    raise AssertionError("unreachable")  # pragma: no cover


# What accept(2) fails with when this process or the machine runs short, not
# because of the connection: out of descriptors (the process's limit or the
# system's), of memory, of buffer space. The connection waits in the backlog.
_SHORTAGES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_S: Final = 0.1
# The least time between two lines about one shortage: the listeners', and the
# agent's upstream dials'.
SHORTAGE_LOG_EVERY_S: Final = 10.0


class _Shortage:
    """The accept failures of one listener's loop, for its log lines."""

    __slots__ = ("failures", "since", "throttle")

    def __init__(self) -> None:
        self.throttle = LogThrottle(SHORTAGE_LOG_EVERY_S)
        self.failures = 0
        self.since = math.inf


async def serve_listeners(
    handler: Callable[[trio.abc.Stream], Awaitable[object]],
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    *,
    what: str,
    log: logging.Logger,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """`trio.serve_listeners`, with a shortage logged to ``log`` as the module says
    (``what``: the listener's name in those lines)."""
    async with trio.open_nursery() as nursery:
        if handler_nursery is None:
            handler_nursery = nursery
        for listener in listeners:
            nursery.start_soon(_serve_one, listener, handler_nursery, handler, what, log)
        task_status.started()
    raise AssertionError("unreachable")  # pragma: no cover


async def _serve_one(
    listener: trio.abc.Listener[trio.abc.Stream],
    handlers: trio.Nursery,
    handler: Callable[[trio.abc.Stream], Awaitable[object]],
    what: str,
    log: logging.Logger,
) -> NoReturn:
    shortage: _Shortage | None = None
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _SHORTAGES:
                    raise
                if shortage is None:
                    shortage = _Shortage()
                _short(shortage, exc.errno, what, listener, log)
                await trio.sleep(ACCEPT_RETRY_S)
            else:
                if shortage is not None:
                    _recovered(shortage, what, listener, log)
                    shortage = None
                handlers.start_soon(_run_handler, stream, handler)


async def _run_handler(
    stream: trio.abc.Stream, handler: Callable[[trio.abc.Stream], Awaitable[object]]
) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


def _where(listener: trio.abc.Listener[trio.abc.Stream]) -> str:
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    if not isinstance(listener, trio.SocketListener):
        return "?"
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _short(
    shortage: _Shortage,
    code: int,
    what: str,
    listener: trio.abc.Listener[trio.abc.Stream],
    log: logging.Logger,
) -> None:
    now = trio.current_time()
    shortage.failures += 1
    shortage.since = min(shortage.since, now)
    held = shortage.throttle.allow(now)
    if held is None:
        return
    if code in (errno.EMFILE, errno.ENFILE):
        hint = (
            "this process is out of file descriptors: raise its limit (ulimit -n, LimitNOFILE=)"
            if code == errno.EMFILE
            else "the system is out of file descriptors: raise fs.file-max"
        )
    else:
        hint = "the system is short of memory"
    more = f" ({held} more failures since the last line)" if held else ""
    log.error(
        "the %s listener on %s cannot accept connections: %s (%s); %s; "
        "they wait in the backlog, retrying every %gs%s",
        what,
        _where(listener),
        errno.errorcode[code],
        os.strerror(code),
        hint,
        ACCEPT_RETRY_S,
        more,
    )


def _recovered(
    shortage: _Shortage,
    what: str,
    listener: trio.abc.Listener[trio.abc.Stream],
    log: logging.Logger,
) -> None:
    log.warning(
        "the %s listener on %s accepts connections again, after %d failed attempts over %.1fs",
        what,
        _where(listener),
        shortage.failures,
        trio.current_time() - shortage.since,
    )
