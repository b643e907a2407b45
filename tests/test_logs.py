"""The CLI's log output: request lines in batches, everything else at once, order kept;
written by a thread of the handler's own, so a stream that takes nothing stops no one."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from pvtunnel._logs import (
    ACCESS_LOGGER,
    MAX_BATCH_LINES,
    MAX_DELAY_S,
    MAX_WAITING_CHARS,
    BatchingHandler,
    JsonFormatter,
    LogThrottle,
    TextFormatter,
    direct_access_handler,
    say,
    serve_log_flushes,
)
from pvtunnel._trio.state import ACCESS_LINE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


def _record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, message, None, None)


def _handler() -> tuple[BatchingHandler, io.StringIO]:
    stream = io.StringIO()
    handler = BatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    return handler, stream


def test_request_lines_wait_for_a_batch_and_other_lines_take_them_along_in_order() -> None:
    handler, stream = _handler()
    handler.handle(_record(ACCESS_LOGGER, "GET /1"))
    handler.handle(_record(ACCESS_LOGGER, "GET /2"))
    assert stream.getvalue() == ""
    assert handler.pending == 2
    handler.handle(_record("pvtunnel.server", "agent a connected"))
    assert handler.written()
    assert stream.getvalue().splitlines() == [
        f"{ACCESS_LOGGER} GET /1",
        f"{ACCESS_LOGGER} GET /2",
        "pvtunnel.server agent a connected",
    ]
    assert handler.pending == 0


def test_a_full_batch_is_written_in_one_write() -> None:
    handler, stream = _handler()
    writes: list[str] = []
    original = stream.write

    def counted(text: str) -> int:
        writes.append(text)
        return original(text)

    stream.write = counted  # type: ignore[method-assign]  # count the handler's writes
    for index in range(MAX_BATCH_LINES):
        handler.handle(_record(ACCESS_LOGGER, f"GET /{index}"))
    assert handler.written()
    assert len(writes) == 1
    assert len(writes[0].splitlines()) == MAX_BATCH_LINES


def test_flush_writes_what_waits_and_nothing_twice() -> None:
    handler, stream = _handler()
    handler.handle(_record(ACCESS_LOGGER, "GET /"))
    handler.flush()
    handler.flush()
    assert stream.getvalue() == f"{ACCESS_LOGGER} GET /\n"


async def test_waiting_lines_are_written_by_the_timer_when_traffic_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler, stream = _handler()
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_log_flushes)
            await trio.testing.wait_all_tasks_blocked()
            handler.handle(_record(ACCESS_LOGGER, "GET /last"))
            await trio.sleep(MAX_DELAY_S / 2)
            assert handler.written()
            assert stream.getvalue() == ""
            await trio.sleep(MAX_DELAY_S)
            assert handler.written()
            assert stream.getvalue() == f"{ACCESS_LOGGER} GET /last\n"
            nursery.cancel_scope.cancel()
    finally:
        root.handlers[:] = saved


# Only keeps a failing run finite: nothing here waits for it to pass.
STALL_LIMIT_S = 10.0


def test_a_stream_that_takes_nothing_stops_no_one_and_drops_lines_with_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stderr a pipe nobody reads: logging and `say` return at once; past
    MAX_WAITING_CHARS lines are dropped, and once the pipe is read a line says how
    many, where they were."""
    read_fd, write_fd = os.pipe()
    stream = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115  # closed below
    handler = BatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    read = threading.Event()
    timed_out: list[bool] = []
    received = bytearray()

    def reader() -> None:
        timed_out.append(not read.wait(STALL_LIMIT_S))
        while chunk := os.read(read_fd, 65536):
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    sent = 6000
    try:
        for index in range(sent):
            handler.handle(_record("pvtunnel.server", f"{index:05d} {'x' * 1000}"))
        say("pvtunnel serve: ready")
        dropped = handler.dropped
        read.set()
        assert handler.written(STALL_LIMIT_S)
        handler.handle(_record("pvtunnel.server", "after"))
        assert handler.written(STALL_LIMIT_S)
    finally:
        read.set()
        stream.close()
        thread.join(STALL_LIMIT_S)
        os.close(read_fd)
    assert timed_out == [False]  # every call above returned while nothing was read
    *kept, notice, last = received.decode().splitlines()
    assert [int(line.split()[1]) for line in kept] == list(range(len(kept)))
    assert len(kept) >= MAX_WAITING_CHARS // (len(kept[0]) + 1)  # with its newline
    assert dropped == sent - len(kept) + 1  # the ready line too
    assert re.fullmatch(rf"pvtunnel\.cli {dropped} log lines dropped: .*", notice), notice
    assert last == "pvtunnel.server after"
    assert handler.dropped == 0


def test_the_formatters_give_the_time_of_each_line() -> None:
    record = _record(ACCESS_LOGGER, "GET /")
    record.created = 86400.5  # 1970-01-02 00:00:00.5 UTC
    record.msecs = 500.0
    assert json.loads(JsonFormatter().format(record))["ts"] == "1970-01-02T00:00:00.500Z"
    later = _record(ACCESS_LOGGER, "GET /")
    later.created = 86461.0
    later.msecs = 0.0
    assert json.loads(JsonFormatter().format(later))["ts"] == "1970-01-02T00:01:01.000Z"
    text = TextFormatter()
    first, second = text.format(record), text.format(later)
    assert first.endswith(f"INFO    {ACCESS_LOGGER}: GET /")
    assert first[:19] != second[:19]  # another second, another time


ACCESS_ARGS = ("127.0.0.1:5", "GET", "app", "/a\nb", 200, 1024, 1.5, "bench", "app", 7)
ACCESS_FIELDS: dict[str, object] = {
    "client": "127.0.0.1:5",
    "method": "GET",
    "host": "app",
    "target": "/a\nb",
    "status": 200,
    "bytes_in": 0,
    "bytes_out": 1024,
    "duration_ms": 1.5,
    "route": "app",
    "agent": "bench",
    "stream_id": 7,
}


@pytest.fixture
def root_handler() -> Iterator[Callable[[logging.Formatter], tuple[BatchingHandler, io.StringIO]]]:
    """Make the root logger's only handler a BatchingHandler, as the CLI does."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def install(formatter: logging.Formatter) -> tuple[BatchingHandler, io.StringIO]:
        stream = io.StringIO()
        handler = BatchingHandler(stream)
        handler.setFormatter(formatter)
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        return handler, stream

    yield install
    root.handlers[:], level = saved
    root.setLevel(level)


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_a_direct_request_line_is_the_line_a_record_makes(
    formatter: type[TextFormatter | JsonFormatter],
    root_handler: Callable[[logging.Formatter], tuple[BatchingHandler, io.StringIO]],
) -> None:
    handler, stream = root_handler(formatter())
    assert direct_access_handler() is handler
    handler.write_access(ACCESS_LINE % ACCESS_ARGS, dict(ACCESS_FIELDS))
    assert handler.pending == 1  # batched like a record of the access logger
    logging.getLogger(ACCESS_LOGGER).info(ACCESS_LINE, *ACCESS_ARGS, extra=ACCESS_FIELDS)
    handler.flush()
    direct, by_record = stream.getvalue().splitlines()
    if formatter is JsonFormatter:
        direct_data, record_data = json.loads(direct), json.loads(by_record)
        # Written a moment apart: only the milliseconds may differ.
        assert direct_data.pop("ts")[:19] == record_data.pop("ts")[:19]
        assert list(direct_data.items()) == list(record_data.items())
    else:
        assert direct[20:] == by_record[20:]  # the same line after the time
        assert "\\n" in direct  # and just as escaped


def test_anything_else_attached_on_the_way_gets_records(
    root_handler: Callable[[logging.Formatter], tuple[BatchingHandler, io.StringIO]],
) -> None:
    handler, _ = root_handler(TextFormatter())
    assert direct_access_handler() is handler
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    parent = logging.getLogger("pvtunnel")
    other = logging.StreamHandler(io.StringIO())
    keep = logging.Filter()
    changes: list[tuple[Callable[[], object], Callable[[], object]]] = [
        (lambda: root.addHandler(other), lambda: root.removeHandler(other)),
        (lambda: parent.addHandler(other), lambda: parent.removeHandler(other)),
        (lambda: access.addHandler(other), lambda: access.removeHandler(other)),
        (lambda: access.addFilter(keep), lambda: access.removeFilter(keep)),
        (lambda: root.addFilter(keep), lambda: root.removeFilter(keep)),
        (lambda: handler.addFilter(keep), lambda: handler.removeFilter(keep)),
        (lambda: setattr(access, "propagate", False), lambda: setattr(access, "propagate", True)),
        (lambda: handler.setLevel(logging.WARNING), lambda: handler.setLevel(logging.NOTSET)),
        (
            lambda: handler.setFormatter(logging.Formatter()),
            lambda: handler.setFormatter(TextFormatter()),
        ),
    ]
    for change, undo in changes:
        change()
        try:
            assert direct_access_handler() is None
        finally:
            undo()
        assert direct_access_handler() is not None


def test_a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    """A burst is seen at its start, and its size with the next line let through."""
    throttle = LogThrottle(10.0)
    assert throttle.allow(100.0) == 0
    assert [throttle.allow(100.0 + step) for step in (0.0, 1.0, 9.999)] == [None] * 3
    assert throttle.allow(110.0) == 3
    assert throttle.allow(115.0) is None
    # However long the quiet, the next line carries only what was held since the last.
    assert throttle.allow(1000.0) == 1
    assert throttle.allow(1010.0) == 0


def test_the_library_logs_under_its_five_names() -> None:
    """A program embedding pvtunnel routes its lines by logger name
    (docs/operations.md lists them): a module logging under its own ``__name__``
    would slip past such a setup."""
    import importlib
    import pkgutil

    import pvtunnel

    for module in pkgutil.walk_packages(pvtunnel.__path__, "pvtunnel."):
        if module.name != "pvtunnel.__main__":
            importlib.import_module(module.name)
    names = {name for name in logging.root.manager.loggerDict if name.startswith("pvtunnel")}
    assert names <= {
        "pvtunnel",  # a placeholder `logging` makes for the dotted names below
        "pvtunnel.server",
        "pvtunnel.agent",
        "pvtunnel.access",
        "pvtunnel.admin",
        "pvtunnel.cli",
    }
    assert {"pvtunnel.server", "pvtunnel.agent"} <= names
