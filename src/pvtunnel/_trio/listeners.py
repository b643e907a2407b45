"""Opening a TCP listener, with an error that says which one failed.

A server opens up to three listeners (internal, external, admin) and an agent an
admin listener: "Address already in use" alone leaves the operator guessing
which port is taken.
"""

from __future__ import annotations

import trio


async def open_listeners(what: str, port: int, host: str | None) -> list[trio.SocketListener]:
    """`trio.open_tcp_listeners` for ``host``:``port``.

    Raises:
        OSError: as trio raises it (same ``errno``), its message naming ``what``
            listener and the address asked for.
    """
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        shown = host if host is not None else "*"
        where = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"the {what} listener on {where}: {reason}") from None
