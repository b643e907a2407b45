"""The one exception tree users of pvtunnel catch.

Pure: imported by the sans-I/O wire layer, so it must not import trio or sockets.
Each protocol error carries the wire code that tells the peer how we failed
(protocol.md section "Error codes"), so the layer that owns the I/O never has to
guess which reset code or close reason fits.
"""

from __future__ import annotations

import enum


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


class PvTunnelError(Exception):
    """Base of every error pvtunnel raises on purpose."""


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
    """The agent could not talk to a route's target; ``code`` says how it failed."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class HandshakeRefusedError(PvTunnelError):
    """The server refused this agent for good (bad token, bad hello): do not retry."""
