"""The request inspector on a real server, agent and upstream: API, events, replay, access.

Every request goes through the tunnel on 127.0.0.1; the inspector's API is read
over the agent's admin listener like a script or the page would.
"""

from __future__ import annotations

import base64
import json
import logging
import tracemalloc
from typing import TYPE_CHECKING, Any

import attrs
import h11
import pytest
import trio
import trio.testing

from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    InspectConfig,
    Secret,
    with_agent_overrides,
)
from pvtunnel._errors import FieldError
from pvtunnel._trio import inspect_http
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.inspector import BUSY_LOG_EVERY_S
from tests.integration.admin_probe import scrape
from tests.integration.client import Client, Reply, fetch
from tests.integration.echo import TcpEcho, open_connect
from tests.integration.harness import (
    TOKEN,
    Running,
    server_config,
    start_agent,
    start_server,
    start_upstream,
)
from tests.integration.upstream import RecordingUpstream

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pvtunnel._trio.inspector import Inspector

LIMIT_S = 20
ADMIN_TOKEN = "admin-token-for-inspector-tests"
JSON_POST = ((b"content-type", b"application/json"),)


@attrs.define
class Inspected:
    running: Running
    upstream: RecordingUpstream
    agent: TunnelAgent
    admin: tuple[str, int]

    async def get(self, path: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> Reply:
        host, port = self.admin
        async with await Client.connect(port, host) as client:
            return await client.request(b"GET", path, host=b"127.0.0.1:%d" % port, headers=headers)

    @property
    def inspector(self) -> Inspector:
        assert self.agent.inspector is not None
        return self.agent.inspector

    async def record_first(self) -> Any:
        """Send ``GET /first`` through the tunnel; its exchange, the only one recorded."""
        await fetch(self.running.port, b"GET", b"/first")
        (first,) = await self.get_json(b"/inspect/api/requests")
        return first

    async def get_json(self, path: bytes) -> Any:
        reply = await self.get(path)
        assert reply.status == 200, reply
        assert reply.header(b"content-type") == b"application/json"
        return json.loads(reply.body)

    async def replay(
        self, exchange_id: int, edits: object = None, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Reply:
        host, port = self.admin
        body = b"" if edits is None else json.dumps(edits).encode()
        async with await Client.connect(port, host) as client:
            return await client.request(
                b"POST",
                b"/inspect/api/requests/%d/replay" % exchange_id,
                host=b"127.0.0.1:%d" % port,
                headers=[*JSON_POST, *headers],
                body=body,
            )


async def start_inspected(
    nursery: trio.Nursery,
    *,
    inspect: InspectConfig | None = None,
    admin_token: str | None = None,
    external_token: str | None = None,
) -> Inspected:
    external = {"token": Secret(external_token)} if external_token else None
    running = await start_server(nursery, server_config(external=external))
    upstream, port = await start_upstream(nursery, "svc")
    token = Secret(admin_token) if admin_token else None
    agent, status, _ = await start_agent(
        nursery,
        running,
        {"app": port},
        admin=AdminConfig(port=0, token=token),
        inspect=inspect or InspectConfig(enabled=True),
    )
    assert status.admin is not None
    return Inspected(running=running, upstream=upstream, agent=agent, admin=status.admin)


def body_of(document: dict[str, Any]) -> bytes:
    return base64.b64decode(document["body"]["base64"])


async def test_the_api_lists_newest_first_and_shows_heads_and_bodies() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            port = inspected.running.port
            assert (await fetch(port, b"GET", b"/first?q=1")).status == 200
            reply = await fetch(port, b"POST", b"/echo", body=b'{"n": 1}')
            assert reply.body == b'{"n": 1}'
            entries = await inspected.get_json(b"/inspect/api/requests")
            assert [entry["target"] for entry in entries] == ["/echo", "/first?q=1"]
            echo = entries[0]
            assert set(echo) >= {
                "id",
                "time",
                "route",
                "method",
                "target",
                "host",
                "status",
                "duration_ms",
                "request_bytes",
                "response_bytes",
                "replay_of",
            }
            assert echo["route"] == "app"
            assert echo["method"] == "POST"
            assert echo["host"] == "app"
            assert echo["status"] == 200
            assert echo["request_bytes"] == echo["response_bytes"] == 8
            assert echo["replay_of"] is None
            assert echo["duration_ms"] >= 0
            detail = await inspected.get_json(b"/inspect/api/requests/%d" % echo["id"])
            assert body_of(detail["request"]) == b'{"n": 1}'
            assert body_of(detail["response"]) == b'{"n": 1}'
            assert ["x-upstream", "svc"] in detail["response"]["headers"]
            assert ["host", "app"] in [[n.lower(), v] for n, v in detail["request"]["headers"]]
            assert detail["timing"]["response_head_ms"] <= detail["timing"]["duration_ms"]
            missing = await inspected.get(b"/inspect/api/requests/999")
            assert missing.status == 404
            nursery.cancel_scope.cancel()


async def test_replay_resends_through_the_agent_with_edits() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            await fetch(inspected.running.port, b"POST", b"/echo", body=b"original")
            (first,) = await inspected.get_json(b"/inspect/api/requests")
            reply = await inspected.replay(first["id"])
            assert reply.status == 200, reply
            again = json.loads(reply.body)
            assert again["replay_of"] == first["id"]
            assert body_of(again["response"]) == b"original"
            reply = await inspected.replay(
                first["id"], {"target": "/echo?edited", "body": "changed", "method": "PUT"}
            )
            edited = json.loads(reply.body)
            assert edited["status"] == 200
            assert body_of(edited["response"]) == b"changed"
            sent = inspected.upstream.requests
            assert [(r.method, r.target, r.body) for r in sent] == [
                (b"POST", b"/echo", b"original"),
                (b"POST", b"/echo", b"original"),
                (b"PUT", b"/echo?edited", b"changed"),
            ]
            assert sent[2].header(b"content-length") == b"7"
            entries = await inspected.get_json(b"/inspect/api/requests")
            assert [(e["id"], e["replay_of"]) for e in entries] == [
                (edited["id"], first["id"]),
                (again["id"], first["id"]),
                (first["id"], None),
            ]
            bad = await inspected.replay(first["id"], {"method": "CONNECT"})
            assert bad.status == 400
            assert "cannot be replayed" in json.loads(bad.body)["error"]
            assert (await inspected.replay(12345)).status == 404
            nursery.cancel_scope.cancel()


async def test_replays_past_the_limit_are_refused_at_once() -> None:
    """Each replay holds an upstream connection and its body until its answer ends:
    past ``max_replays`` in flight, one is refused with 429 and Retry-After, before
    its edits are read and without reaching the upstream, and its place comes back
    when a replay ends."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(
                nursery, inspect=InspectConfig(enabled=True, max_replays=2)
            )
            inspector = inspected.inspector
            first = await inspected.record_first()
            held: list[Reply] = []

            async def held_replay() -> None:
                held.append(await inspected.replay(first["id"], {"target": "/hold"}))

            for _ in range(2):
                nursery.start_soon(held_replay)
            while inspected.upstream.holding < 2:
                await trio.testing.wait_all_tasks_blocked()
            refused = await inspected.replay(first["id"], {"target": "/refused"})
            assert refused.status == 429, refused
            assert refused.header(b"retry-after") == b"1"
            assert refused.body.count(b"\n") == 1
            assert "too many replays at once (at most 2)" in json.loads(refused.body)["error"]
            # Refused before its edits are read, the answer still reaches a client
            # that sends them whole first (they are read away after it, not reset).
            large = await inspected.replay(first["id"], {"body": "x" * 4 * 1024 * 1024})
            assert large.status == 429, large
            assert [r.target for r in inspected.upstream.requests] == [
                b"/first",
                b"/hold",
                b"/hold",
            ]
            assert len(await inspected.get_json(b"/inspect/api/requests")) == 3
            inspected.upstream.release.set()
            while len(held) < 2:
                await trio.testing.wait_all_tasks_blocked()
            assert [reply.status for reply in held] == [200, 200]
            assert inspector.replays == 0
            again = await inspected.replay(first["id"])
            assert again.status == 200, again
            assert json.loads(again.body)["status"] == 200
            nursery.cancel_scope.cancel()


async def test_replays_refused_are_counted_by_reason() -> None:
    """Each refusal a replay can get counts once under its reason, from zero on the
    first scrape; a replay served, and a request refused before it is known to be a
    replay (not sent as JSON), count nowhere."""
    inspect = InspectConfig(enabled=True, max_replays=1, max_body_bytes=1000)
    payload = b"x" * 2000
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery, inspect=inspect)

            async def refused() -> dict[str, float]:
                page = await scrape(inspected.admin)
                return {
                    dict(labels)["reason"]: value
                    for labels, value in page.series(
                        "pvtunnel_inspector_replays_refused_total"
                    ).items()
                }

            assert await refused() == dict.fromkeys(
                ("busy", "not_found", "bad_edits", "not_replayable"), 0
            )
            assert (await fetch(inspected.running.port, b"POST", b"/echo", body=payload)).body
            (cut,) = await inspected.get_json(b"/inspect/api/requests")
            whole = {"body": payload.decode()}
            served = await inspected.replay(cut["id"], whole)
            assert served.status == 200, served
            held: list[Reply] = []

            async def held_replay() -> None:
                held.append(await inspected.replay(cut["id"], {**whole, "target": "/hold"}))

            nursery.start_soon(held_replay)
            while inspected.upstream.holding < 1:
                await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):
                assert (await inspected.replay(cut["id"], whole)).status == 429
            inspected.upstream.release.set()
            while not held:
                await trio.testing.wait_all_tasks_blocked()
            assert held[0].status == 200, held
            assert (await inspected.replay(12345)).status == 404
            connect = {**whole, "method": "CONNECT"}
            assert (await inspected.replay(cut["id"], connect)).status == 400
            assert (await inspected.replay(cut["id"], {"body": 7})).status == 400
            assert (await inspected.replay(cut["id"])).status == 409
            host, port = inspected.admin
            async with await Client.connect(port, host) as client:
                not_json = await client.request(
                    b"POST",
                    b"/inspect/api/requests/%d/replay" % cut["id"],
                    host=b"127.0.0.1:%d" % port,
                    headers=[(b"content-type", b"text/plain")],
                    body=b"{}",
                )
            assert not_json.status == 415, not_json
            assert await refused() == {
                "busy": 2,
                "not_found": 1,
                "bad_edits": 2,
                "not_replayable": 1,
            }
            nursery.cancel_scope.cancel()


async def test_a_flood_of_replays_past_the_limit_is_logged_once_per_interval(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay refused for the limit is a warning (the limit may be too low), but a
    script retrying in a loop must not write a line per try: the first of a burst is
    logged, the rest are counted, and how many goes out with the next line once
    `BUSY_LOG_EVERY_S` has passed. Neither the admin token nor the edits are logged.

    The clock stands still unless the test moves it: the jump is the only time
    that passes, short of a heartbeat timeout."""
    caplog.set_level(logging.INFO, logger="pvtunnel")
    auth = ((b"authorization", b"Bearer " + ADMIN_TOKEN.encode()),)
    edits = {"target": "/hold", "body": "edits-that-stay-out-of-the-log"}
    async with trio.open_nursery() as nursery:
        inspected = await start_inspected(
            nursery, inspect=InspectConfig(enabled=True, max_replays=1), admin_token=ADMIN_TOKEN
        )
        await fetch(inspected.running.port, b"GET", b"/first")
        (first,) = json.loads((await inspected.get(b"/inspect/api/requests", auth)).body)

        async def held_replay() -> None:
            assert (await inspected.replay(first["id"], edits, auth)).status == 200

        nursery.start_soon(held_replay)
        while inspected.upstream.holding < 1:
            await trio.testing.wait_all_tasks_blocked()

        def warnings() -> list[str]:
            return [
                record.getMessage()
                for record in caplog.records
                if record.name == "pvtunnel.admin" and record.levelno == logging.WARNING
            ]

        said = (
            f"inspector replay of request {first['id']} refused: max_replays (1) already in flight"
        )
        for _ in range(5):
            assert (await inspected.replay(first["id"], edits, auth)).status == 429
        assert warnings() == [said]
        mock_clock.jump(BUSY_LOG_EVERY_S)
        assert (await inspected.replay(first["id"], edits, auth)).status == 429
        assert warnings() == [said, f"{said}; 4 more refused since the last such line"]
        page = await scrape(inspected.admin, token=ADMIN_TOKEN)
        assert page.value("pvtunnel_inspector_replays_refused_total", reason="busy") == 6
        assert ADMIN_TOKEN not in caplog.text
        assert edits["body"] not in caplog.text
        inspected.upstream.release.set()
        while inspected.inspector.replays:
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_a_replays_answer_is_kept_within_the_captures_bounds() -> None:
    """A replay is recorded in the capture like any exchange: its answer, however
    long, is kept as a preview cut at ``max_body_bytes``, counted in ``max_bytes``."""
    inspect = InspectConfig(enabled=True, max_bytes=65536, max_body_bytes=1000)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery, inspect=inspect)
            inspector = inspected.inspector
            first = await inspected.record_first()
            reply = await inspected.replay(first["id"], {"target": "/bytes/1000000"})
            replayed = json.loads(reply.body)
            assert replayed["response_bytes"] == 1000000
            assert replayed["response"]["body"]["cut"] is True
            assert len(body_of(replayed["response"])) == 1000
            assert inspector.capture.bytes <= inspect.max_bytes
            nursery.cancel_scope.cancel()


async def test_a_replay_in_flight_holds_no_copy_of_its_edits() -> None:
    """Up to ``max_replays`` replays wait for their answers at once, each with edits
    of up to 8 MiB: while one waits, the body it sends is held once (as the edits
    hold it), not also as the JSON it came in."""
    body = "x" * 4 * 1024 * 1024
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            first = await inspected.record_first()
            tracemalloc.start()
            try:
                done = trio.Event()

                async def held_replay() -> None:
                    await inspected.replay(first["id"], {"target": "/hold", "body": body})
                    done.set()

                nursery.start_soon(held_replay)
                while inspected.upstream.holding < 1:
                    await trio.testing.wait_all_tasks_blocked()
                snapshot = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            held = snapshot.filter_traces([tracemalloc.Filter(True, inspect_http.__file__)])
            assert sum(stat.size for stat in held.statistics("filename")) < 256 * 1024
            inspected.upstream.release.set()
            await done.wait()
            nursery.cancel_scope.cancel()


async def test_a_replay_whose_client_leaves_ends_and_gives_its_place_back() -> None:
    """A replay waits up to its deadline for its answer; once its client hangs up
    nobody will read it, so the replay ends then, recorded as cut short, and its
    place among ``max_replays`` is free at once, not a minute later."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(
                nursery, inspect=InspectConfig(enabled=True, max_replays=1)
            )
            inspector = inspected.inspector
            first = await inspected.record_first()
            client = trio.CancelScope()

            async def leaving_client() -> None:
                with client:
                    await inspected.replay(first["id"], {"target": "/hold"})
                assert client.cancelled_caught, "the replay was answered"

            nursery.start_soon(leaving_client)
            while inspected.upstream.holding < 1:
                await trio.testing.wait_all_tasks_blocked()
            assert inspector.replays == 1
            client.cancel()  # its connection closes while the replay waits
            while inspector.replays:
                await trio.testing.wait_all_tasks_blocked()
            listed = await inspected.get_json(b"/inspect/api/requests")
            (cut,) = [entry for entry in listed if entry["replay_of"] == first["id"]]
            assert cut["state"] == "failed"
            assert cut["error"] == "cancelled before its answer ended"
            # Its place is free: the next replay is served, not refused.
            inspected.upstream.release.set()
            again = await inspected.replay(first["id"])
            assert again.status == 200, again
            nursery.cancel_scope.cancel()


async def test_failures_are_recorded_and_so_is_a_failed_replay() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            # Nothing listens on port 1: every request to the route fails to connect.
            _, status, _ = await start_agent(
                nursery,
                running,
                {"app": 1},
                admin=AdminConfig(port=0),
                inspect=InspectConfig(enabled=True),
            )
            assert (await fetch(running.port, b"GET", b"/x")).status == 502
            assert status.admin is not None
            host, port = status.admin
            async with await Client.connect(port, host) as client:
                listing = await client.request(b"GET", b"/inspect/api/requests", host=b"localhost")
            (entry,) = json.loads(listing.body)
            async with await Client.connect(port, host) as client:
                replayed = await client.request(
                    b"POST",
                    b"/inspect/api/requests/%d/replay" % entry["id"],
                    host=b"localhost",
                    headers=JSON_POST,
                    body=b"{}",
                )
            for failed in (entry, json.loads(replayed.body)):
                assert failed["state"] == "failed"
                assert failed["status"] is None
                assert "UPSTREAM_CONNECT_FAILED" in failed["error"]
            nursery.cancel_scope.cancel()


async def test_a_client_that_leaves_mid_request_is_recorded_as_failed() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            client = await Client.connect(inspected.running.port)
            await client._send(
                h11.Request(method=b"GET", target=b"/watch", headers=[(b"host", b"app")])
            )
            await client._send(h11.EndOfMessage())
            await inspected.upstream.hold_started.wait()
            await client.stream.aclose()
            await inspected.upstream.hung_up.wait()  # the agent gave the request up
            await trio.testing.wait_all_tasks_blocked()
            (entry,) = await inspected.get_json(b"/inspect/api/requests")
            assert (entry["target"], entry["state"], entry["status"]) == ("/watch", "failed", None)
            assert "went away" in entry["error"]
            nursery.cancel_scope.cancel()


async def test_cut_bodies_are_marked_and_replay_needs_the_body_again() -> None:
    inspect = InspectConfig(enabled=True, max_body_bytes=1000)
    payload = bytes(range(256)) * 10
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery, inspect=inspect)
            assert (await fetch(inspected.running.port, b"POST", b"/echo", body=payload)).body
            (entry,) = await inspected.get_json(b"/inspect/api/requests")
            detail = await inspected.get_json(b"/inspect/api/requests/%d" % entry["id"])
            for side in ("request", "response"):
                body = detail[side]["body"]
                assert (body["size"], body["cut"]) == (2560, True)
                assert body_of(detail[side]) == payload[:1000]
            refused = await inspected.replay(entry["id"])
            assert refused.status == 409
            assert "give the body" in json.loads(refused.body)["error"]
            resent = await inspected.replay(
                entry["id"], {"body_base64": base64.b64encode(payload).decode()}
            )
            assert json.loads(resent.body)["response_bytes"] == 2560
            assert inspected.upstream.requests[-1].body == payload
            nursery.cancel_scope.cancel()


async def test_a_body_that_broke_off_is_not_replayed_as_if_whole() -> None:
    """A client that sends 12 of its 16 body bytes and leaves: the preview holds all
    that came, uncut, but a replay of it would send a shorter request as a whole
    one (``amount=100`` as ``amount=10``). It needs the body given again."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", inspected.running.port)
            async with stream:
                await stream.send_all(
                    b'POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 16\r\n\r\n{"amount": 1'
                )
                while not (entries := await inspected.get_json(b"/inspect/api/requests")) or (
                    entries[0]["request_bytes"] < 12
                ):
                    await trio.testing.wait_all_tasks_blocked()
            while (await inspected.get_json(b"/inspect/api/requests"))[0]["state"] == "open":
                await trio.testing.wait_all_tasks_blocked()
            (entry,) = await inspected.get_json(b"/inspect/api/requests")
            assert entry["state"] == "failed"
            refused = await inspected.replay(entry["id"])
            assert refused.status == 409
            assert "give the body" in json.loads(refused.body)["error"]
            assert inspected.upstream.requests == []
            nursery.cancel_scope.cancel()


async def test_the_event_stream_announces_requests_as_they_come_and_go() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(
                nursery, inspect=InspectConfig(enabled=True, max_requests=1)
            )
            host, port = inspected.admin
            events = EventReader(await trio.open_tcp_stream(host, port))
            await events.open(b"127.0.0.1:%d" % port)
            assert events.content_type == b"text/event-stream; charset=utf-8"
            await fetch(inspected.running.port, b"GET", b"/one")
            kind, one = await events.next()
            assert (kind, one["target"], one["state"]) == ("exchange", "/one", "open")
            while one["state"] == "open":
                kind, one = await events.next()
            assert (kind, one["status"]) == ("exchange", 200)
            await fetch(inspected.running.port, b"GET", b"/two")
            kind, gone = await events.next()
            while kind == "exchange" and gone["id"] == one["id"]:  # a repeat of its last state
                kind, gone = await events.next()
            assert (kind, gone) == ("removed", {"id": one["id"]})
            kind, two = await events.next()
            assert (kind, two["target"]) == ("exchange", "/two")
            await events.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_page_that_closes_gives_its_place_back_at_once() -> None:
    # At most MAX_EVENT_STREAMS pages follow at once; a closed one held its place
    # until its next keepalive (15 s), and meanwhile new pages got 503.
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            inspector = inspected.inspector
            host, port = inspected.admin
            pages = []
            for _ in range(3):
                page = EventReader(await trio.open_tcp_stream(host, port))
                await page.open(b"127.0.0.1:%d" % port)
                pages.append(page)
            assert inspector.event_streams == 3
            for page in pages:
                await page.stream.aclose()
            # Once nothing more happens (no timer fires: a keepalive is 15 s off).
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert inspector.event_streams == 0
            nursery.cancel_scope.cancel()


class EventReader(Client):
    """Reads a server-sent event stream, one event at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.buffer = b""
        self.content_type: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []

    async def open(self, host: bytes) -> None:
        target = b"/inspect/api/events"
        await self._send(h11.Request(method=b"GET", target=target, headers=[(b"host", host)]))
        await self._send(h11.EndOfMessage())
        event = await self._next()
        assert isinstance(event, h11.Response), event
        assert event.status_code == 200
        self.content_type = dict(event.headers).get(b"content-type")
        self.headers = list(event.headers)

    async def next(self) -> tuple[str, dict[str, Any]]:
        while b"\n\n" not in self.buffer:
            event = await self._next()
            assert isinstance(event, h11.Data), event
            self.buffer += event.data
        message, self.buffer = self.buffer.split(b"\n\n", 1)
        fields = dict(
            line.split(b": ", 1) for line in message.split(b"\n") if not line.startswith(b":")
        )
        if b"event" not in fields:  # the opening retry hint
            return await self.next()
        return fields[b"event"].decode(), json.loads(fields[b"data"])


async def test_tokens_and_proxy_authorization_are_never_captured() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(
                nursery, external_token="external-token-abcdef", admin_token=ADMIN_TOKEN
            )
            headers = [
                (b"proxy-authorization", b"Bearer external-token-abcdef"),
                (b"x-copied", b"agent token " + TOKEN.encode()),
                (b"x-admin", ADMIN_TOKEN.encode()),
                (b"authorization", b"Bearer users-own-credential"),
                (b"cookie", b"session=abc"),
            ]
            reply = await fetch(inspected.running.port, b"GET", b"/secret", headers=headers)
            assert reply.status == 200
            auth = [(b"authorization", b"Bearer " + ADMIN_TOKEN.encode())]
            listing = await inspected.get(b"/inspect/api/requests", auth)
            (entry,) = json.loads(listing.body)
            shown = (await inspected.get(b"/inspect/api/requests/%d" % entry["id"], auth)).body
            assert b"external-token-abcdef" not in shown
            assert TOKEN.encode() not in shown
            assert ADMIN_TOKEN.encode() not in shown
            assert b"proxy-authorization" not in shown.lower()
            request_headers = json.loads(shown)["request"]["headers"]
            assert ["x-copied", "[redacted]"] in request_headers
            # The page masks these until clicked; the API gives them to the page.
            assert ["authorization", "Bearer users-own-credential"] in request_headers
            assert ["cookie", "session=abc"] in request_headers
            nursery.cancel_scope.cancel()


async def test_with_an_admin_token_the_inspector_asks_for_it() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery, admin_token=ADMIN_TOKEN)
            for path in (b"/inspect", b"/inspect/api/requests", b"/inspect/api/events"):
                refused = await inspected.get(path)
                assert refused.status == 401
                assert refused.header(b"www-authenticate") == b'Basic realm="pvtunnel inspector"'
            basic = b"Basic " + base64.b64encode(b"me:" + ADMIN_TOKEN.encode())
            page = await inspected.get(b"/inspect", [(b"authorization", basic)])
            assert page.status == 200
            assert page.header(b"content-type") == b"text/html; charset=utf-8"
            assert b'src="/inspect/inspect.js"' in page.body
            nursery.cancel_scope.cancel()


async def test_the_page_and_its_assets_are_served_from_package_data() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            for path, content_type in (
                (b"/inspect", b"text/html; charset=utf-8"),
                (b"/inspect/", b"text/html; charset=utf-8"),
                (b"/inspect/inspect.js", b"text/javascript; charset=utf-8"),
                (b"/inspect/inspect.css", b"text/css; charset=utf-8"),
            ):
                reply = await inspected.get(path)
                assert reply.status == 200
                assert reply.header(b"content-type") == content_type
                assert reply.body
                policy = reply.header(b"content-security-policy")
                assert policy is not None
                assert b"default-src 'none'" in policy
            # The listener's 404 names the inspector among the paths it serves.
            unknown = await inspected.get(b"/nope")
            assert unknown.status == 404
            assert b"/inspect" in unknown.body
            rebound = await Client.connect(inspected.admin[1], inspected.admin[0])
            async with rebound:
                reply = await rebound.request(b"GET", b"/inspect", host=b"attacker.example")
                assert reply.status == 403
            nursery.cancel_scope.cancel()


def assert_guarded(headers: Sequence[tuple[bytes, bytes]], what: object) -> None:
    """The answer can be neither sniffed into a page, nor framed, nor leak a referrer."""
    fields = dict(headers)
    policy = fields.get(b"content-security-policy", b"")
    assert b"default-src 'none'" in policy, what
    assert b"frame-ancestors 'none'" in policy, what
    assert fields.get(b"x-content-type-options") == b"nosniff", what
    assert fields.get(b"x-frame-options") == b"DENY", what
    assert fields.get(b"referrer-policy") == b"no-referrer", what


async def test_every_inspector_answer_carries_the_pages_guards() -> None:
    """Only the page and its assets carried them: the JSON answers, which hold what
    clients sent, and the refusals went without nosniff and frame-ancestors."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            inspected = await start_inspected(nursery)
            first = await inspected.record_first()
            for path in (
                b"/inspect",
                b"/inspect/inspect.js",
                b"/inspect/api/requests",
                b"/inspect/api/requests/%d" % first["id"],
                b"/inspect/api/requests/999",
                b"/inspect/nope",
                b"/inspect/api/requests/1/replay",
            ):
                reply = await inspected.get(path)
                assert_guarded(reply.headers, (path, reply.status))
            reply = await inspected.replay(first["id"], {"method": "GET"})
            assert reply.status == 200
            assert_guarded(reply.headers, "replay")
            host, port = inspected.admin
            async with await Client.connect(port, host) as client:
                reply = await client.request(b"GET", b"/inspect", host=b"attacker.example")
                assert reply.status == 403
                assert_guarded(reply.headers, "another host")
            events = EventReader(await trio.open_tcp_stream(host, port))
            async with events:
                await events.open(b"127.0.0.1:%d" % port)
                assert_guarded(events.headers, "events")
            nursery.cancel_scope.cancel()


async def test_connect_streams_are_recorded_without_their_bytes() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            echo = TcpEcho()
            echo_port = await nursery.start(echo.serve)
            _, status, _ = await start_agent(
                nursery,
                running,
                {"db": echo_port},
                admin=AdminConfig(port=0),
                inspect=InspectConfig(enabled=True),
            )
            stream, head = await open_connect(running, b"db:5432")
            assert head.startswith(b"HTTP/1.1 200 ")
            await stream.send_all(b"ping-pong")
            received = b""
            while len(received) < 9:
                received += await stream.receive_some(100)
            await stream.send_eof()
            assert await stream.receive_some(100) == b""
            await stream.aclose()
            # Both ends of the pipe have closed; once the agent is idle, the stream ended.
            await trio.testing.wait_all_tasks_blocked()
            assert status.admin is not None
            admin_host, admin_port = status.admin
            async with await Client.connect(admin_port, admin_host) as client:
                reply = await client.request(b"GET", b"/inspect/api/requests", host=b"localhost")
            (entry,) = json.loads(reply.body)
            assert (entry["kind"], entry["method"], entry["status"]) == ("connect", "CONNECT", 200)
            assert entry["state"] == "done"
            assert entry["request_bytes"] == entry["response_bytes"] == 9
            async with await Client.connect(admin_port, admin_host) as client:
                path = b"/inspect/api/requests/%d" % entry["id"]
                detail = json.loads((await client.request(b"GET", path, host=b"localhost")).body)
            for side in ("request", "response"):
                assert detail[side]["body"]["omitted"] is True
                assert detail[side]["body"]["base64"] == ""
            nursery.cancel_scope.cancel()


async def test_with_the_inspector_off_nothing_is_recorded() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            agent, status, _ = await start_agent(
                nursery, running, {"app": port}, admin=AdminConfig(port=0)
            )
            # The request path only tests this attribute: nothing is built or kept.
            assert agent.inspector is None
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            assert status.admin is not None
            host, admin_port = status.admin
            async with await Client.connect(admin_port, host) as client:
                reply = await client.request(b"GET", b"/inspect", host=b"localhost")
            assert reply.status == 404
            assert b"--inspect" in reply.body
            async with await Client.connect(admin_port, host) as client:
                unknown = await client.request(b"GET", b"/nope", host=b"localhost")
            assert unknown.status == 404
            assert b"/inspect" not in unknown.body
            nursery.cancel_scope.cancel()


def test_inspect_flag_opens_the_admin_listener_on_4040() -> None:
    config = AgentConfig(client_id="flags")
    assert config.admin is None
    assert not config.inspect.enabled
    on = with_agent_overrides(config, inspect=True)
    assert on.inspect.enabled
    assert on.admin == AdminConfig(port=4040, host="127.0.0.1")
    given = with_agent_overrides(config, inspect=True, admin_port=9100)
    assert given.admin == AdminConfig(port=9100)
    from_file = with_agent_overrides(attrs.evolve(config, inspect=InspectConfig(enabled=True)))
    assert from_file.admin == AdminConfig(port=4040)
    assert with_agent_overrides(config).admin is None


@pytest.mark.parametrize("value", ["yes", 1])
def test_inspect_enabled_must_be_a_boolean(value: object) -> None:
    with pytest.raises(FieldError, match="expected true or false"):
        InspectConfig(enabled=value)  # type: ignore[arg-type]
