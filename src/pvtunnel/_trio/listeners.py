"""Opening a TCP listener, with an error that says which one failed.

A server opens up to three listeners (internal, external, admin) and an agent an
admin listener: "Address already in use" alone leaves the operator guessing
which port is taken.

A host name may resolve to several addresses ("localhost" to 127.0.0.1 and ::1),
each with a listener of its own. Asked for port 0, they all get the one port the
first was given, so the one port that is reported (the ready line,
`ServerAddresses`) reaches every one of them.
"""

from __future__ import annotations

import errno
from typing import Final

import trio

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
