"""Log output for the CLI: readable lines by default, one JSON object per line for machines.

The library logs through a few named loggers (`pvtunnel.server`,
`pvtunnel.agent`, `pvtunnel.access`, `pvtunnel.admin`, `pvtunnel.cli`) and nothing
else; choosing handlers and formats is the program's business, so its handlers and
formatters are used by the CLI alone.

The access log has a line per proxied request, so its cost is paid per request:
the CLI skips what no line of ours shows (the caller's file and line, which
`logging` finds by walking the stack; the thread and process, a system call per
record), and writes request lines in batches (`BatchingHandler`): one write per
batch of up to `MAX_BATCH_LINES` lines, never holding one longer than
`MAX_DELAY_S`. Every other line (connections, warnings, errors) is written at
once, with whatever request lines wait before it, so the order is kept.

While the CLI's own setup is the whole of it (one `BatchingHandler` on the root
logger with one of the formatters here, nothing else attached on the way),
`direct_access_handler` lets the server format a request line straight into the
batch: the same line, byte for byte, without a `logging.LogRecord` per request,
which was most of what a line cost. Any other setup (a library user's handlers,
pytest's log capture) gets ordinary records.

`LogThrottle` is for the library's own lines about something a peer can repeat at
will: a flood of them would bury every other line.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Final, TextIO

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ACCESS_LOGGER: Final = "pvtunnel.access"
MAX_BATCH_LINES: Final = 256
MAX_DELAY_S: Final = 0.2
# Log text a stream that does not take it may hold in memory; past it lines are dropped.
MAX_WAITING_CHARS: Final = 4 * 1024 * 1024
# How long `BatchingHandler.flush` (at exit, last) waits for a stream that takes nothing.
FLUSH_WAIT_S: Final = 5.0
CLI_LOGGER: Final = "pvtunnel.cli"

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _SecondsCache:
    """The formatted time of the current second, made once per second, not per line."""

    def __init__(self, convert: Callable[[float], time.struct_time], pattern: str) -> None:
        self._convert = convert
        self._pattern = pattern
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._text = time.strftime(self._pattern, self._convert(created))
        return self._text


class TextFormatter(logging.Formatter):
    """``2026-12-06 05:07:21 INFO    pvtunnel.access: ...``, local time.

    One record is one line, whatever its message holds (`printable`); a traceback
    (the record's exception) still spans its own lines after it.
    """

    def __init__(self, fmt: str = "%(asctime)s %(levelname)-7s %(name)s: %(message)s") -> None:
        super().__init__(fmt)
        self._seconds = _SecondsCache(time.localtime, "%Y-%m-%d %H:%M:%S")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._seconds(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def access_line(self, created: float, message: str, fields: dict[str, object]) -> str:
        """What `format` makes of an INFO record of the access logger with this message."""
        return f"{self._seconds(created)} INFO    {ACCESS_LOGGER}: {printable(message)}"


class JsonFormatter(logging.Formatter):
    """One object per line with stable keys: ts, level, logger, message, then extras."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondsCache(time.gmtime, "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": self._seconds(record.created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)

    def access_line(self, created: float, message: str, fields: dict[str, object]) -> str:
        """What `format` makes of an INFO record of the access logger with this message
        and these ``extra`` fields (which never start with ``_`` nor shadow a record's)."""
        return self.line(created, "info", ACCESS_LOGGER, message, fields)

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, object]
    ) -> str:
        """A line as `format` makes it, from its parts rather than a record."""
        data: dict[str, object] = {
            "ts": self._seconds(created) + f".{int((created - int(created)) * 1000):03d}Z",
            "level": level,
            "logger": logger,
            "message": message,
            **fields,
        }
        return json.dumps(data, default=str)


class BatchingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes access-log lines in batches (see the module docstring).

    The writing itself is done by a thread of its own (`_Writer`), so a stream that
    stops taking lines (stderr a pipe nobody reads, a terminal on hold) never stops
    the program that logs: the lines wait, up to `MAX_WAITING_CHARS`, and past that
    they are dropped and counted, and a line saying how many goes out first once
    the stream takes lines again.

    Call `write_out` when the program goes idle (`serve_log_flushes` does it on a
    timer); `flush` also waits (up to `FLUSH_WAIT_S`) for the stream to take them
    (`logging.shutdown`, run at exit, does it last).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._first_at = 0.0
        self._writer = _Writer(stream)
        self._dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, is_access=record.name == ACCESS_LOGGER)

    def write_access(self, message: str, fields: dict[str, object]) -> None:
        """Batch a request line without a record (see `direct_access_handler`)."""
        formatter = self.formatter
        assert isinstance(formatter, TextFormatter | JsonFormatter)
        self.acquire()
        try:
            self._add(formatter.access_line(time.time(), message, fields), is_access=True)
        finally:
            self.release()

    def write_line(self, line: str) -> None:
        """Write ``line`` as it is, after the lines that wait (see `say`)."""
        self.acquire()
        try:
            self._add(line, is_access=False)
        finally:
            self.release()

    def _add(self, line: str, *, is_access: bool) -> None:
        lines = self._lines
        lines.append(line)
        if not is_access or len(lines) >= MAX_BATCH_LINES:
            self.write_out()
            return
        now = time.monotonic()
        if len(lines) == 1:
            self._first_at = now
        elif now - self._first_at >= MAX_DELAY_S:
            self.write_out()

    def write_out(self) -> None:
        """Hand the waiting lines to the writer; never waits for the stream."""
        self.acquire()
        try:
            lines = self._lines
            if not lines:
                return
            if self._dropped:
                lines.insert(0, self._dropped_line())
            if self._writer.put("\n".join(lines) + "\n"):
                self._dropped = 0
            else:
                self._dropped += len(lines) - (1 if self._dropped else 0)
            lines.clear()
        finally:
            self.release()

    def _dropped_line(self) -> str:
        message = (
            f"{self._dropped} log lines dropped: the log's stream (stderr) took "
            f"none of the last {MAX_WAITING_CHARS // 1024} KiB written to it"
        )
        record = logging.makeLogRecord(
            {
                "name": CLI_LOGGER,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": message,
                "event": "log_lines_dropped",
                "dropped": self._dropped,
            }
        )
        return self.format(record)

    def flush(self) -> None:
        """`write_out`, then wait until the stream took everything (`FLUSH_WAIT_S` at most)."""
        self.write_out()
        self._writer.wait(FLUSH_WAIT_S)

    def written(self, timeout_s: float = FLUSH_WAIT_S) -> bool:
        """Wait until the stream took every line handed to the writer; False: it did
        not within ``timeout_s``."""
        return self._writer.wait(timeout_s)

    @property
    def pending(self) -> int:
        """Lines written to this handler and not yet handed to its writer."""
        return len(self._lines)

    @property
    def dropped(self) -> int:
        """Lines dropped since the last line the writer took (see the class docstring)."""
        return self._dropped


class _Writer:
    """Writes text to a stream from a thread of its own, holding at most
    `MAX_WAITING_CHARS` that the stream has not taken yet.

    A stream with a file descriptor is written with `os.write` on it, not through
    the stream's own buffer: a thread stuck in a write while holding that buffer's
    lock would make the interpreter abort at exit, when it flushes the stream.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: StringIO
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._changed = threading.Condition(threading.Lock())
        self._texts: collections.deque[str] = collections.deque()
        self._waiting = 0  # characters queued or being written
        self._thread: threading.Thread | None = None
        self._writes = 0  # writes done
        self._stuck_at: int | None = None  # `_writes` when a wait last ran out

    def put(self, text: str) -> bool:
        """Queue ``text``; False (dropped) when that would hold more than allowed."""
        with self._changed:
            if self._waiting and self._waiting + len(text) > MAX_WAITING_CHARS:
                return False
            self._texts.append(text)
            self._waiting += len(text)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pvtunnel-log-writer", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()
        return True

    def wait(self, timeout_s: float) -> bool:
        """Until the stream took everything, at most ``timeout_s``; not at all while
        it has taken nothing since a wait ran out (exit waits once, not per flush)."""
        with self._changed:
            if self._stuck_at == self._writes:
                timeout_s = 0
            if self._changed.wait_for(lambda: not self._waiting, timeout_s):
                return True
            self._stuck_at = self._writes
            return False

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._texts))
                text = "".join(self._texts)
                self._texts.clear()
            # A stream that is gone (a closed pipe) leaves nothing to tell.
            with contextlib.suppress(OSError, ValueError):
                self._write(text)
            with self._changed:
                self._waiting -= len(text)
                self._writes += 1
                self._changed.notify_all()

    def _write(self, text: str) -> None:
        if self._fd is None:
            self._stream.write(text)
            self._stream.flush()
            return
        self._stream.flush()  # whatever was printed to it before goes first
        data = memoryview(text.encode(self._encoding, "backslashreplace"))
        while data:
            data = data[os.write(self._fd, data) :]


def direct_access_handler() -> BatchingHandler | None:
    """The handler to give request lines to directly, when `logging` would do no more.

    That is when every record of the access logger would end in one `BatchingHandler`
    on the root logger, formatted by `TextFormatter` or `JsonFormatter` (exactly
    those, not subclasses), with no filter or other handler on the way. The caller
    has checked that INFO is enabled for the access logger.
    """
    logger = _access_logger
    if logger.filters:
        return None
    while logger.parent is not None:  # up to the root
        if logger.handlers or not logger.propagate or logger.disabled:
            return None
        logger = logger.parent
    if logger.filters or len(logger.handlers) != 1:
        return None
    handler = logger.handlers[0]
    if (
        type(handler) is not BatchingHandler
        or handler.filters
        or handler.level > logging.INFO
        or type(handler.formatter) not in (TextFormatter, JsonFormatter)
    ):
        return None
    return handler


_access_logger = logging.getLogger(ACCESS_LOGGER)


def _batching_handlers() -> Iterator[BatchingHandler]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchingHandler):
            yield handler


async def serve_log_flushes(interval_s: float = MAX_DELAY_S) -> None:
    """Write waiting access-log lines every ``interval_s``, so none waits long at idle."""
    while True:
        await trio.sleep(interval_s)
        for handler in _batching_handlers():
            if handler.pending:
                handler.write_out()


class LogThrottle:
    """Lets a repeated line through at most once per ``interval_s``, and counts the rest.

    The first of a burst is written at once, so a log shows when it began; the
    count of those held back goes out with the next line let through, so a log
    still shows how big it was (a counter in ``/metrics`` has every one).
    """

    __slots__ = ("_held", "_interval_s", "_next_at")

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next_at = -math.inf
        self._held = 0

    def allow(self, now: float) -> int | None:
        """None when this line is to be held back (it is counted); else how many
        were held back since the last one let through."""
        if now < self._next_at:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next_at = now + self._interval_s
        return held


def say(message: str, *, level: str = "info", **fields: object) -> None:
    """Print a line meant for whoever started the command, whatever ``--log-level`` says:
    a ready line, a generated token, why the command stops.

    With the CLI's ``--log-format json`` it is one object like every log line (the
    ``message`` as in text, ``fields`` as keys of their own), so a program reading
    stderr reads JSON only; otherwise the message as it is. Log lines waiting in a
    batch go first, so the order on stderr is the order things happened in. When the
    CLI's handler writes to stderr, the line goes through it, so a stderr that takes
    nothing does not stop the program here either.
    """
    formatter = None
    through = None
    for handler in _batching_handlers():
        if handler.stream is sys.stderr:
            through = handler
        else:
            handler.flush()
        if isinstance(handler.formatter, JsonFormatter):
            formatter = handler.formatter
    if formatter is not None:
        message = formatter.line(time.time(), level, CLI_LOGGER, message, fields)
    if through is not None:
        through.write_line(message)
    else:
        print(message, file=sys.stderr, flush=True)


def flush_logs() -> None:
    """Write out what the CLI's handlers hold, waiting (boundedly) for the stream."""
    for handler in _batching_handlers():
        handler.flush()


def printable(text: str) -> str:
    """``text`` with every unprintable character escaped (``\\n``, ``\\x1b``, ``\\u2028``).

    Peers choose some of what reaches a log line (agent ids, reasons, hosts): a
    newline in them could forge a whole line, and ESC could drive the terminal.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def configure_logging(level: str, log_format: str) -> None:
    # Documented switches (the logging HOWTO, "Optimization") for what no line shows.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no stack walk for the caller's file and line
    handler = BatchingHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        old.flush()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
