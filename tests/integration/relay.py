"""A TCP relay for fault injection between an agent and the server.

Every connection through it can be delayed, blackholed (bytes stop moving both
ways but the sockets stay open, as when a network path dies silently) or cut
(closed at once), on command from the test.
"""

from __future__ import annotations

import trio

from tests.integration.listen import serve_on_loopback


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self._healed = trio.Event()
        self._healed.set()
        self._scopes: set[trio.CancelScope] = set()
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_loopback(self._connection, task_status=task_status)

    def blackhole(self) -> None:
        """Stop moving bytes (both ways, all connections) until `heal`."""
        self._healed = trio.Event()

    def heal(self) -> None:
        self._healed.set()

    def cut(self) -> None:
        """Close every current connection through the relay."""
        for scope in list(self._scopes):
            scope.cancel()

    async def _connection(self, downstream: trio.SocketStream) -> None:
        self.connections += 1
        async with downstream:
            await self._healed.wait()
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            done = nursery.cancel_scope
                            nursery.start_soon(self._pump, downstream, upstream, done)
                            nursery.start_soon(self._pump, upstream, downstream, done)
                    finally:
                        self._scopes.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        try:
            while True:
                await self._healed.wait()
                data = await source.receive_some(65536)
                if not data:
                    break
                if self.delay_s:
                    await trio.sleep(self.delay_s)
                await self._healed.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()
