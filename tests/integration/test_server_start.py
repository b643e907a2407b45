"""Starting an embedded server: what a failed start leaves, and what a start reports.

A program that embeds the server catches start-up failures as the errors
themselves (as it does the agent's), and can try again on the same port: a
failed start holds no listener. A host that resolves to several addresses gets
listeners on one port, the one reported.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio_websocket

from pvtunnel._trio.server import ServerAddresses, TunnelServer
from pvtunnel._wire.identity import server_id_from
from tests.config.helpers import encrypt_key, write_tls_files

from .harness import TOKEN, server_config, start_server

if TYPE_CHECKING:
    from pathlib import Path

    from pvtunnel._config import ServerConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def assert_port_free(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    for listener in listeners:
        await listener.aclose()


@pytest.mark.parametrize("listener", ["internal", "external"])
async def test_an_unreadable_certificate_fails_the_start_and_takes_no_port(
    tmp_path: Path, listener: str
) -> None:
    ports = {"internal": free_port(), "external": free_port()}
    missing = {"tls_cert": tmp_path / "missing.pem", "tls_key": tmp_path / "missing.key"}
    config = server_config()
    tables: dict[str, Any] = {
        name: attrs.evolve(
            getattr(config, name), port=ports[name], **(missing if name == listener else {})
        )
        for name in ports
    }
    config = attrs.evolve(config, **tables)
    async with trio.open_nursery() as nursery:
        # The error itself, not an exception group: `except OSError` catches it.
        with pytest.raises(FileNotFoundError) as failure:
            await nursery.start(TunnelServer(config).serve)
        # The listener and the files are named (ssl's own error names neither).
        assert str(missing["tls_cert"]) in str(failure.value)
        assert f"the {listener} listener's certificate" in str(failure.value)
        # While the error (and every frame it holds) is alive, no port is taken.
        for port in ports.values():
            await assert_port_free(port)


async def test_an_encrypted_key_fails_the_start_saying_so(tmp_path: Path) -> None:
    write_tls_files(tmp_path, "cert.pem", "key.pem")
    encrypt_key(tmp_path / "key.pem")
    config = server_config()
    config = attrs.evolve(
        config,
        external=attrs.evolve(
            config.external, tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem"
        ),
    )
    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError, match=r"key\.pem: the private key is encrypted") as failure:
            await nursery.start(TunnelServer(config).serve)
        assert "Errno" not in str(failure.value)


@pytest.mark.parametrize("listener", ["internal", "external"])
async def test_a_port_in_use_fails_the_start_with_the_error_itself(listener: str) -> None:
    taken = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = taken.socket.getsockname()[1]
    config = server_config()
    config = attrs.evolve(
        config,
        **{listener: attrs.evolve(getattr(config, listener), port=port)},
    )
    async with taken, trio.open_nursery() as nursery:
        with pytest.raises(
            OSError, match=f"the {listener} listener on 127.0.0.1:{port}"
        ) as failure:
            await nursery.start(TunnelServer(config).serve)
        assert failure.value.errno == errno.EADDRINUSE


class TwoAddresses(trio.abc.HostnameResolver):
    """Resolves ``dual.test`` to 127.0.0.1 and ::1, as many systems resolve localhost."""

    async def getaddrinfo(self, host: bytes | None, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert host in (b"dual.test", "dual.test"), host
        port = int(port or 0)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0)),
        ]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_every_address_of_the_host_listens_on_the_reported_port() -> None:
    config = attrs.evolve(server_config(), host="dual.test")
    previous = trio.socket.set_custom_hostname_resolver(TwoAddresses())
    try:
        await _listens_on_the_reported_port(config)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


async def _listens_on_the_reported_port(config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        addresses: ServerAddresses = await nursery.start(TunnelServer(config).serve)
        for _, port in (addresses.internal, addresses.external):
            for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with trio.socket.socket(family) as sock:
                    await sock.connect((address, port))
        nursery.cancel_scope.cancel()


async def test_every_upgrade_is_answered_with_the_id_of_its_server_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same id on every connection to one server, another for another server
    (protocol.md 1.1); a client that closes with 1000 before its HELLO is no failure."""
    caplog.set_level(logging.INFO, logger="pvtunnel.server")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            first = await start_server(nursery)
            second = await start_server(nursery)
            seen = []
            for running in (first, first, second):
                async with trio_websocket.open_websocket_url(
                    running.url, extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())]
                ) as ws:
                    seen.append(server_id_from(ws.handshake_headers))
            assert seen == [first.server.server_id] * 2 + [second.server.server_id]
            assert first.server.server_id != second.server.server_id
            nursery.cancel_scope.cancel()
    assert "closed before its HELLO" in caplog.text
    server_lines = [r for r in caplog.records if r.name == "pvtunnel.server"]
    assert not [r for r in server_lines if r.levelno >= logging.WARNING]
