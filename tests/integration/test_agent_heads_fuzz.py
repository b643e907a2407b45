"""Response heads from a hostile agent through a real server (issue 20, the fuzz target).

The agent (`tests.integration.hostile`, frames by hand) answers each request with
heads hypothesis makes up: any status protocol.md lets through, reasons and fields
with CR, LF, NUL, ESC, colons, blanks and obs-text, repeated or hop-by-hop names,
informational heads before the final one. The client sends its requests one after
another on one kept-alive connection and reads raw bytes. Whatever the agent sent:

- the bytes parse (a fresh h11 client) as responses, one per request at most, with
  nothing left over: no head can smuggle a second response (response splitting);
- each response is the agent's final status or 502, and a head with CR or LF in
  its reason is always 502;
- the connection ends early only while or after a response the server had to cut
  (its body did not match its framing), never before any response at all.

Each example runs its own server and agent (a few milliseconds);
fuzz/targets/agent_heads.py runs the same property for longer.
"""

from __future__ import annotations

from typing import Final

import attrs
import h11
import trio
from hypothesis import example, given, strategies as st

from tests.integration.harness import TOKEN, start_server
from tests.integration.hostile import DATA, END, HostileAgent, frame, response_head

EXAMPLE_LIMIT_S: Final = 10
REQUEST: Final = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
# Bytes that break HTTP heads, and some that are fine there.
_NASTY: Final = b'\r\n\x00\x1b\x7f\t :;,"\x80\xff'
_NAMES: Final = (
    b"content-length",
    b"Content-Length",
    b"transfer-encoding",
    b"connection",
    b"upgrade",
    b"via",
    b"set-cookie",
    b"x-a",
    b"",
)


def _text(max_size: int) -> st.SearchStrategy[bytes]:
    plain = st.binary(max_size=max_size).map(lambda b: bytes(c % 95 + 32 for c in b))
    nasty = st.lists(st.sampled_from([bytes([c]) for c in _NASTY]), max_size=4).map(b"".join)
    return st.one_of(
        plain,
        st.tuples(plain, nasty, plain).map(b"".join),
        st.sampled_from([b"OK", b"HTTP/1.1 200 OK", b"OK\r\nContent-Length: 0\r\n\r\n"]),
    )


@attrs.frozen
class Head:
    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]

    @property
    def is_informational(self) -> bool:
        return 100 <= self.status < 200 and self.status != 101

    def encode(self, stream_id: int) -> bytes:
        return response_head(
            stream_id,
            b"%d" % self.status,
            self.reason,
            self.fields,
            informational=self.is_informational,
        )


def _heads(statuses: st.SearchStrategy[int]) -> st.SearchStrategy[Head]:
    names = st.one_of(st.sampled_from(_NAMES), _text(12))
    values = st.one_of(
        st.sampled_from([b"0", b"5", b"close", b"chunked", b"00", b"5, 5"]), _text(24)
    )
    return st.builds(
        Head,
        status=statuses,
        reason=_text(40),
        fields=st.lists(st.tuples(names, values), max_size=4).map(tuple),
    )


@attrs.frozen
class Reply:
    """What the agent sends for one request: informational heads, a final head, a body."""

    informational: tuple[Head, ...]
    final: Head
    body: bytes

    def frames(self, stream_id: int) -> bytes:
        parts = [head.encode(stream_id) for head in (*self.informational, self.final)]
        if self.body:
            parts.append(frame(DATA, stream_id, self.body))
        parts.append(frame(END, stream_id))
        return b"".join(parts)


def replies() -> st.SearchStrategy[Reply]:
    informational = _heads(st.sampled_from([100, 102, 103, 199]))
    final = _heads(
        st.one_of(st.sampled_from([101, 200, 204, 304, 404, 502]), st.integers(200, 599))
    )
    return st.builds(
        Reply,
        informational=st.lists(informational, max_size=2).map(tuple),
        final=final,
        body=st.sampled_from([b"", b"hello", b"x" * 300]),
    )


async def _answer(agent: HostileAgent, answers: list[Reply]) -> None:
    for reply in answers:
        request = await agent.receive_request()
        await agent.send(reply.frames(request.stream_id))


async def _converse(answers: list[Reply]) -> tuple[bytes, int]:
    """Run a server and the agent; send requests one by one. (bytes read, requests sent)."""
    received = bytearray()
    sent = 0
    with trio.fail_after(EXAMPLE_LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            async with await HostileAgent.connect(running.addresses.internal, TOKEN) as agent:
                nursery.start_soon(_answer, agent, answers)
                stream = await trio.open_tcp_stream("127.0.0.1", running.port)
                async with stream:
                    closed = False
                    while sent < len(answers) and not closed:
                        await stream.send_all(REQUEST)
                        sent += 1
                        while not closed and len(_parse(bytes(received)).complete) < sent:
                            try:
                                chunk = await stream.receive_some(65536)
                            except trio.BrokenResourceError:
                                chunk = b""
                            closed = not chunk
                            received += chunk
                nursery.cancel_scope.cancel()
    return bytes(received), sent


@attrs.frozen
class Parsed:
    complete: list[tuple[int, bytes]]  # (status, reason) of each whole response
    rest: bytes  # bytes after the last whole response that h11 did not take
    cut: bool = False  # a response head came, its body did not (all of it)


def _parse(data: bytes) -> Parsed:
    """The whole responses at the start of ``data`` (h11 raises if they are not HTTP)."""
    conn = h11.Connection(h11.CLIENT)
    if data:
        conn.receive_data(data)
    complete: list[tuple[int, bytes]] = []
    while True:
        conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"app")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = conn.next_event()
        if event is h11.NEED_DATA:
            return Parsed(complete, conn.trailing_data[0])
        assert isinstance(event, h11.Response), event
        while isinstance(item := conn.next_event(), h11.Data):
            pass
        if item is h11.NEED_DATA:
            return Parsed(complete, conn.trailing_data[0], cut=True)
        assert isinstance(item, h11.EndOfMessage), item
        complete.append((event.status_code, event.reason))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return Parsed(complete, conn.trailing_data[0])
        conn.start_next_cycle()


def check_agent_heads(answers: list[Reply]) -> None:
    received, sent = trio.run(_converse, answers)
    parsed = _parse(received)
    # At most one response per request, and nothing after them but a cut one's start.
    assert len(parsed.complete) <= sent, (received, answers)
    if len(parsed.complete) < sent:
        # The server closed early: only while or after relaying a response whose body
        # broke its own framing (a cut body, or a body on a 204), never with no
        # response at all, and never after a head with CR or LF in its reason.
        started = parsed.cut or parsed.rest.startswith(b"HTTP/1.1 ")
        assert started or parsed.complete, (received, answers)
        cut = answers[len(parsed.complete) - (0 if started else 1)]
        assert b"\r" not in cut.final.reason, received
        assert b"\n" not in cut.final.reason, received
    else:
        assert parsed.rest == b"", received
    for (status, _), reply in zip(parsed.complete, answers, strict=False):
        assert status in (reply.final.status, 502), (status, reply)
        heads = (*reply.informational, reply.final)
        if any(b"\r" in head.reason or b"\n" in head.reason for head in heads):
            assert status == 502, (status, reply)


SPLIT: Final = Reply(
    informational=(),
    final=Head(200, b"OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK", ()),
    body=b"",
)


@example(answers=[SPLIT, Reply((), Head(200, b"OK", ((b"content-length", b"5"),)), b"hello")])
@example(answers=[Reply((), Head(101, b"Switching", ()), b"")])
@example(answers=[Reply((), Head(200, b"", ((b"content-length", b"5"),)), b"")])
@given(answers=st.lists(replies(), min_size=1, max_size=3))
def test_hostile_agent_heads_give_one_response_per_request(answers: list[Reply]) -> None:
    check_agent_heads(answers)
