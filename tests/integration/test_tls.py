"""TLS on both listeners (issue 3): wss:// for agents, https:// for clients, trustme certificates.

The agent verifies the server by the system trust store, or by ``[server] ca_file``
for a private CA; there is no switch to skip verification. A certificate that
does not verify stops an agent that has never registered (it is configuration),
and is retried, loudly, by one that has (the server proved itself before).
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from typing import TYPE_CHECKING, Any, Final

import attrs
import pytest
import trio
import trio.testing

from pvtunnel import ServerCertificateError
from pvtunnel._config import AgentTimeouts, Secret
from pvtunnel._errors import HandshakeRefusedError
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.server import ServerAddresses, TunnelServer
from tests.integration.client import Client, fetch, raw_exchange
from tests.integration.harness import (
    Running,
    agent_config,
    start_agent,
    start_server,
    start_upstream,
)
from tests.integration.listen import serve_on_loopback
from tests.integration.pki import Pki, issue, tls_server_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pvtunnel._config import AgentConfig, ServerConfig

LIMIT_S: Final = 10
EXTERNAL_TOKEN: Final = "tls-external-secret-19c4"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return issue(tmp_path, "good", "127.0.0.1", "localhost")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    """Same names, another CA: what an agent without the right ca_file sees."""
    return issue(tmp_path, "other", "127.0.0.1", "localhost")


def _wss_agent_config(
    running: Running | ServerAddresses, routes: dict[str, int], **changes: Any
) -> AgentConfig:
    addresses = running.addresses if isinstance(running, Running) else running
    config = agent_config(addresses, routes)
    host, port = addresses.internal
    server = attrs.evolve(config.server, urls=(f"wss://{host}:{port}",), **changes)
    return attrs.evolve(config, server=server)


async def _https_client(pki: Pki, port: int) -> Client:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    return Client(stream)


class LogWaiter(logging.Handler):
    """Sets ``event`` when a record matching ``pattern`` is logged (from Trio's thread)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(logging.DEBUG)
        self.pattern = re.compile(pattern)
        self.event = trio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.pattern.search(message):
            self.messages.append(message)
            self.event.set()

    def rearm(self) -> None:
        self.event = trio.Event()


@pytest.fixture
def agent_log() -> Iterator[list[LogWaiter]]:
    waiters: list[LogWaiter] = []
    logger = logging.getLogger("pvtunnel.agent")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield waiters
    for waiter in waiters:
        logger.removeHandler(waiter)
    logger.setLevel(level)


def _wait_for_log(waiters: list[LogWaiter], pattern: str) -> LogWaiter:
    waiter = LogWaiter(pattern)
    logging.getLogger("pvtunnel.agent").addHandler(waiter)
    waiters.append(waiter)
    return waiter


async def test_wss_agent_with_ca_file_connects_and_proxies(pki: Pki) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, tls_server_config(pki))
            upstream, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(_wss_agent_config(running, {"app": port}, ca_file=pki.ca_file))
            status = await nursery.start(agent.serve)
            assert status.server_url.startswith("wss://")
            reply = await fetch(running.port, b"POST", b"/echo", body=b"over wss")
            assert (reply.status, reply.body) == (200, b"over wss")
            assert upstream.requests[-1].body == b"over wss"
            assert len(running.server.sessions) == 1
            nursery.cancel_scope.cancel()


async def test_https_on_the_external_port_end_to_end(pki: Pki) -> None:
    config = tls_server_config(pki, internal=True, external=True)
    config = attrs.evolve(
        config,
        external=attrs.evolve(
            config.external, token=Secret(EXTERNAL_TOKEN), whitelisted_ips=("127.0.0.1",)
        ),
    )
    credential = (b"proxy-authorization", b"Bearer " + EXTERNAL_TOKEN.encode())
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            upstream, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(_wss_agent_config(running, {"app": port}, ca_file=pki.ca_file))
            await nursery.start(agent.serve)
            async with await _https_client(pki, running.port) as client:
                first = await client.request(b"GET", b"/one", headers=[credential])
                refused = await client.request(b"GET", b"/two")
                body = b"b" * 300_000
                second = await client.request(b"POST", b"/echo", headers=[credential], body=body)
            assert first.status == 200
            assert first.body == b"svc saw GET /one"
            assert refused.status == 407
            assert (second.status, second.body) == (200, body)
            assert [r.target for r in upstream.requests] == [b"/one", b"/echo"]
            assert upstream.requests[0].header(b"x-forwarded-proto") == b"https"
            assert upstream.requests[0].header(b"x-forwarded-for") == b"127.0.0.1"
            assert upstream.requests[0].header(b"proxy-authorization") is None
            # A plain-HTTP client on the https port is told so, and harms nothing.
            plain = await raw_exchange(running.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            assert plain.startswith(b"HTTP/1.1 400 ")
            async with await _https_client(pki, running.port) as client:
                again = await client.request(b"GET", b"/three", headers=[credential])
            assert again.status == 200
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("trust", ["system", "other-ca"])
async def test_agent_that_cannot_verify_the_server_stops_with_a_clear_message(
    pki: Pki, other_pki: Pki, trust: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca_file = None if trust == "system" else other_pki.ca_file
    # Far below connect_s (10 s): the failure is reported at once, not after a timeout.
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, tls_server_config(pki))
            _, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(_wss_agent_config(running, {"app": port}, ca_file=ca_file))
            with pytest.raises(ServerCertificateError) as failure:
                await agent.serve()
            assert isinstance(failure.value, HandshakeRefusedError)  # the CLI exits non-zero
            message = str(failure.value)
            assert message.startswith(
                "TLS certificate verification failed for the server at 127.0.0.1:"
            )
            assert "unable to get local issuer certificate" in message
            assert "[server] ca_file" in message
            # Raised, not also logged: whoever runs the agent says it once (the CLI does).
            assert not [r for r in caplog.records if message in r.getMessage()]
            assert running.server.sessions == frozenset()
            nursery.cancel_scope.cancel()


async def test_agent_refuses_a_certificate_for_another_host_name(tmp_path: Path) -> None:
    localhost_only = issue(tmp_path, "named", "localhost")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, tls_server_config(localhost_only))
            _, port = await start_upstream(nursery, "svc")
            config = _wss_agent_config(running, {"app": port}, ca_file=localhost_only.ca_file)
            with pytest.raises(ServerCertificateError, match="IP address mismatch"):
                await TunnelAgent(config).serve()
            # The same server by the name on its certificate is fine.
            by_name = attrs.evolve(
                running.addresses, internal=("localhost", running.addresses.internal[1])
            )
            agent = TunnelAgent(
                _wss_agent_config(by_name, {"app": port}, ca_file=localhost_only.ca_file)
            )
            await nursery.start(agent.serve)
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            nursery.cancel_scope.cancel()


async def _start_server_alone(
    nursery: trio.Nursery, config: ServerConfig
) -> tuple[Running, trio.CancelScope]:
    server = TunnelServer(config)

    async def run(
        *, task_status: trio.TaskStatus[ServerAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await server.serve(task_status=task_status)

    scopes: list[trio.CancelScope] = []
    addresses: ServerAddresses = await nursery.start(run)
    return Running(server=server, addresses=addresses), scopes[0]


async def test_registered_agent_retries_after_a_certificate_failure(
    pki: Pki, other_pki: Pki, agent_log: list[LogWaiter]
) -> None:
    """A server that proved itself once gets retried: a bad renewal is fixable live."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, port = await start_upstream(nursery, "svc")
            first, first_scope = await _start_server_alone(nursery, tls_server_config(pki))
            internal_port = first.addresses.internal[1]
            config = attrs.evolve(
                _wss_agent_config(first, {"app": port}, ca_file=pki.ca_file),
                timeouts=AgentTimeouts(reconnect_max_s=0.5),
            )
            agent = TunnelAgent(config)
            await nursery.start(agent.serve)
            cert_failed = _wait_for_log(agent_log, "TLS certificate verification failed")
            registered = _wait_for_log(agent_log, "registered with")
            # The server comes back on the same port with a certificate the agent
            # cannot verify: it says so, and keeps trying.
            first_scope.cancel()
            impostor, impostor_scope = await _start_server_alone(
                nursery, tls_server_config(other_pki, internal_port=internal_port)
            )
            await cert_failed.event.wait()
            assert impostor.server.sessions == frozenset()
            cert_failed.rearm()
            await cert_failed.event.wait()  # retried, not given up
            # Fixed: the agent is back without a restart.
            impostor_scope.cancel()
            fixed, _ = await _start_server_alone(
                nursery, tls_server_config(pki, internal_port=internal_port)
            )
            await registered.event.wait()
            assert (await fetch(fixed.port, b"GET", b"/back")).status == 200
            assert upstream.requests[-1].target == b"/back"
            nursery.cancel_scope.cancel()


async def test_wrong_agent_token_over_wss_is_still_refused(pki: Pki) -> None:
    """TLS changes nothing about the token check: a wrong agent token is a 401."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, tls_server_config(pki))
            _, port = await start_upstream(nursery, "svc")
            config = _wss_agent_config(
                running, {"app": port}, ca_file=pki.ca_file, token=Secret("not-the-token")
            )
            with pytest.raises(HandshakeRefusedError, match=r"token \(HTTP 401\)"):
                await TunnelAgent(config).serve()
            assert running.server.sessions == frozenset()
            nursery.cancel_scope.cancel()


async def test_tls_handshake_failure_that_is_no_certificate_problem_is_retried(
    pki: Pki, agent_log: list[LogWaiter]
) -> None:
    """wss:// to a plain listener: logged with its cause and retried, like the network."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            plain = await start_server(nursery)  # no TLS on its internal port
            _, port = await start_upstream(nursery, "svc")
            config = attrs.evolve(
                _wss_agent_config(plain, {"app": port}, ca_file=pki.ca_file),
                timeouts=AgentTimeouts(reconnect_max_s=0.5),
            )
            failed = _wait_for_log(agent_log, r"TLS handshake with the server at 127\.0\.0\.1:")
            nursery.start_soon(TunnelAgent(config).serve)
            await failed.event.wait()
            failed.rearm()
            await failed.event.wait()  # a second attempt: the agent did not give up
            assert "failed: [SSL" in failed.messages[0]
            assert plain.server.sessions == frozenset()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_connect_pipe_ends_when_the_upstream_closes(tmp_path: Path, tls: bool) -> None:
    """The upstream says its piece and closes. Over plain TCP its end reaches the
    client as a half-close; TLS cannot half-close, so the whole connection ends:
    either way the client reads to the end and is not left waiting."""
    pki = issue(tmp_path, "good", "127.0.0.1", "localhost")
    config = tls_server_config(pki, internal=False, external=True) if tls else None

    async def says_bye(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"bye")

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            port = await nursery.start(serve_on_loopback, says_bye)
            await start_agent(nursery, running, {"db": port})
            client: trio.abc.Stream
            if tls:
                # The server's TLS is HTTPS-compatible: it closes without TLS's
                # close_notify, as HTTPS servers do, and its clients expect that.
                context = ssl.create_default_context()
                pki.ca.configure_trust(context)
                client = await trio.open_ssl_over_tcp_stream(
                    "127.0.0.1", running.port, ssl_context=context, https_compatible=True
                )
            else:
                client = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with client:
                await client.send_all(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
                received = b""
                while chunk := await client.receive_some(65536):
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200 ")
            assert received.endswith(b"\r\n\r\nbye")
            while running.server.state.in_flight:
                await running.server.state.idle.wait()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("sends", [b"", b"\x16"], ids=["nothing", "one-byte"])
@pytest.mark.parametrize("refusal", ["not-allowed", "at-limit", "none"])
async def test_a_connection_that_never_shakes_hands_is_closed_in_time(
    pki: Pki, refusal: str, sends: bytes, mock_clock: trio.testing.MockClock
) -> None:
    """A refusal (403 outside the whitelist, 503 past the connection limit) is an
    answer, and on https it waits for the client's TLS handshake: a client that
    never made one held its task and its place for good (past the limit, every
    later client got 503 meanwhile). Whatever it sends first (nothing, or the
    first byte of a handshake), it has `request_head_s` from its connection's
    start, refused or not: not that long for each step."""
    mock_clock.autojump_threshold = 0
    config = tls_server_config(pki, internal=False, external=True)
    external = (
        attrs.evolve(config.external, whitelisted_ips=("10.0.0.0/8",))
        if refusal == "not-allowed"
        else config.external
    )
    limits = attrs.evolve(config.limits, max_client_connections=1)
    config = attrs.evolve(
        config,
        external=external,
        timeouts=attrs.evolve(config.timeouts, request_head_s=2.0),
        limits=limits if refusal == "at-limit" else config.limits,
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            state = running.server.state
            silent = [await trio.open_tcp_stream("127.0.0.1", running.port) for _ in range(3)]
            started = trio.current_time()
            if sends:
                # Late: a limit counted from this byte on would run to 3.5 s.
                await trio.sleep(1.5)
                for stream in silent:
                    await stream.send_all(sends)
            for stream in silent:
                # The server closes it (or resets it) once request_head_s is over.
                with contextlib.suppress(trio.BrokenResourceError):
                    while await stream.receive_some(4096):
                        pass
                await stream.aclose()
            assert trio.current_time() - started <= 2.0 + 0.5
            await trio.testing.wait_all_tasks_blocked()
            assert state.client_connections == 0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /one HTTP/1.1\r\nHost: app\r\n\r\n",
        # A body it will never have read: the answer must survive the close.
        b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200_000,
        b"g",
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n",
    ],
    ids=["get", "post-with-body", "one-letter", "blank-lines-first"],
)
async def test_plain_http_on_the_https_port_is_told_to_use_https(
    pki: Pki, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """As nginx answers it: a 400 in plain HTTP that says why, and an access-log line,
    where a TLS handshake failing on its first byte closed with no word at all."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    config = tls_server_config(pki, internal=False, external=True)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            answer = await raw_exchange(running.port, sent)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert b"\r\nConnection: close" in head
            assert b"use https://" in body
            assert re.search(rb"\r\nContent-Length: (\d+)", head)[1] == b"%d" % len(body)  # type: ignore[index]
            lines = [r for r in caplog.records if r.name == "pvtunnel.access"]
            assert [(vars(r)["status"], vars(r)["method"]) for r in lines] == [(400, "-")]
            assert running.server.state.metrics.client_protocol_errors == 1
            # TLS clients are served as ever.
            async with await _https_client(pki, running.port) as client:
                reply = await client.request(b"GET", b"/")
            assert reply.status == 404  # no agent: the route is unknown
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("refusal", ["not-allowed", "at-limit"])
async def test_plain_http_from_a_refused_client_gets_the_refusal(pki: Pki, refusal: str) -> None:
    """The refusal is the answer (in plain HTTP, as the client speaks), counted as
    one, not a protocol error: what the address or the limit decides comes first."""
    config = tls_server_config(pki, internal=False, external=True)
    if refusal == "not-allowed":
        config = attrs.evolve(
            config, external=attrs.evolve(config.external, whitelisted_ips=("10.0.0.0/8",))
        )
    else:
        config = attrs.evolve(config, limits=attrs.evolve(config.limits, max_client_connections=1))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            # Holds the one place (it says nothing yet), or is refused as well.
            first = await trio.open_tcp_stream("127.0.0.1", running.port)
            while not running.server.state.client_connections:
                await trio.testing.wait_all_tasks_blocked()
            answer = await raw_exchange(running.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            await first.aclose()
            status, key = (403, "not_allowed") if refusal == "not-allowed" else (503, "at_limit")
            assert answer.startswith(b"HTTP/1.1 %d " % status), answer
            metrics = running.server.state.metrics
            assert metrics.connections_refused[key] == (1 if refusal == "at-limit" else 2)
            assert metrics.client_protocol_errors == 0
            nursery.cancel_scope.cancel()
