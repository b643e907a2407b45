"""The CLI's heap settings: glibc's (fewer page faults for the buffers a stream
churns), and start-up objects frozen out of garbage collection once ready."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio

from pvtunnel import _cli, _logs as logs
from pvtunnel._config import (
    AgentConfig,
    InternalConfig,
    Secret,
    ServerConfig,
    ServerEndpoint,
    with_agent_overrides,
)
from pvtunnel._heap import tune_heap

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

# Allocates and frees 256 KiB buffers (a WebSocket message's size) and prints the
# page faults that took; with "tuned" first applies the settings.
_CHURN = textwrap.dedent(
    """
    import os, resource, sys
    if sys.argv[1] == "tuned":
        # Imported only here: its imports leave the heap in a state where the plain
        # run's faults vary from run to run (0 to 13,000 on Python 3.12).
        from pvtunnel._heap import tune_heap
        assert tune_heap()
    block = os.urandom(256 * 1024)
    for _ in range(10):
        bytes(bytearray(block))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        bytes(bytearray(block))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def _faults(mode: str, **environ: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(environ)
    result = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(result.stdout)


def test_tuned_heap_reuses_pages_for_large_buffers() -> None:
    if not _glibc():
        assert tune_heap() is False  # nothing to tune outside glibc
        return
    # glibc's default mmap threshold (128 KiB) rises by itself once a large mmapped
    # block is freed, which the interpreter may or may not have done by the time
    # the script runs (3.13 has; 3.12 only sometimes). Set by hand, it stays: then
    # every copy of a 256 KiB buffer is a fresh mapping, and all its pages fault.
    plain = _faults("plain", MALLOC_MMAP_THRESHOLD_="131072")
    tuned = _faults("tuned")
    assert plain > 100 * 64 // 2
    # The tuned heap keeps the pages: 100 copies (64 pages each) fault next to none in.
    assert tuned < 100 * 64 // 20


def test_environment_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_heap() is False


@pytest.mark.parametrize(
    ("argv", "tuned"),
    [
        (["serve"], True),
        (["agent"], True),
        (["demo"], True),
        (["check", "server.toml"], False),
        (["status"], False),
    ],
)
def test_only_long_running_commands_tune_the_heap(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], tuned: bool
) -> None:
    calls: list[str] = []

    def record() -> bool:
        calls.append("tuned")
        return True

    monkeypatch.setattr(_cli, "tune_heap", record)
    for name in ("_serve", "_agent", "_demo", "_check", "_status"):
        monkeypatch.setattr(_cli, name, lambda args: 0)
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(argv)
    assert exit_info.value.code == 0
    assert calls == (["tuned"] if tuned else [])


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap as the collector normally sees it, before and after."""
    gc.unfreeze()
    yield
    gc.unfreeze()


async def _until_ready(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, run: Callable[[], Awaitable[int]]
) -> dict[str, Any]:
    """Start a command's trio part; the fields of its ready line, and ``frozen``: how
    many objects were frozen when it was said."""
    ready = trio.Event()
    fields: dict[str, Any] = {}

    def say(message: str, *, level: str = "info", **said: Any) -> None:
        logs.say(message, level=level, **said)
        if said.get("event") == "ready":
            fields.update(said, frozen=gc.get_freeze_count())
            ready.set()

    monkeypatch.setattr(_cli, "say", say)
    nursery.start_soon(run)
    await ready.wait()
    return fields


# Start-up leaves tens of thousands of objects (this test process more); none were
# frozen before the command started.
_START_UP_OBJECTS = 10_000


@pytest.mark.usefixtures("unfrozen")
async def test_serve_and_agent_freeze_their_start_up_objects_once_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = Secret("t" * 32)
    server = ServerConfig(host="127.0.0.1", internal=InternalConfig(port=0, token=token))
    async with trio.open_nursery() as nursery:
        said = await _until_ready(monkeypatch, nursery, partial(_cli._run_server, server))
        assert said["frozen"] > _START_UP_OBJECTS
        gc.unfreeze()
        agent = with_agent_overrides(
            AgentConfig(
                client_id="frozen", server=ServerEndpoint(urls=(said["internal"],), token=token)
            ),
            routes=["app=127.0.0.1:9"],
        )
        said = await _until_ready(monkeypatch, nursery, partial(_cli._run_agent, agent))
        assert said["frozen"] > _START_UP_OBJECTS
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("unfrozen")
async def test_demo_freezes_its_start_up_objects_once_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with trio.open_nursery() as nursery:
        said = await _until_ready(monkeypatch, nursery, partial(_cli._run_demo, 0))
        assert said["frozen"] > _START_UP_OBJECTS
        nursery.cancel_scope.cancel()
