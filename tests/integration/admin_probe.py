"""Reading a server's or agent's admin listener from a test, as a monitoring system would."""

from __future__ import annotations

import json

import trio
import trio.testing

from tests.integration.client import Client, Reply
from tests.prometheus import Scrape


async def admin_get(
    address: tuple[str, int] | None, path: bytes, *, token: str | None = None
) -> Reply:
    assert address is not None
    headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
    host, port = address
    # As a browser or Prometheus names the listener: its own address (a tokenless
    # listener answers only loopback names).
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    async with await Client.connect(port, host) as client:
        return await client.request(b"GET", path, host=authority.encode(), headers=headers)


async def scrape(address: tuple[str, int] | None, *, token: str | None = None) -> Scrape:
    await trio.testing.wait_all_tasks_blocked()
    reply = await admin_get(address, b"/metrics", token=token)
    assert reply.status == 200, reply
    assert reply.header(b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
    return Scrape(reply.body.decode())


async def status_of(address: tuple[str, int] | None) -> dict[str, object]:
    reply = await admin_get(address, b"/status")
    assert reply.status == 200, reply
    assert reply.header(b"content-type") == b"application/json"
    document = json.loads(reply.body)
    assert isinstance(document, dict)
    return document
