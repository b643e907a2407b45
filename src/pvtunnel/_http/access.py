"""Reading the external credential a client presents (SECURITY.md, "The three controls").

Pure parsing only; the comparison itself is `Secret.matches`, constant time.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

PROXY_AUTHENTICATE = (b"Proxy-Authenticate", b'Basic realm="pvtunnel"')


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token in ``Proxy-Authorization``: ``Bearer <token>`` or Basic ``<any>:<token>``.

    Returns None when the header is missing or malformed, which the caller answers
    with 407 like a wrong token, so a probe learns nothing from the difference.
    """
    for name, value in headers:
        if name.lower() != b"proxy-authorization":
            continue
        scheme, _, credentials = value.strip().partition(b" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == b"bearer" and credentials:
            return credentials
        if scheme == b"basic" and credentials:
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return None
            _, sep, password = decoded.partition(b":")
            return password if sep else None
        return None
    return None
