"""The golden frames shown in protocol.md, and the annotated hex that shows them.

protocol.md marks each hex block with ``<!-- golden: NAME -->``; test_golden.py
checks that every block holds exactly ``encode`` of ``GOLDEN[NAME]`` (and the
worked example exactly what two real multiplexers send), so the document cannot
drift from the codec. After a deliberate wire change, regenerate the blocks with
``python -m tests.wire.golden`` and paste them in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from pvtunnel._errors import ErrorCode
from pvtunnel._wire import frames as fr
from pvtunnel._wire.frames import StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead

PROTOCOL_MD: Final = Path(__file__).resolve().parents[2] / "protocol.md"
_BLOCK: Final = re.compile(r"<!-- golden: (\S+) -->\n```[^\n]*\n(.*?)```", re.DOTALL)

S1: Final = StreamId(1)
WINDOW: Final = 512 * 1024
CONNECTION_WINDOW: Final = 16 * 1024 * 1024

EXAMPLE_REQUEST: Final = RequestHead(
    route="app",
    method=b"GET",
    target=b"/hello",
    headers=((b"host", b"app.example.com"), (b"x-forwarded-for", b"203.0.113.7")),
)
EXAMPLE_RESPONSE: Final = ResponseHead(
    status=200,
    reason=b"OK",
    headers=((b"content-type", b"text/plain"), (b"content-length", b"5")),
)
EXAMPLE_BODY: Final = b"hello"

# One message per entry: each is the frames one WebSocket message carries.
GOLDEN: Final[dict[str, tuple[fr.Frame, ...]]] = {
    "hello": (
        fr.Hello(
            versions=(1,),
            client_id="agent-1",
            routes=("app",),
            window=WINDOW,
            connection_window=CONNECTION_WINDOW,
        ),
    ),
    "accept": (
        fr.Accept(
            version=1,
            refused=(("db", "not allowed for this token"),),
            window=WINDOW,
            connection_window=CONNECTION_WINDOW,
        ),
    ),
    "reject": (fr.Reject(reason="no common version"),),
    "head": (fr.Head(stream_id=S1, fields=(b"app", b"GET", b"/", b"host", b"app")),),
    "head-informational": (
        fr.Head(stream_id=S1, fields=(b"100", b"Continue"), is_informational=True),
    ),
    "data": (fr.Data(stream_id=S1, data=b"hi"),),
    "end": (fr.End(stream_id=S1),),
    "reset": (fr.Reset(stream_id=S1, code=ErrorCode.UPSTREAM_TIMEOUT, reason="slow"),),
    "window": (fr.Window(stream_id=S1, increment=131072),),
    "window-connection": (fr.Window(stream_id=fr.CONNECTION_STREAM, increment=4194304),),
    "ping": (fr.Ping(payload=bytes(range(8))),),
    "pong": (fr.Pong(payload=bytes(range(8))),),
    "goaway": (fr.GoAway(last_stream_id=StreamId(7), code=ErrorCode.NO_ERROR, reason="bye"),),
    # The worked example: a GET and its 200, message by message.
    "example-hello": (
        fr.Hello(
            versions=(1,),
            client_id="agent-1",
            routes=("app",),
            window=WINDOW,
            connection_window=CONNECTION_WINDOW,
        ),
    ),
    "example-accept": (
        fr.Accept(version=1, refused=(), window=WINDOW, connection_window=CONNECTION_WINDOW),
    ),
    "example-request": (
        fr.Head(stream_id=S1, fields=tuple(EXAMPLE_REQUEST.to_fields())),
        fr.End(stream_id=S1),
    ),
    "example-response": (
        fr.Head(stream_id=S1, fields=tuple(EXAMPLE_RESPONSE.to_fields())),
        fr.Data(stream_id=S1, data=EXAMPLE_BODY),
        fr.End(stream_id=S1),
    ),
}


def document_blocks(text: str) -> dict[str, bytes]:
    """The bytes of every golden block in ``text``; ``#`` starts a comment."""
    blocks: dict[str, bytes] = {}
    for name, body in _BLOCK.findall(text):
        assert name not in blocks, f"golden block {name} appears twice"
        blocks[name] = bytes.fromhex("".join(line.split("#")[0] for line in body.splitlines()))
    return blocks


_REQUEST_ROLES: Final = ("route", "method", "target")
_RESPONSE_ROLES: Final = ("status", "reason")


def _hex(data: bytes) -> str:
    return " ".join(f"{byte:02x}" for byte in data)


def _line(data: bytes, note: str) -> str:
    return f"{_hex(data):<47}  # {note}"


def _text(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x23 else "." for b in data)


def _rows(data: bytes, note: str) -> list[str]:
    """``data`` in rows of 16 bytes, each noted with its text (``note`` on the first)."""
    rows = [data[i : i + 16] for i in range(0, len(data), 16)] or [b""]
    lines = [_line(rows[0], f"{note} {_text(rows[0])!r}".strip())]
    lines += [_line(row, f"  {_text(row)!r}") for row in rows[1:]]
    return lines


def annotate(frame: fr.Frame) -> list[str]:
    """One frame as annotated hex lines, as protocol.md shows them."""
    raw = fr.encode(frame)
    frame_type, flags, stream_id, length = fr.HEADER.unpack_from(raw)
    payload = raw[fr.HEADER_SIZE :]
    lines = [
        _line(raw[0:1], f"type {fr.FrameType(frame_type).name}"),
        _line(raw[1:2], f"flags {flags:#04x}"),
        _line(raw[2:6], f"stream {stream_id}"),
        _line(raw[6:10], f"payload length {length}"),
    ]
    match frame:
        case fr.Head():
            # An odd field count is a request head, an even one a response (4.4).
            roles = _REQUEST_ROLES if len(frame.fields) % 2 else _RESPONSE_ROLES
            offset = 0
            for index, field in enumerate(frame.fields):
                role = (
                    roles[index]
                    if index < len(roles)
                    else ("name", "value")[(index - len(roles)) % 2]
                )
                lines.append(_line(payload[offset : offset + 2], f"{role}: {len(field)} bytes"))
                if field:
                    lines += _rows(field, "")
                offset += 2 + len(field)
        case fr.Reset():
            lines.append(_line(payload[:4], f"code {frame.code.name}"))
            if frame.reason:
                lines += _rows(payload[4:], "reason")
        case fr.Window():
            lines.append(_line(payload, f"increment {frame.increment}"))
        case fr.GoAway():
            lines.append(_line(payload[:4], f"last stream ID {frame.last_stream_id}"))
            lines.append(_line(payload[4:5], f"code {frame.code.name}"))
            if frame.reason:
                lines += _rows(payload[5:], "reason")
        case fr.End():
            pass
        case fr.Hello() | fr.Accept():
            lines += _rows(payload, "JSON")
        case fr.Reject():
            lines += _rows(payload, "reason")
        case fr.Data():
            lines += _rows(payload, "body")
        case fr.Ping() | fr.Pong():
            lines += _rows(payload, "opaque")
    return lines


def render(name: str) -> str:
    """The protocol.md block for ``GOLDEN[name]``, marker included."""
    lines: list[str] = []
    for index, frame in enumerate(GOLDEN[name]):
        if index:
            lines.append("")
        lines += annotate(frame)
    return f"<!-- golden: {name} -->\n```text\n" + "\n".join(lines) + "\n```"


if __name__ == "__main__":
    for golden_name in GOLDEN:
        print(render(golden_name), end="\n\n")
