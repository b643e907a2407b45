"""The short text/plain answers the server gives when it cannot proxy."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from pvtunnel._errors import ErrorCode

# What a stream reset before the response head means for the client.
STATUS_FOR_RESET: Final = {
    ErrorCode.UPSTREAM_CONNECT_FAILED: 502,
    ErrorCode.UPSTREAM_PROTOCOL_ERROR: 502,
    ErrorCode.UPSTREAM_CLOSED: 502,
    ErrorCode.LENGTH_REQUIRED: 411,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.REFUSED_STREAM: 503,
    ErrorCode.UNKNOWN_ROUTE: 404,
}


def status_for_reset(code: ErrorCode) -> int:
    return STATUS_FOR_RESET.get(code, 502)


def error_body(status: int, detail: str) -> bytes:
    """``"502 Bad Gateway: <detail>\\n"``: enough for a person, nothing internal."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{status} {phrase}: {detail}\n".encode()


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
