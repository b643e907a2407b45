"""The multiplexer: hostile peers, and two multiplexers driven against a model."""

from __future__ import annotations

from fuzz._registry import Target, given_target, machine_target
from tests.wire import test_mux, test_mux_machine

TARGETS: list[Target] = [
    given_target(
        "mux-hostile",
        "an open multiplexer fed mutated frames raises only RemoteProtocolError",
        test_mux.test_an_open_multiplexer_fed_anything_raises_only_remote_protocol_error,
    ),
    machine_target(
        "mux-machine",
        "two multiplexers, random commands and delivery, vs a model (both credit levels)",
        test_mux_machine.MuxMachine,
    ),
]
