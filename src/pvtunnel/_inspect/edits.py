"""A replay's optional edits: the JSON body of ``POST /inspect/api/requests/{id}/replay``.

```json
{"method": "PUT", "target": "/items/7", "headers": [["Accept", "text/plain"]],
 "body": "text, sent as UTF-8"}
```

Every key is optional; ``body_base64`` may stand for ``body`` to send bytes. The
headers, when given, replace the captured ones whole. Whatever is left out comes
from the captured request. The new request is framed afresh: its
``Content-Length`` is the length of the body it carries (``Transfer-Encoding``
goes), since an edited body rarely keeps the old length.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Final

import attrs
import h11

from pvtunnel._errors import EditError
from pvtunnel._wire.heads import Headers, RequestHead

_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
# Upgrades and CONNECT turn into raw byte streams: a replay is one request and
# one response, shown whole.
_NOT_REPLAYABLE_HEADERS: Final = frozenset({b"upgrade"})
_KEYS: Final = frozenset({"method", "target", "headers", "body", "body_base64"})


@attrs.frozen(kw_only=True)
class Edits:
    method: bytes | None = None
    target: bytes | None = None
    headers: Headers | None = None
    body: bytes | None = None


def parse_edits(data: bytes) -> Edits:
    """Read a replay's JSON body (empty: no edits).

    Raises:
        EditError: not a JSON object of the documented keys and types.
    """
    if not data.strip():
        return Edits()
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EditError(f"the body is not JSON: {exc}") from None
    except RecursionError:
        # How the json module answers deep nesting ("[[[[..."), which a body of
        # the allowed size holds easily.
        raise EditError("the body is JSON nested too deep") from None
    if not isinstance(document, dict):
        raise EditError("expected a JSON object of edits")
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        raise EditError(f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    if "body" in document and "body_base64" in document:
        raise EditError("give body or body_base64, not both")
    return Edits(
        method=_optional_text(document, "method"),
        target=_optional_text(document, "target"),
        headers=_headers(document.get("headers")),
        body=_body(document),
    )


def _optional_text(document: dict[str, object], key: str) -> bytes | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise EditError(f"{key}: expected a non-empty string")
    return _latin1(value, key)


def _latin1(value: str, where: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise EditError(f"{where}: only ISO-8859-1 characters can go in a request head") from None


def _headers(value: object) -> Headers | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise EditError("headers: expected a list of [name, value] pairs")
    pairs: list[tuple[bytes, bytes]] = []
    for index, pair in enumerate(value):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(item, str) for item in pair)
        ):
            raise EditError(f"headers[{index}]: expected a [name, value] pair of strings")
        name, text = pair
        pairs.append((_latin1(name, f"headers[{index}]"), _latin1(text, f"headers[{index}]")))
    return tuple(pairs)


def _body(document: dict[str, object]) -> bytes | None:
    if "body" in document:
        body = document["body"]
        if not isinstance(body, str):
            raise EditError("body: expected a string (body_base64 for bytes)")
        return body.encode("utf-8")
    if "body_base64" in document:
        encoded = document["body_base64"]
        if not isinstance(encoded, str):
            raise EditError("body_base64: expected a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise EditError("body_base64: not valid base64") from None
    return None


def edited_request(original: RequestHead, body: bytes, edits: Edits) -> tuple[RequestHead, bytes]:
    """The request a replay sends: ``original`` with ``edits`` applied, framed afresh.

    Raises:
        EditError: the result is not a request h11 would send, or it would turn
            into a raw stream (CONNECT, Upgrade).
    """
    method = original.method if edits.method is None else edits.method
    target = original.target if edits.target is None else edits.target
    headers = original.headers if edits.headers is None else edits.headers
    if edits.body is not None:
        body = edits.body
    if method.upper() == b"CONNECT" or any(
        name.lower() in _NOT_REPLAYABLE_HEADERS for name, _ in headers
    ):
        raise EditError("CONNECT and Upgrade requests become raw streams and cannot be replayed")
    framed = [(name, value) for name, value in headers if name.lower() not in _FRAMING]
    if body or method in (b"POST", b"PUT", b"PATCH"):
        framed.append((b"Content-Length", b"%d" % len(body)))
    try:
        h11.Request(method=method, target=target, headers=framed)
    except h11.LocalProtocolError as exc:
        raise EditError(f"not a valid request: {exc}") from None
    head = RequestHead(route=original.route, method=method, target=target, headers=tuple(framed))
    return head, body
