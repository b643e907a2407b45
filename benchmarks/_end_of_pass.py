"""Frames queued during one pass of Trio's scheduler leave together, when the pass ends.

Used by ``trio_relay.py``, the benchmark's floor under any tunnel on Trio. Every
task that queues frames could wake a writer task, which sends what the whole pass
queued in one write; but that writer runs only in the next pass, an extra round of
the scheduler. A Trio instrument's ``before_io_wait`` runs once per pass, after
every runnable task has had its turn and before the scheduler blocks: the end of
the batch. `EndOfPassSender` writes each waiting side's frames there, without
yielding, when the socket takes them at once; what it cannot write that way goes
to the side's writer task.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

logger = logging.getLogger(__name__)

_SENDER: trio.lowlevel.RunVar[EndOfPassSender] = trio.lowlevel.RunVar("pvtunnel_pass_sender")


class PassSending(Protocol):
    """What `EndOfPassSender` sends for: one side of the relay's multiplexed connection."""

    @property
    def label(self) -> str: ...

    def send_at_end_of_pass(self) -> bool:
        """Write what is queued without yielding; True if that woke tasks."""
        ...

    def wake_writer_task(self) -> bool:
        """Leave what is queued to a writer task; True if that woke it."""
        ...


class EndOfPassSender(trio.abc.Instrument):
    """Sends for the tunnels that queued frames in this pass (see the module docstring)."""

    def __init__(self) -> None:
        self.waiting: dict[PassSending, None] = {}

    def before_io_wait(self, timeout: float) -> None:
        if not self.waiting:
            return
        tunnels, self.waiting = self.waiting, {}
        woke = False
        for tunnel in tunnels:
            try:
                woke = tunnel.send_at_end_of_pass() or woke
            except Exception:
                # An instrument that raises is removed by Trio, and every tunnel of
                # the run would then wait on its writer alone: never let one out.
                logger.exception("%s: sending at the end of a pass failed", tunnel.label)
                woke = tunnel.wake_writer_task() or woke
        if woke and timeout > 0:
            _rescan()


def _rescan() -> None:
    """Make the scheduler look again before it blocks.

    It is about to wait as long as it computed before the tasks woken here became
    runnable; a callback queued now interrupts that wait at once.
    """
    trio.lowlevel.current_trio_token().run_sync_soon(_nothing)


def _nothing() -> None:
    pass


def end_of_pass_sender() -> EndOfPassSender:
    """The sender of the current Trio run, installed on first use."""
    try:
        return _SENDER.get()
    except LookupError:
        sender = EndOfPassSender()
        trio.lowlevel.add_instrument(sender)
        _SENDER.set(sender)
        return sender
