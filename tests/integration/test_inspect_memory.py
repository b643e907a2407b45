"""With the inspector on, 1 GiB transfers stay under the agent's memory bar.

The real CLI runs the server and the agent (``--inspect``) as processes; a 1 GiB
download and a 1 GiB upload go through the tunnel, and the peak RSS (VmHWM,
start-up included) of the agent and of the server must each stay under 100 MiB,
the bar `benchmarks/memory.py` measures without the inspector. The capture keeps
only the preview of each body: checked through the API (``max_body_bytes`` kept,
``cut``, the whole size counted).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

import h11
import trio

from tests.integration.client import Client
from tests.integration.harness import TOKEN
from tests.integration.listen import serve_on_loopback
from tests.integration.processes import Process

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

MIB: Final = 1024 * 1024
SIZE: Final = 1024 * MIB
BLOCK: Final = bytes(range(256)) * 4096  # 1 MiB
BAR_MIB: Final = 100
LIMIT_S: Final = 240


async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(MIB)))
            continue
        assert isinstance(event, h11.Event)
        return event


async def send_body(conn: h11.Connection, stream: trio.SocketStream, size: int) -> None:
    left = size
    while left:
        take = min(left, len(BLOCK))
        await stream.send_all(conn.send(h11.Data(data=BLOCK[:take])) or b"")
        left -= take
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def count_body(conn: h11.Connection, stream: trio.SocketStream) -> int:
    received = 0
    while not isinstance(event := await next_event(conn, stream), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        received += len(event.data)
    return received


async def serve_bulk(stream: trio.SocketStream) -> None:
    """``GET /download/N`` streams N bytes; ``POST /upload`` answers how many it took."""
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while isinstance(request := await next_event(conn, stream), h11.Request):
            if request.target.startswith(b"/download/"):
                size = int(request.target.rsplit(b"/", 1)[1])
                assert isinstance(await next_event(conn, stream), h11.EndOfMessage)
                head = h11.Response(status_code=200, headers=[(b"content-length", b"%d" % size)])
                await stream.send_all(conn.send(head) or b"")
                await send_body(conn, stream, size)
            else:
                answer = b"%d" % await count_body(conn, stream)
                head = h11.Response(
                    status_code=200, headers=[(b"content-length", b"%d" % len(answer))]
                )
                await stream.send_all(conn.send(head) or b"")
                await stream.send_all(conn.send(h11.Data(data=answer)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            conn.start_next_cycle()


async def through_tunnel(
    port: int, method: bytes, target: bytes, upload: int = 0
) -> tuple[int, int]:
    """One request through the tunnel: the status and the response body's size."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        headers = [(b"host", b"app")] + ([(b"content-length", b"%d" % upload)] if upload else [])
        await stream.send_all(
            conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        )
        if upload:
            await send_body(conn, stream, upload)
        else:
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        response = await next_event(conn, stream)
        assert isinstance(response, h11.Response), response
        return response.status_code, await count_body(conn, stream)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_transfers_with_the_inspector_on_stay_under_the_memory_bar(
    processes: list[Process],
) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream_port = await nursery.start(serve_on_loopback, serve_bulk)
            server = await Process.launch(
                "serve",
                "--host=127.0.0.1",
                "--internal-port=0",
                "--external-port=0",
                env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
            )
            processes.append(server)
            ready = await server.wait_for(
                r"ready internal=(ws://\S+) external=http://127\.0\.0\.1:(\d+)"
            )
            agent = await Process.launch(
                "agent",
                f"--server={ready.group(1)}",
                f"--route=app=127.0.0.1:{upstream_port}",
                "--admin-port=0",
                "--inspect",
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            processes.append(agent)
            # The ready line names the page.
            page = await agent.wait_for(r" inspect=http://127\.0\.0\.1:(\d+)/inspect$")
            port = int(ready.group(2))

            assert await through_tunnel(port, b"GET", b"/download/%d" % SIZE) == (200, SIZE)
            status, body = await through_tunnel(port, b"POST", b"/upload", upload=SIZE)
            assert (status, body) == (200, len(b"%d" % SIZE))

            admin_port = int(page.group(1))
            get = _admin_getter(admin_port)
            listing = json.loads(await get(b"/inspect/api/requests"))
            assert [(e["method"], e["request_bytes"], e["response_bytes"]) for e in listing] == [
                ("POST", SIZE, len(b"%d" % SIZE)),
                ("GET", 0, SIZE),
            ]
            download = json.loads(await get(b"/inspect/api/requests/%d" % listing[1]["id"]))
            preview = download["response"]["body"]
            assert (preview["size"], preview["cut"]) == (SIZE, True)
            assert base64.b64decode(preview["base64"]) == BLOCK[: 64 * 1024]
            upload = json.loads(await get(b"/inspect/api/requests/%d" % listing[0]["id"]))
            assert len(base64.b64decode(upload["request"]["body"]["base64"])) == 64 * 1024

            agent_peak = peak_rss_mib(agent.process.pid)
            server_peak = peak_rss_mib(server.process.pid)
            assert agent_peak < BAR_MIB, f"agent peak RSS {agent_peak:.1f} MiB"
            assert server_peak < BAR_MIB, f"server peak RSS {server_peak:.1f} MiB"
            nursery.cancel_scope.cancel()


def _admin_getter(port: int) -> Callable[[bytes], Awaitable[bytes]]:
    async def get(path: bytes) -> bytes:
        async with await Client.connect(port) as client:
            reply = await client.request(b"GET", path, host=b"127.0.0.1:%d" % port)
        assert reply.status == 200, reply
        return reply.body

    return get
