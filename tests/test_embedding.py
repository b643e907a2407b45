"""A Trio program embedding a server and an agent, with only what `pvtunnel` exports.

docs/embedding.md is what such a program's author reads; these tests hold the
objects to what it promises, real sockets on 127.0.0.1 (port 0) throughout.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import pytest
import trio

import pvtunnel

if TYPE_CHECKING:
    from pathlib import Path

TOKEN = pvtunnel.Secret("embedding-test-token-0123456789")
LIMIT_S = 10


async def _hello(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")


async def _start_service(nursery: trio.Nursery) -> int:
    serve = functools.partial(trio.serve_tcp, _hello, 0, host="127.0.0.1")
    listeners: list[trio.SocketListener] = await nursery.start(serve)
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _server() -> pvtunnel.TunnelServer:
    return pvtunnel.TunnelServer(
        pvtunnel.ServerConfig(
            host="127.0.0.1",
            internal=pvtunnel.InternalConfig(port=0, token=TOKEN),
            external=pvtunnel.ExternalConfig(port=0),
        )
    )


def _agent(addresses: pvtunnel.ServerAddresses, service_port: int) -> pvtunnel.TunnelAgent:
    return pvtunnel.TunnelAgent(
        pvtunnel.AgentConfig(
            client_id="embedded",
            server=pvtunnel.ServerEndpoint(
                urls=(f"ws://127.0.0.1:{addresses.internal[1]}",), token=TOKEN
            ),
            routes=(
                pvtunnel.Route(
                    name="app", value="127.0.0.1", port=service_port, type=pvtunnel.RouteType.IP
                ),
            ),
        )
    )


async def _status_line(addresses: pvtunnel.ServerAddresses) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", addresses.external[1]) as client:
        await client.send_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := await client.receive_some(65536):
            response += chunk
    return response.split(b"\r\n", 1)[0]


# ---------------------------------------------------------------- serving once


async def test_a_server_serves_once_a_second_serve_raises_and_the_first_goes_on() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            service_port = await _start_service(nursery)
            server = _server()
            addresses: pvtunnel.ServerAddresses = await nursery.start(server.serve)
            with pytest.raises(RuntimeError, match="TunnelServer serves once"):
                await nursery.start(server.serve)
            await nursery.start(_agent(addresses, service_port).serve)
            assert await _status_line(addresses) == b"HTTP/1.1 200 OK"
            nursery.cancel_scope.cancel()


async def test_an_agent_serves_once_a_second_serve_raises_and_the_first_goes_on() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            service_port = await _start_service(nursery)
            server = _server()
            addresses: pvtunnel.ServerAddresses = await nursery.start(server.serve)
            agent = _agent(addresses, service_port)
            await nursery.start(agent.serve)
            (session,) = server.sessions
            with pytest.raises(RuntimeError, match="TunnelAgent serves once"):
                await nursery.start(agent.serve)
            # The first run's connection is the one the server still holds.
            assert server.sessions == {session}
            assert await _status_line(addresses) == b"HTTP/1.1 200 OK"
            nursery.cancel_scope.cancel()


async def test_a_stopped_server_or_agent_says_so_rather_than_serve_again() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            service_port = await _start_service(nursery)
            server = _server()
            async with trio.open_nursery() as first_run:
                addresses: pvtunnel.ServerAddresses = await first_run.start(server.serve)
                agent = _agent(addresses, service_port)
                await first_run.start(agent.serve)
                first_run.cancel_scope.cancel()
            with pytest.raises(RuntimeError, match="create a new TunnelServer"):
                await server.serve()
            with pytest.raises(RuntimeError, match="create a new TunnelAgent"):
                await agent.serve()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["server", "agent"])
def test_the_loaders_take_a_str_path_as_open_does(kind: str, tmp_path: Path) -> None:
    load = pvtunnel.load_server_config if kind == "server" else pvtunnel.load_agent_config
    path = tmp_path / f"{kind}.toml"
    path.write_text(
        '[internal]\ntoken = "from-the-file-0123456789"\n'
        if kind == "server"
        else 'client_id = "from-the-file"\n'
    )
    assert load(str(path), environ={}) == load(path, environ={})
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(pvtunnel.ConfigError, match="cannot read the file"):
        load(missing, environ={})


# ---------------------------------------------------------------- logging

LOGGERS = ("", "pvtunnel", "pvtunnel.server", "pvtunnel.agent", "pvtunnel.admin", "pvtunnel.access")


async def test_embedding_leaves_logging_to_the_program(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pvtunnel")
    before = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level)
        for name in LOGGERS
    }
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            service_port = await _start_service(nursery)
            addresses: pvtunnel.ServerAddresses = await nursery.start(_server().serve)
            await nursery.start(_agent(addresses, service_port).serve)
            assert await _status_line(addresses) == b"HTTP/1.1 200 OK"
            nursery.cancel_scope.cancel()
    after = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level)
        for name in LOGGERS
    }
    assert after == before
    (line,) = [r for r in caplog.records if r.name == "pvtunnel.access"]
    fields = vars(line)
    assert line.levelno == logging.INFO
    assert (fields["status"], fields["route"], fields["method"]) == (200, "app", "GET")
