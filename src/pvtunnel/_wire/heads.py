"""Request and response heads and their field lists (protocol.md section 4.4).

A head travels as a flat list of length-prefixed fields so that decoding is a
single pass with no parsing of HTTP syntax: the HTTP layers on both ends (h11)
are the ones that validate header names and values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from pvtunnel._errors import RemoteProtocolError
from pvtunnel._wire._make import positional
from pvtunnel._wire.frames import encode_fields

if TYPE_CHECKING:
    from collections.abc import Callable

Headers = tuple[tuple[bytes, bytes], ...]

_DIGITS: Final = frozenset(b"0123456789")
# Length prefixes of the short fields that nearly every head is made of, ready-made:
# a lookup is cheaper than building two bytes per field.
_PREFIXES: Final = tuple(n.to_bytes(2) for n in range(1024))


@attrs.frozen(kw_only=True)
class RequestHead:
    """What the server asks the agent to replay: the route it chose and the request."""

    route: str
    method: bytes
    target: bytes
    headers: Headers = ()

    def to_fields(self) -> list[bytes]:
        fields = [self.route.encode("ascii"), self.method, self.target]
        for name, value in self.headers:
            fields.append(name)
            fields.append(value)
        return fields

    def encode(self) -> bytes:
        """The fields as a HEAD payload (`encode_fields` of `to_fields`).

        Raises:
            ValueError: a field longer than 65535 bytes.
            UnicodeEncodeError: a route that is not ASCII.
        """
        route = self.route.encode("ascii")
        return _encode((route, self.method, self.target), self.headers, self.to_fields)

    @classmethod
    def from_fields(cls, fields: tuple[bytes, ...]) -> RequestHead:
        """Raises `RemoteProtocolError` when the fields cannot be a request head."""
        if len(fields) < 3 or len(fields) % 2 == 0:
            raise RemoteProtocolError("request head needs route, method, target and pairs")
        route, method, target = fields[0], fields[1], fields[2]
        if not route.isascii() or not method or not target:
            raise RemoteProtocolError("request head with an empty method or target")
        return _request_head(route.decode("ascii"), method, target, _pairs(fields, 3))


@attrs.frozen(kw_only=True)
class ResponseHead:
    """What the upstream answered, as the agent relays it."""

    status: int
    reason: bytes = b""
    headers: Headers = ()

    @property
    def is_informational(self) -> bool:
        """1xx other than 101: more heads follow on the same stream."""
        return 100 <= self.status < 200 and self.status != 101

    def to_fields(self) -> list[bytes]:
        fields = [b"%d" % self.status, self.reason]
        for name, value in self.headers:
            fields.append(name)
            fields.append(value)
        return fields

    def encode(self) -> bytes:
        """The fields as a HEAD payload (`encode_fields` of `to_fields`).

        Raises:
            ValueError: a field longer than 65535 bytes.
        """
        return _encode((b"%d" % self.status, self.reason), self.headers, self.to_fields)

    @classmethod
    def from_fields(cls, fields: tuple[bytes, ...], *, is_informational: bool) -> ResponseHead:
        """Raises `RemoteProtocolError` for a bad status or a flag that contradicts it."""
        if len(fields) < 2 or len(fields) % 2 == 1:
            raise RemoteProtocolError("response head needs status, reason and pairs")
        raw_status = fields[0]
        if len(raw_status) != 3 or not _DIGITS.issuperset(raw_status):
            raise RemoteProtocolError("response status is not three digits")
        head = _response_head(int(raw_status), fields[1], _pairs(fields, 2))
        if not 100 <= head.status <= 599 or head.is_informational != is_informational:
            raise RemoteProtocolError(f"response status {head.status} with that flag")
        return head


def _encode(
    first: tuple[bytes, ...], headers: Headers, to_fields: Callable[[], list[bytes]]
) -> bytes:
    # The request and response heads of every proxied request pass here: one table
    # lookup per field, and the general path only for a field of 1 KiB or more.
    prefixes = _PREFIXES
    parts: list[bytes] = []
    extend = parts.extend
    try:
        for field in first:
            extend((prefixes[len(field)], field))
        for name, value in headers:
            extend((prefixes[len(name)], name, prefixes[len(value)], value))
    except IndexError:
        return encode_fields(to_fields())
    return b"".join(parts)


def _pairs(fields: tuple[bytes, ...], start: int) -> Headers:
    # The callers checked the parity.
    return tuple(zip(fields[start::2], fields[start + 1 :: 2], strict=True))


# Built from fields checked above (and by the peer's HTTP parser before that).
_request_head = positional(RequestHead, "route", "method", "target", "headers")
_response_head = positional(ResponseHead, "status", "reason", "headers")
