"""Request and response heads and their field lists (protocol.md section 4.4).

A head travels as a flat list of length-prefixed fields so that decoding is a
single pass with no parsing of HTTP syntax: the HTTP layers on both ends (h11)
are the ones that validate header names and values.
"""

from __future__ import annotations

from typing import Final

import attrs

from pvtunnel._errors import RemoteProtocolError

Headers = tuple[tuple[bytes, bytes], ...]

_DIGITS: Final = frozenset(b"0123456789")


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

    @classmethod
    def from_fields(cls, fields: tuple[bytes, ...]) -> RequestHead:
        """Raises `RemoteProtocolError` when the fields cannot be a request head."""
        if len(fields) < 3 or len(fields) % 2 == 0:
            raise RemoteProtocolError("request head needs route, method, target and pairs")
        route, method, target = fields[0], fields[1], fields[2]
        if not route.isascii() or not method or not target:
            raise RemoteProtocolError("request head with an empty method or target")
        return cls(
            route=route.decode("ascii"), method=method, target=target, headers=_pairs(fields, 3)
        )


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

    @classmethod
    def from_fields(cls, fields: tuple[bytes, ...], *, is_informational: bool) -> ResponseHead:
        """Raises `RemoteProtocolError` for a bad status or a flag that contradicts it."""
        if len(fields) < 2 or len(fields) % 2 == 1:
            raise RemoteProtocolError("response head needs status, reason and pairs")
        raw_status = fields[0]
        if len(raw_status) != 3 or not _DIGITS.issuperset(raw_status):
            raise RemoteProtocolError("response status is not three digits")
        head = cls(status=int(raw_status), reason=fields[1], headers=_pairs(fields, 2))
        if not 100 <= head.status <= 599 or head.is_informational != is_informational:
            raise RemoteProtocolError(f"response status {head.status} with that flag")
        return head


def _pairs(fields: tuple[bytes, ...], start: int) -> Headers:
    it = iter(fields[start:])
    return tuple(zip(it, it, strict=True))
