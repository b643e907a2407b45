"""Shared pieces of the Trio-layer tests."""

from __future__ import annotations

from pvtunnel._wire.mux import Multiplexer, Role


def handshaken_muxes() -> tuple[Multiplexer, Multiplexer]:
    """A server multiplexer and its agent's, past the handshake (route "app")."""
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="a", routes=("app",))
    server = Multiplexer(Role.SERVER)
    server.receive_data(agent.data_to_send())
    server.accept()
    agent.receive_data(server.data_to_send())
    return server, agent
