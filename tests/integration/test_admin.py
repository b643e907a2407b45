"""The admin listener of a real server and agent: /metrics, /ready, /live, /status.

Counters are checked after real traffic with prometheus-client's parser, against
exactly the requests sent. ``wait_all_tasks_blocked`` stands between a reply and a
scrape: the server counts a request right after its last byte went out, and a
test must not race that.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from pvtunnel._config import AdminConfig, Secret
from pvtunnel._logs import JsonFormatter
from pvtunnel._metrics import NO_ROUTE
from pvtunnel._trio.admin import serve_admin
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.agent_admin import AgentAdmin
from pvtunnel._trio.server import ServerAdmin, TunnelServer
from tests.integration.admin_probe import admin_get, scrape, status_of
from tests.integration.client import Client, Reply, fetch, raw_exchange
from tests.integration.harness import (
    TOKEN,
    Running,
    agent_config,
    server_config,
    start_agent,
    start_server,
    start_upstream,
)
from tests.integration.processes import Process, pvtunnel

if TYPE_CHECKING:
    from collections.abc import Mapping

LIMIT_S = 15
ADMIN_TOKEN = "admin-token-for-tests-0123"


async def start_admin_server(nursery: trio.Nursery, token: Secret | None = None) -> Running:
    config = attrs.evolve(server_config(), admin=AdminConfig(port=0, token=token))
    return await start_server(nursery, config)


async def test_metrics_count_exactly_the_traffic_sent() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_admin_server(nursery)
            admin = running.addresses.admin
            _, upstream_port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": upstream_port})
            before = await scrape(admin)
            assert before.series("pvtunnel_requests_total") == {}
            assert before.value("pvtunnel_connected_agents") == 1

            replies: list[Reply] = []
            async with await Client.connect(running.port) as client:
                for target in (b"/bytes/1000", b"/bytes/70000", b"/"):
                    replies.append(await client.request(b"GET", target))
                replies.append(await client.request(b"POST", b"/echo", body=b"x" * 5000))
                replies.append(
                    await client.request(b"POST", b"/echo", chunks=[b"a" * 10, b"b" * 20])
                )
                replies.append(await client.request(b"GET", b"/status/503"))
                missing = await client.request(b"GET", b"/", host=b"nobody-serves-this")
            assert [reply.status for reply in replies] == [200, 200, 200, 200, 200, 503]
            assert missing.status == 404

            after = await scrape(admin)
            requests = after.series("pvtunnel_requests_total")
            assert {labels: count for labels, count in requests.items() if count} == {
                (("route", "app"), ("status_class", "2xx")): 5,
                (("route", "app"), ("status_class", "5xx")): 1,
                (("route", NO_ROUTE), ("status_class", "4xx")): 1,
            }
            assert after.value("pvtunnel_request_body_bytes_total", route="app") == 5030
            assert after.value("pvtunnel_response_body_bytes_total", route="app") == sum(
                len(reply.body) for reply in replies
            )
            assert after.value("pvtunnel_response_body_bytes_total", route=NO_ROUTE) == 0
            assert after.value("pvtunnel_request_duration_seconds_count", route="app") == 6
            assert (
                after.value("pvtunnel_request_duration_seconds_bucket", route="app", le="+Inf") == 6
            )
            assert 0 < after.value("pvtunnel_request_duration_seconds_sum", route="app") < LIMIT_S
            assert after.value("pvtunnel_active_streams") == 0
            assert after.value("pvtunnel_agent_connects_total") == 1
            nursery.cancel_scope.cancel()


async def test_client_connections_and_refusals_are_counted() -> None:
    """The connection limit's 503s and the whitelist's 403s come before any request,
    so no request counter sees them: they have a counter of their own."""
    config = attrs.evolve(
        server_config(
            limits={"max_client_connections": 2}, external={"whitelisted_ips": ("127.0.0.1",)}
        ),
        admin=AdminConfig(port=0),
    )
    request = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            admin = running.addresses.admin
            held = [await trio.open_tcp_stream("127.0.0.1", running.port) for _ in range(2)]
            assert (await scrape(admin)).value("pvtunnel_client_connections") == 2
            answer = await raw_exchange(running.port, request)
            assert answer.startswith(b"HTTP/1.1 503 "), answer  # the third, past the limit
            for stream in held:
                await stream.aclose()
            outside = trio.socket.socket()
            await outside.bind(("127.0.0.2", 0))  # loopback, but not the whitelisted address
            await outside.connect(("127.0.0.1", running.port))
            async with trio.SocketStream(outside) as stream:
                await stream.send_all(request)
                answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 403 "), answer
            after = await scrape(admin)
            assert after.value("pvtunnel_client_connections") == 0
            refused = after.series("pvtunnel_client_connections_refused_total")
            assert refused == {(("reason", "not_allowed"),): 1, (("reason", "at_limit"),): 1}
            assert after.series("pvtunnel_requests_total") == {}
            nursery.cancel_scope.cancel()


async def test_unmatched_hosts_share_one_series() -> None:
    """Clients choose Host headers: they must not choose label values."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_admin_server(nursery)
            async with await Client.connect(running.port) as client:
                for index in range(20):
                    reply = await client.request(b"GET", b"/", host=b"host-%d" % index)
                    assert reply.status == 404
            after = await scrape(running.addresses.admin)
            routes = {dict(labels)["route"] for labels in after.series("pvtunnel_requests_total")}
            assert routes == {NO_ROUTE}
            assert after.value("pvtunnel_requests_total", route=NO_ROUTE, status_class="4xx") == 20
            nursery.cancel_scope.cancel()


async def test_agent_connects_disconnects_and_protocol_errors() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_admin_server(nursery)
            admin = running.addresses.admin
            _, upstream_port = await start_upstream(nursery, "svc")
            _, _, agent_scope = await start_agent(nursery, running, {"app": upstream_port})
            assert (await scrape(admin)).value("pvtunnel_connected_agents") == 1

            agent_scope.cancel()
            state = running.server.state
            while state.sessions:
                await state.wait_sessions_changed()
            # An agent that sends a text message instead of its HELLO.
            host, port = running.addresses.internal
            stream = await trio.open_tcp_stream(host, port)
            async with stream, trio.open_nursery() as websocket_tasks:
                ws = await trio_websocket.wrap_client_stream(
                    websocket_tasks,
                    stream,
                    f"{host}:{port}",
                    "/",
                    extra_headers=[(b"authorization", b"Bearer " + TOKEN.encode())],
                )
                await ws.send_message("not a hello")
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await ws.get_message()
            # A client that does not speak HTTP.
            answer = await raw_exchange(running.port, b"NOT HTTP AT ALL\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")

            after = await scrape(admin)
            assert after.value("pvtunnel_connected_agents") == 0
            assert after.value("pvtunnel_agent_connects_total") == 1
            assert after.value("pvtunnel_agent_disconnects_total") == 1
            assert after.value("pvtunnel_protocol_errors_total", peer="agent") == 1
            assert after.value("pvtunnel_protocol_errors_total", peer="client") == 1
            nursery.cancel_scope.cancel()


async def test_server_is_ready_once_listening_and_not_while_draining() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            server = TunnelServer(server_config())
            # The same listener and readiness logic the server starts for itself, opened
            # before the server listens (its own opens first too, but that moment is
            # over before nursery.start returns).
            early = await nursery.start(serve_admin, AdminConfig(port=0), ServerAdmin(server))
            assert (await admin_get(early, b"/ready")).status == 503
            assert (await admin_get(early, b"/live")).status == 200
            assert (await status_of(early))["ready"] is False

            addresses = await nursery.start(server.serve)
            running = Running(server=server, addresses=addresses)
            assert (await admin_get(early, b"/ready")).status == 200

            upstream, upstream_port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": upstream_port})
            held: list[int] = []
            answered = trio.Event()

            async def held_request() -> None:
                held.append((await fetch(running.port, b"GET", b"/hold")).status)
                answered.set()

            nursery.start_soon(held_request)
            await upstream.hold_started.wait()
            async with trio.open_nursery() as draining:
                draining.start_soon(server.drain)
                await trio.testing.wait_all_tasks_blocked()
                assert (await admin_get(early, b"/ready")).status == 503
                assert (await admin_get(early, b"/live")).status == 200
                document = await status_of(early)
                assert (document["ready"], document["draining"], document["in_flight"]) == (
                    False,
                    True,
                    1,
                )
                upstream.release.set()
            # The drain ends once the response is written; the client reads it after.
            await answered.wait()
            assert held == [200]
            assert (await admin_get(early, b"/ready")).status == 503
            nursery.cancel_scope.cancel()


async def test_agent_is_ready_only_while_registered_and_not_draining() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, upstream_port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(
                agent_config(running.addresses, {"app": upstream_port}, admin=AdminConfig(port=0))
            )
            early = await nursery.start(serve_admin, AdminConfig(port=0), AgentAdmin(agent))
            assert (await admin_get(early, b"/ready")).status == 503
            assert (await admin_get(early, b"/live")).status == 200

            status = await nursery.start(agent.serve)
            assert status.admin is not None
            assert status.admin == agent.admin_address
            assert (await admin_get(status.admin, b"/ready")).status == 200
            assert (await admin_get(early, b"/ready")).status == 200

            await agent.drain()
            assert (await admin_get(status.admin, b"/ready")).status == 503
            assert (await admin_get(status.admin, b"/live")).status == 200
            nursery.cancel_scope.cancel()


async def test_agent_metrics_count_streams_connect_errors_and_pooled_connections() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, upstream_port = await start_upstream(nursery, "svc")
            # Bound but not listening: connecting is refused, and the port stays ours.
            with trio.socket.socket() as refusing:
                await refusing.bind(("127.0.0.1", 0))
                down_port = refusing.getsockname()[1]
                _, status, _ = await start_agent(
                    nursery,
                    running,
                    {"app": upstream_port, "down": down_port},
                    admin=AdminConfig(port=0),
                )
                before = await scrape(status.admin)
                assert before.value("pvtunnel_agent_connected") == 1
                assert before.value("pvtunnel_agent_streams_total", route="app") == 0

                async with await Client.connect(running.port) as client:
                    assert (await client.request(b"GET", b"/a")).status == 200
                    assert (await client.request(b"GET", b"/b")).status == 200
                    assert (await client.request(b"GET", b"/", host=b"down")).status == 502

                after = await scrape(status.admin)
            assert upstream.connections == 1  # the second request reused the pooled one
            assert after.series("pvtunnel_agent_streams_total") == {
                (("route", "app"),): 2,
                (("route", "down"),): 1,
            }
            assert after.series("pvtunnel_upstream_connect_errors_total") == {
                (("route", "app"),): 0,
                (("route", "down"),): 1,
            }
            assert after.value("pvtunnel_upstream_idle_connections", route="app") == 1
            assert after.value("pvtunnel_upstream_idle_connections", route="down") == 0
            assert after.value("pvtunnel_agent_reconnects_total") == 0
            assert after.value("pvtunnel_agent_active_streams") == 0

            document = await status_of(status.admin)
            assert document["kind"] == "agent"
            assert document["connected"] is True
            assert document["routes"] == [
                {
                    "name": "app",
                    "target": f"127.0.0.1:{upstream_port}",
                    "streams": 2,
                    "idle_connections": 1,
                    "connect_errors": 0,
                    "refused_by": {},
                },
                {
                    "name": "down",
                    "target": f"127.0.0.1:{down_port}",
                    "streams": 1,
                    "idle_connections": 0,
                    "connect_errors": 1,
                    "refused_by": {},
                },
            ]
            nursery.cancel_scope.cancel()


async def test_status_lists_agents_routes_and_streams_in_flight() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_admin_server(nursery)
            upstream, upstream_port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": upstream_port, "api": upstream_port})
            await start_agent(nursery, running, {"app": upstream_port}, client_id="agent-2")
            nursery.start_soon(fetch, running.port, b"GET", b"/hold")
            await upstream.hold_started.wait()

            document = await status_of(running.addresses.admin)
            assert document["kind"] == "server"
            assert (document["ready"], document["draining"], document["in_flight"]) == (
                True,
                False,
                1,
            )
            agents = document["agents"]
            assert isinstance(agents, list)
            assert [(a["client_id"], a["address"], a["routes"]) for a in agents] == [
                ("agent-1", "127.0.0.1", ["app", "api"]),
                ("agent-2", "127.0.0.1", ["app"]),
            ]
            assert sum(agent["in_flight"] for agent in agents) == 1
            for agent in agents:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", agent["connected_since"])
                assert 0 <= agent["connected_for_s"] < LIMIT_S
            assert document["routes"] == [
                {"name": "api", "agents": ["agent-1"]},
                {"name": "app", "agents": ["agent-1", "agent-2"]},
            ]

            result = await pvtunnel("status", "--admin", _url(running.addresses.admin))
            assert result.returncode == 0, result.stderr
            lines = result.stdout.decode().splitlines()
            assert re.match(
                r"pvtunnel server at http://127\.0\.0\.1:\d+: ready, 2 agents, 1 stream in flight$",
                lines[0],
            )
            assert lines[2].split() == [
                "AGENT",
                "ADDRESS",
                "CONNECTED",
                "SINCE",
                "FOR",
                "IN",
                "FLIGHT",
                "REQUESTS",
                "ROUTES",
            ]
            assert re.match(r"agent-1 +127\.0\.0\.1 +\S+Z +\d+s +\d +\d +app, api$", lines[3])
            assert re.match(r"agent-2 +127\.0\.0\.1 +\S+Z +\d+s +\d +\d +app$", lines[4])
            # The one request went to either (equally busy agents take turns).
            assert [int(line.split()[5]) for line in lines[3:5]] in ([1, 0], [0, 1])
            assert lines[6:] == ["ROUTE  AGENTS", "api    agent-1", "app    agent-1, agent-2"]
            upstream.release.set()
            nursery.cancel_scope.cancel()


async def test_a_token_guards_metrics_and_status_but_not_the_probes() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_admin_server(nursery, token=Secret(ADMIN_TOKEN))
            admin = running.addresses.admin
            for path in (b"/metrics", b"/status"):
                assert (await admin_get(admin, path)).status == 401
                assert (await admin_get(admin, path, token="wrong")).status == 401
                assert (await admin_get(admin, path, token=ADMIN_TOKEN)).status == 200
            assert (await admin_get(admin, b"/ready")).status == 200
            assert (await admin_get(admin, b"/live")).status == 200

            refused = await pvtunnel("status", "--admin", _url(admin))
            assert refused.returncode == 1
            assert b"HTTP 401, a token is needed" in refused.stderr
            allowed = await pvtunnel(
                "status", "--admin", _url(admin), env={"PVTUNNEL_ADMIN_TOKEN": ADMIN_TOKEN}
            )
            assert allowed.returncode == 0, allowed.stderr
            assert b"no agents connected" in allowed.stdout
            assert ADMIN_TOKEN.encode() not in refused.stderr + allowed.stdout + allowed.stderr
            nursery.cancel_scope.cancel()


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The request lines logged, as `--log-format json` writes them."""
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == "pvtunnel.access" and "status" in vars(record)
    ]


async def test_request_log_lines_carry_route_agent_status_bytes_duration_and_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, upstream_port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": upstream_port})
            async with await Client.connect(running.port) as client:
                await client.request(b"GET", b"/bytes/10")
                await client.request(b"POST", b"/echo", body=b"1234567")
                await client.request(b"GET", b"/", host=b"nobody")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    lines = _access_lines(caplog)
    assert [list(line) for line in lines] == [
        [
            "ts",
            "level",
            "logger",
            "message",
            "client",
            "method",
            "host",
            "target",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "route",
            "agent",
            "stream_id",
        ]
    ] * 3
    get, post, missing = lines
    assert _pick(get, "route", "agent", "status", "bytes_in", "bytes_out") == {
        "route": "app",
        "agent": "agent-1",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 10,
    }
    assert _pick(post, "method", "target", "status", "bytes_in", "bytes_out") == {
        "method": "POST",
        "target": "/echo",
        "status": 200,
        "bytes_in": 7,
        "bytes_out": 7,
    }
    assert isinstance(get["stream_id"], int)
    assert isinstance(post["stream_id"], int)
    assert get["stream_id"] != post["stream_id"]
    assert get["duration_ms"] > 0
    assert _pick(missing, "status", "route", "agent", "stream_id", "host") == {
        "status": 404,
        "route": None,
        "agent": None,
        "stream_id": None,
        "host": "nobody",
    }
    assert f"stream={get['stream_id']}" in get["message"]


async def test_requests_a_deadline_ended_are_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 504 (no response head in time) and a 408 (the body stalled) are answered by
    the connection's deadline, after the request reached the agent: they get their
    log line and their count like any answered request."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    config = server_config(timeouts={"upstream_response_s": 0.3, "idle_s": 0.3})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            _, upstream_port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": upstream_port})
            assert (await fetch(running.port, b"GET", b"/never")).status == 504
            stalled = await raw_exchange(
                running.port,
                b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\npart",
            )
            assert stalled.startswith(b"HTTP/1.1 408 "), stalled
            figures = running.server.state.metrics.routes["app"]
            assert (figures.status_classes[5], figures.status_classes[4]) == (1, 1)
            assert figures.bytes_in == 4
            nursery.cancel_scope.cancel()
    lines = _access_lines(caplog)
    assert [_pick(line, "status", "method", "route", "agent", "bytes_in") for line in lines] == [
        {"status": 504, "method": "GET", "route": "app", "agent": "agent-1", "bytes_in": 0},
        {"status": 408, "method": "POST", "route": "app", "agent": "agent-1", "bytes_in": 4},
    ]
    assert all(isinstance(line["stream_id"], int) for line in lines)
    assert lines[0]["duration_ms"] >= 300


async def test_serve_and_agent_take_admin_port_flags_and_status_reads_both(
    processes: list[Process],
) -> None:
    with trio.fail_after(LIMIT_S * 2):
        async with trio.open_nursery() as nursery:
            _, upstream_port = await start_upstream(nursery, "svc")
            server = await Process.launch(
                "serve",
                "--host=127.0.0.1",
                "--internal-port=0",
                "--external-port=0",
                "--admin-port=0",
                # The listener `--admin-port` turns on takes the environment's token.
                env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN, "PVTUNNEL_ADMIN_TOKEN": ADMIN_TOKEN},
            )
            processes.append(server)
            ready = await server.wait_for(
                r"ready internal=(ws://\S+) external=http://127\.0\.0\.1:(\d+) "
                r"admin=(http://127\.0\.0\.1:\d+)$"
            )
            agent = await Process.launch(
                "agent",
                f"--server={ready.group(1)}",
                f"--route=app=127.0.0.1:{upstream_port}",
                "--client-id=cli-agent",
                "--admin-port=0",
                env={"PVTUNNEL_TOKEN": TOKEN, "PVTUNNEL_ADMIN_TOKEN": ADMIN_TOKEN},
            )
            processes.append(agent)
            agent_ready = await agent.wait_for(r"routes=app admin=(http://127\.0\.0\.1:\d+)$")
            assert (await fetch(int(ready.group(2)), b"GET", b"/")).status == 200

            for admin in (ready.group(3), agent_ready.group(1)):
                refused = await pvtunnel("status", "--admin", admin)
                assert refused.returncode == 1
                assert b"HTTP 401, a token is needed" in refused.stderr
            with_token = {"PVTUNNEL_ADMIN_TOKEN": ADMIN_TOKEN}
            server_view = await pvtunnel("status", "--admin", ready.group(3), env=with_token)
            assert server_view.returncode == 0, server_view.stderr
            assert b"ready, 1 agent, 0 streams in flight" in server_view.stdout
            assert re.search(rb"\ncli-agent +127\.0\.0\.1 .* 1  app\n", server_view.stdout)
            agent_view = await pvtunnel("status", "--admin", agent_ready.group(1), env=with_token)
            assert agent_view.returncode == 0, agent_view.stderr
            assert b"pvtunnel agent cli-agent at " in agent_view.stdout
            assert re.search(
                rb"\napp +127\.0\.0\.1:%d +1 +\d +0$" % upstream_port, agent_view.stdout
            )

            for process in (agent, server):
                process.process.send_signal(signal.SIGTERM)
                assert await process.process.wait() == 0
            nursery.cancel_scope.cancel()


async def test_serve_and_agent_put_the_admin_listener_where_admin_host_says(
    processes: list[Process],
) -> None:
    """``--admin-host`` moves the listener ``--admin-port`` turns on: the ready lines
    name the address, and the listeners answer there."""
    with trio.fail_after(LIMIT_S * 2):
        async with trio.open_nursery() as nursery:
            _, upstream_port = await start_upstream(nursery, "svc")
            server = await Process.launch(
                "serve",
                "--host=127.0.0.1",
                "--internal-port=0",
                "--external-port=0",
                "--admin-port=0",
                "--admin-host=127.0.0.2",
                env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
            )
            processes.append(server)
            ready = await server.wait_for(
                r"ready internal=(ws://\S+) external=\S+ admin=http://127\.0\.0\.2:(\d+)$"
            )
            agent = await Process.launch(
                "agent",
                f"--server={ready.group(1)}",
                f"--route=app=127.0.0.1:{upstream_port}",
                "--admin-port=0",
                "--admin-host=127.0.0.2",
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            processes.append(agent)
            agent_ready = await agent.wait_for(r"routes=app admin=http://127\.0\.0\.2:(\d+)$")
            for port in (ready.group(2), agent_ready.group(1)):
                assert (await admin_get(("127.0.0.2", int(port)), b"/live")).status == 200
            for process in (agent, server):
                process.process.send_signal(signal.SIGTERM)
                assert await process.process.wait() == 0
            nursery.cancel_scope.cancel()


async def test_status_reports_an_unreachable_admin_listener() -> None:
    with trio.socket.socket() as refusing:
        await refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        with trio.fail_after(LIMIT_S):
            result = await pvtunnel("status", "--admin", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.startswith(b"pvtunnel status: cannot reach http://127.0.0.1:")


def _url(address: tuple[str, int] | None) -> str:
    assert address is not None
    return f"http://{address[0]}:{address[1]}"


def _pick(line: Mapping[str, object], *keys: str) -> dict[str, object]:
    return {key: line[key] for key in keys}
