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

import json
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Final, TextIO

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ACCESS_LOGGER: Final = "pvtunnel.access"
MAX_BATCH_LINES: Final = 256
MAX_DELAY_S: Final = 0.2

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

    Call `flush` when the program goes idle or ends (`serve_log_flushes` does it on
    a timer; `logging.shutdown`, run at exit, does it last).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._first_at = 0.0

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

    def _add(self, line: str, *, is_access: bool) -> None:
        lines = self._lines
        lines.append(line)
        if not is_access or len(lines) >= MAX_BATCH_LINES:
            self.flush()
            return
        now = time.monotonic()
        if len(lines) == 1:
            self._first_at = now
        elif now - self._first_at >= MAX_DELAY_S:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if not self._lines:
                return
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr is gone (closed pipe): nothing left to tell
        finally:
            self.release()

    @property
    def pending(self) -> int:
        """Lines written to this handler and not yet to its stream."""
        return len(self._lines)


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
                handler.flush()


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


CLI_LOGGER: Final = "pvtunnel.cli"


def say(message: str, *, level: str = "info", **fields: object) -> None:
    """Print a line meant for whoever started the command, whatever ``--log-level`` says:
    a ready line, a generated token, why the command stops.

    With the CLI's ``--log-format json`` it is one object like every log line (the
    ``message`` as in text, ``fields`` as keys of their own), so a program reading
    stderr reads JSON only; otherwise the message as it is. Log lines waiting in a
    batch go first, so the order on stderr is the order things happened in.
    """
    formatter = None
    for handler in _batching_handlers():
        handler.flush()
        if isinstance(handler.formatter, JsonFormatter):
            formatter = handler.formatter
    if formatter is not None:
        message = formatter.line(time.time(), level, CLI_LOGGER, message, fields)
    print(message, file=sys.stderr, flush=True)


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
