"""Every exception pvtunnel defines, in one tree under `PvTunnelError`.

One module, as h11's ``_util.py`` and h2's ``exceptions.py`` are: a reader finds
every failure in one place, and ``except PvTunnelError`` catches anything pvtunnel
raises on purpose. A test fails on an exception class defined anywhere else.

Pure: imported by the sans-I/O wire layer, so it must not import trio or sockets.
Each protocol error carries the wire code that tells the peer how we failed
(protocol.md section "Error codes"), so the layer that owns the I/O never has to
guess which reset code or close reason fits.

What a program embedding pvtunnel can meet is re-exported from `pvtunnel`; the
rest are raised and caught inside pvtunnel, and are here so the tree is whole.
The WebSocket's own refusal of an upgrade (``ConnectionRejected``, an HTTP status
instead of 101) stays trio-websocket's class: it is raised in trio-websocket's
reader task, and the agent turns it into `HandshakeRefusedError` (401, 403) or a
retry before anything outside pvtunnel could see it.
"""

from __future__ import annotations

import enum
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class ErrorCode(enum.IntEnum):
    """Reset and goaway codes on the wire (protocol.md, "Error codes")."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    REFUSED_STREAM = 4
    CANCEL = 5
    UPSTREAM_CONNECT_FAILED = 6
    UPSTREAM_TIMEOUT = 7
    UPSTREAM_PROTOCOL_ERROR = 8
    UNKNOWN_ROUTE = 9
    UPSTREAM_CLOSED = 10
    LENGTH_REQUIRED = 11


class PvTunnelError(Exception):
    """Base of every error pvtunnel raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # `pickle` and `copy` rebuild an exception as ``cls(*self.args)``, which
        # fails for a class whose ``__init__`` takes other arguments (ConfigError's
        # problems, UpstreamError's code); this rebuilds it without calling it.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(
    cls: type[PvTunnelError], args: tuple[object, ...], state: dict[str, object]
) -> PvTunnelError:
    """An exception as `PvTunnelError.__reduce__` took it apart, ``__init__`` skipped."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(PvTunnelError):
    """A configuration is unusable; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ProtocolError(PvTunnelError):
    """The tunnel protocol was violated; ``code`` is what to tell the peer."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: close the connection with ``code``."""


class TunnelClosedError(PvTunnelError):
    """The agent connection is gone (network failure, peer closed, goaway)."""


class UpstreamError(PvTunnelError):
    """The agent could not talk to a route's target; ``code`` says how it failed;
    ``logged``: the failure was logged already (or held back, see `LogThrottle`)."""

    def __init__(self, message: str, code: ErrorCode, *, logged: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.logged = logged


class ServerUnreachableError(PvTunnelError, OSError):
    """No TCP connection to the server: refused, no route to it, reset or timed out
    while connecting.

    The network's answer rather than a server's, which is what DNS discovery needs
    to know before it gives up on an address family. An `OSError`, as the failed
    connect it stands for, so whatever retries a failed connect retries it too.
    """


class HandshakeRefusedError(PvTunnelError):
    """The server refused this agent for good (bad token, bad hello): do not retry."""


class ServerCertificateError(HandshakeRefusedError):
    """The server's TLS certificate failed verification.

    Final for an agent that never registered (a configuration mistake: a private
    CA needs ``[server] ca_file``); an agent that was registered before keeps
    retrying, so a botched certificate renewal heals without a restart.
    """


# ------------------------------------------------------------ the tunnel itself


class StreamClosedError(PvTunnelError):
    """The stream is gone (reset, or finished): a race, not a protocol violation."""


class StreamResetError(TunnelClosedError):
    """The peer reset this stream; ``code`` says why."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"stream reset: {code.name} {reason}".rstrip())
        self.code = code


class WebSocketClosed(PvTunnelError):
    """The WebSocket is closed (by either side) or its transport broke."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class EncryptedKeyError(PvTunnelError, ssl.SSLError):
    """A listener's TLS key asks for a passphrase, and pvtunnel takes none.

    An `ssl.SSLError` (so an `OSError`), as whatever else stops the key loading.
    """

    MESSAGE = (
        "the private key is encrypted, and pvtunnel takes no passphrase: "
        "give it the key decrypted (openssl pkey -in KEY -out PLAIN_KEY)"
    )

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)
        self.strerror = self.MESSAGE

    def __str__(self) -> str:
        return self.MESSAGE

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), ())


class HandshakeError(PvTunnelError):
    """The WebSocket upgrade ended before a whole answer came: the connection closed."""


class ClientGoneError(PvTunnelError):
    """The client connection broke or sent something unusable mid-request."""


class SameServerError(PvTunnelError):
    """An agent link's upgrade reached a server another of its links holds already
    (protocol.md 1.1): ``holder`` names that link, ``server_id`` is the server's id."""

    def __init__(self, holder: str, server_id: str) -> None:
        super().__init__(f"{holder} is connected to server {server_id} already")
        self.holder = holder
        self.server_id = server_id


# ------------------------------------------------------------ configuration


class InvalidValue(PvTunnelError, ValueError):
    """A raw value broke a rule; ``entries`` pairs a sub-path with a message.

    The sub-path is relative to the value ("" for the value itself, "[2]" for an
    array element), so whoever knows where the value sits can prefix it.
    """

    def __init__(self, message: str, *, at: str = "") -> None:
        super().__init__(message)
        self.entries: tuple[tuple[str, str], ...] = ((at, message),)

    @classmethod
    def many(cls, entries: Sequence[tuple[str, str]]) -> InvalidValue:
        """Bundle several problems so an array reports every bad element at once."""
        error = cls(entries[0][1], at=entries[0][0])
        error.entries = tuple(entries)
        return error


class FieldError(ConfigError):
    """An attrs config object was built with a value that breaks its rule.

    Raised from validators and ``__attrs_post_init__``, so code that builds configs
    directly gets the same ``ConfigError`` lines as the loaders. ``entries`` hold
    paths relative to the object, which the loader prefixes with the table's path.
    """

    def __init__(self, owner: str, entries: Sequence[tuple[str, str]]) -> None:
        super().__init__([f"{owner}.{path}: {message}" for path, message in entries])
        self.entries = tuple(entries)


class InvalidKeyError(PvTunnelError):
    """A check that relates a table's keys read one whose own value is invalid.

    Raised by the loader's stand-in for a table that did not load, and caught by
    whatever runs the check, which then skips it: beside the key's own problem
    line, anything it said would be noise.
    """


# ------------------------------------------------------------ admin and inspector


class StatusError(PvTunnelError):
    """The admin listener could not be reached or gave no usable answer."""


class EditError(PvTunnelError, ValueError):
    """The inspector's edits cannot make a request; the message says why (for a 400)."""


class ReplayRefusedError(PvTunnelError):
    """A recorded request cannot be replayed; the message says why (for a 409)."""
