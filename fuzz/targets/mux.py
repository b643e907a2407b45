"""The multiplexer: a hostile peer, and two multiplexers driven against a model."""

from __future__ import annotations

from fuzz._registry import Target, given_target, machine_target
from tests.wire import test_mux_hostile, test_mux_machine

TARGETS: list[Target] = [
    given_target(
        "mux-hostile",
        "a peer keeping or breaking the rules: accepted or refused with the code the model says",
        test_mux_hostile.test_a_multiplexer_does_what_the_rules_say_to_a_hostile_peer,
    ),
    machine_target(
        "mux-machine",
        "two multiplexers, random commands and delivery, hostile frames, vs two models",
        test_mux_machine.MuxMachine,
    ),
]
