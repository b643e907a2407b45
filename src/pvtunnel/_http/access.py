"""Reading the external credential a client presents (SECURITY.md, "The three controls").

Pure parsing only; the comparison itself is `Secret.matches`, constant time.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

PROXY_AUTHENTICATE = (b"Proxy-Authenticate", b'Basic realm="pvtunnel"')


def basic_credentials(value: bytes) -> bytes | None:
    """What a ``Basic <base64>`` credential value decodes to (``user:password``,
    RFC 7617); None for another scheme or base64 that does not decode."""
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        return base64.b64decode(credentials.strip(), validate=True)
    except ValueError:  # binascii.Error
        return None


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token in ``Proxy-Authorization``: ``Bearer <token>`` or Basic ``<any>:<token>``.

    Returns None when the header is missing or malformed, which the caller answers
    with 407 like a wrong token, so a probe learns nothing from the difference.
    """
    for name, value in headers:
        if name.lower() != b"proxy-authorization":
            continue
        scheme, _, credentials = value.strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() == b"bearer" and credentials:
            return credentials
        decoded = basic_credentials(value)
        if decoded is None:
            return None
        _, sep, password = decoded.partition(b":")
        return password if sep else None
    return None
