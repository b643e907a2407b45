"""The CLI's glibc heap settings: fewer page faults for the buffers a stream churns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pvtunnel import _cli
from pvtunnel._heap import tune_heap

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
