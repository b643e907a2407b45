"""Which server process an agent reached: the server id of the upgrade (protocol.md 1.1).

A server answers every upgrade with ``Pvtunnel-Server-Id``, the same random id on
every connection to one process and a new one at each start. An agent compares the
ids its links reached: two URLs (127.0.0.1 and localhost, two DNS names for one
host) may lead to one server, where a second registration of the agent would
replace the first, and that one's reconnect the second, forever.

The header goes with the 101 answer, before the agent's HELLO: the server replaces
an agent's older connection once it has read the HELLO of a newer one, so an id sent
in ACCEPT would come too late to spare it. It is no part of the frame protocol and
needs no version: a server that does not send it leaves every link on its own, as
before, and an agent that does not know it ignores it, as HTTP has it.

Pure: the id is made from bytes the caller draws (``secrets``), and read from the
headers its WebSocket library hands over.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

SERVER_ID_HEADER: Final = b"pvtunnel-server-id"
# What an agent takes as an id: it reaches logs and /status, so nothing else.
MAX_SERVER_ID_LENGTH: Final = 64
_SERVER_ID: Final = re.compile(rb"[0-9A-Za-z._-]{1,%d}" % MAX_SERVER_ID_LENGTH)


def new_server_id(entropy: bytes) -> str:
    """A server id from random bytes (16 of them: 32 hexadecimal digits).

    Raises:
        ValueError: fewer than 8 bytes, or more than the id can show.
    """
    if not 8 <= len(entropy) <= MAX_SERVER_ID_LENGTH // 2:
        raise ValueError(f"a server id takes 8 to {MAX_SERVER_ID_LENGTH // 2} random bytes")
    return entropy.hex()


def server_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The server id of an upgrade's answer; None when it has none, or none usable.

    The first ``Pvtunnel-Server-Id`` counts (names compare case-insensitively). A
    value that is not 1 to 64 letters, digits, ``.``, ``_`` or ``-`` is taken as no
    id: the agent then treats the link as reaching a server of its own, as it does
    with a server that sends none, rather than refuse a server that works.
    """
    for name, value in headers:
        if name.lower() == SERVER_ID_HEADER:
            stripped = value.strip(b" \t")
            if _SERVER_ID.fullmatch(stripped) is None:
                return None
            return stripped.decode("ascii")
    return None
