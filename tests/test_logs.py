"""The CLI's log output: request lines in batches, everything else at once, order kept."""

from __future__ import annotations

import io
import json
import logging

import trio
import trio.testing

from pvtunnel._logs import (
    ACCESS_LOGGER,
    MAX_BATCH_LINES,
    MAX_DELAY_S,
    BatchingHandler,
    JsonFormatter,
    TextFormatter,
    serve_log_flushes,
)


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
            assert stream.getvalue() == ""
            await trio.sleep(MAX_DELAY_S)
            assert stream.getvalue() == f"{ACCESS_LOGGER} GET /last\n"
            nursery.cancel_scope.cancel()
    finally:
        root.handlers[:] = saved


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
