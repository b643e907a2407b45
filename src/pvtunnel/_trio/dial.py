"""Dialing a server: TCP, then TLS that names the server's host, and how a failed dial reads.

A discovered server is dialed at one of its addresses, but TLS still names and
verifies the host of the URL, so a certificate for the name keeps working
whichever replica answers. A TLS failure is told apart from a refused upgrade
(shaking hands before the WebSocket opens), and a certificate that does not
verify becomes `ServerCertificateError`: configuration to fix, not a network
fault to retry. A connect that never reaches a peer (refused, no route, no
answer within ``connect_s``) becomes `ServerUnreachableError`: DNS discovery
counts only that against an address family, since any answer from a server,
a refusal included, proves the family carries the agent there.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import trio

from pvtunnel._errors import (
    HandshakeRefusedError,
    ServerCertificateError,
    ServerUnreachableError,
    TunnelClosedError,
    WebSocketClosed,
)
from pvtunnel._trio.sockio import unreachable, why_connect_failed
from pvtunnel._trio.websocket import ConnectionRejected

if TYPE_CHECKING:
    from pvtunnel._config import AgentConfig


def final_if_refused(exc: BaseException, url: str) -> BaseException:
    """A token the server refused at the upgrade is final: retrying cannot change it."""
    if isinstance(exc, ConnectionRejected) and exc.status_code in (401, 403):
        return HandshakeRefusedError(
            f"the server at {url} refused this agent's token (HTTP {exc.status_code})"
        )
    return exc


async def dial(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    address: str | None = None,
    *,
    timeout_s: float,
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    """Dial ``address`` (else ``host``); TLS names and verifies ``host`` either way.

    Raises:
        ServerUnreachableError: No TCP connection: the address could not be reached.
        trio.TooSlowError: The connection was made, but no TLS handshake within
            the rest of ``timeout_s``.
        OSError: The connect failed here (a name that does not resolve, out of
            file descriptors), not on the way to the server.
    """
    deadline = trio.current_time() + timeout_s
    tcp = await _connect(address or host, port, deadline)
    if ssl_context is None:
        return tcp
    stream = trio.SSLStream(tcp, ssl_context, server_hostname=host, https_compatible=True)
    # Shake hands here, so a TLS failure is told apart from a refused upgrade.
    try:
        with trio.fail_at(deadline):
            await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise tls_failure(exc.__cause__, host, port) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def _connect(target: str, port: int, deadline: float) -> trio.SocketStream:
    """TCP to ``target``; failing on the way there (as opposed to here) is
    `ServerUnreachableError`, a timeout included: an address that never answers."""
    try:
        with trio.fail_at(deadline):
            return await trio.open_tcp_stream(target, port)
    except trio.TooSlowError:
        raise ServerUnreachableError("no TCP connection within connect_s") from None
    except OSError as exc:
        if not unreachable(exc):
            raise
        raise ServerUnreachableError(why_connect_failed(exc)) from exc


def tls_failure(cause: BaseException | None, host: str, port: int) -> Exception:
    """A failed handshake as the agent reports it: a certificate that does not verify
    is configuration (`ServerCertificateError`), anything else a broken connection."""
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ServerCertificateError(
            f"TLS certificate verification failed for the server at {server}: "
            f"{cause.verify_message or cause.reason} "
            "(a server with a private CA needs [server] ca_file)"
        )
    reason = cause or "the connection closed"
    return TunnelClosedError(f"TLS handshake with the server at {server} failed: {reason}")


def client_ssl_context(url: str, config: AgentConfig) -> ssl.SSLContext | None:
    """Verification against the system's CAs, or ``ca_file`` for a private CA."""
    if not url.startswith("wss://"):
        return None
    ca_file = config.server.ca_file
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def describe_failure(exc: BaseException) -> str:
    """One line for the retry log: what the server answered, or why the link closed."""
    if isinstance(exc, ConnectionRejected):
        return f"the server answered HTTP {exc.status_code}"
    if isinstance(exc, WebSocketClosed):
        return f"connection closed ({exc.reason})"
    if isinstance(exc, ServerUnreachableError):
        return f"cannot connect: {exc}"
    if isinstance(exc, trio.TooSlowError):
        return "no connection and handshake within connect_s"
    if type(exc) is OSError:  # trio's "all attempts to connect ... failed"
        return f"cannot connect: {why_connect_failed(exc)}"
    return str(exc) or type(exc).__name__
