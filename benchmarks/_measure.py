"""Measuring ``run.py``'s rows: wrk runs, transfers, split-write requests and the
slow-requests figure, taken in rounds that visit every row in turn."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import _harness as h
import _httpclient as hc
import _procfs as procfs
import slow
import split
from _results import RowResult, Target, Transfer, WrkResult, fmt, one_line
from _rows import ROW_SETUP, World
from _settings import (
    BIG_BYTES,
    BIG_PATH,
    HOST_HEADER,
    OTHER_LOAD_WARN_CORES,
    QUIET_WAIT_S,
    SMALL_PATH,
    Settings,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

T = TypeVar("T")
WRK_LUA: Final = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, '
    .. '"connect_errors": %.0f, "read_errors": %.0f, "write_errors": %.0f, '
    .. '"status_errors": %.0f, "timeouts": %.0f, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "p999_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def run_wrk(
    world: World, port: int, *, connections: int, threads: int, seconds: int, pids: list[int]
) -> WrkResult:
    """One wrk run against ``/1k``; the tunnel's CPU is sampled around it."""
    script = world.tmp / "report.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    argv = [
        world.tools["wrk"],
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        "-H",
        f"Host: {HOST_HEADER}",
        f"http://{h.LOOPBACK}:{port}{SMALL_PATH}",
    ]
    cpu_before = procfs.cpu_total_s(pids)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise h.BenchError(f"wrk did not finish within {seconds + 60:.0f} s") from exc
    cpu_used = procfs.cpu_total_s(pids) - cpu_before
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise h.BenchError(
            f"wrk failed ({done.returncode}): {one_line(done.stderr + ' ' + done.stdout)[-300:]}"
        )
    data = json.loads(line.removeprefix("WRK_JSON "))
    requests = int(data["requests"])
    duration = data["duration_us"] / 1e6
    errors = {
        key: int(data[key])
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    }
    return WrkResult(
        connections=connections,
        threads=threads,
        requests=requests,
        seconds=duration,
        req_per_s=requests / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
        tunnel_cpu_us_per_req=(cpu_used / requests * 1e6) if pids and requests else None,
    )


def check_wrk(result: WrkResult, row: RowResult, label: str) -> None:
    """Errors in a wrk run make its req/s meaningless (fast 502s are not service)."""
    failed = sum(result.errors.values())
    if failed:
        row.notes.append(f"{label}: {failed} errors {result.errors} of {result.requests}")
    if result.requests == 0 or failed > max(10, result.requests // 1000):
        raise h.BenchError(
            f"{label}: too many errors {result.errors} for {result.requests} requests"
        )


def verify_small(port: int) -> None:
    """GET /1k through the row must return exactly the file."""
    response = hc.http_request(port, "GET", SMALL_PATH, host_header=HOST_HEADER, timeout_s=10)
    if response.status != 200:
        raise h.BenchError(f"GET {SMALL_PATH} answered {response.status}: {response.body[:200]!r}")


def measure_download(world: World, port: int, *, check: bool) -> float:
    """MB/s of one 100 MiB download, checked for status and byte count; with ``check``
    an untimed download compared byte for byte with the file comes first."""
    for verifying in (True, False) if check else (False,):
        response = hc.http_request(
            port,
            "GET",
            BIG_PATH,
            host_header=HOST_HEADER,
            keep_body=verifying,
            timeout_s=120,
            total_timeout_s=300,
        )
        if response.status != 200 or response.body_bytes != BIG_BYTES:
            raise h.BenchError(
                f"download: status {response.status}, {response.body_bytes} of {BIG_BYTES} bytes"
            )
        if verifying and response.body != world.big:
            raise h.BenchError("download: body differs from the file served")
    return BIG_BYTES / response.seconds / 1e6


def measure_upload(world: World, port: int, name: str) -> float:
    """MB/s of one 100 MiB PUT; the stored file is compared with what was sent, so a
    body that did not really cross the tunnel fails the row."""
    target = world.upload_dir / name
    response = hc.http_request(
        port,
        "PUT",
        f"/upload/{name}",
        host_header=HOST_HEADER,
        body=world.big,
        timeout_s=120,
    )
    try:
        if response.status not in (200, 201, 204):
            raise h.BenchError(f"upload: status {response.status}: {response.body[:200]!r}")
        stored = target.read_bytes() if target.exists() else b""
        if stored != world.big:
            raise h.BenchError(
                f"upload: nginx stored {len(stored)} bytes, not the "
                f"{BIG_BYTES} sent (or different bytes)"
            )
    finally:
        target.unlink(missing_ok=True)
    return BIG_BYTES / response.seconds / 1e6


def transfer(speeds: list[float]) -> Transfer:
    return Transfer(runs_mb_s=[round(s, 1) for s in speeds], median_mb_s=h.median(speeds))


def merge_wrk(runs: list[WrkResult]) -> WrkResult:
    """One figure from a row's wrk runs of every round: req/s over all of them, the
    median of the runs' percentiles, the worst maximum, errors and CPU summed."""
    requests = sum(run.requests for run in runs)
    seconds = sum(run.seconds for run in runs)
    cpu_us = [
        run.tunnel_cpu_us_per_req * run.requests
        for run in runs
        if run.tunnel_cpu_us_per_req is not None
    ]
    errors: dict[str, int] = {}
    for run in runs:
        for key, count in run.errors.items():
            errors[key] = errors.get(key, 0) + count
    return WrkResult(
        connections=runs[0].connections,
        threads=runs[0].threads,
        requests=requests,
        seconds=seconds,
        req_per_s=requests / seconds if seconds else 0.0,
        p50_ms=h.median([run.p50_ms for run in runs]),
        p90_ms=h.median([run.p90_ms for run in runs]),
        p99_ms=h.median([run.p99_ms for run in runs]),
        p999_ms=h.median([run.p999_ms for run in runs]),
        max_ms=max(run.max_ms for run in runs),
        errors=errors,
        tunnel_cpu_us_per_req=sum(cpu_us) / requests if cpu_us and requests else None,
    )


def measure_slow(world: World, target: Target, upstream: slow.SlowUpstream) -> slow.SlowResult:
    """1,000 slow requests through the row's agent while wrk measures the fast route."""
    seconds = slow.fast_seconds(world.settings.wrk_s)
    print(
        f"   {slow.SLOW_REQUESTS:,} slow requests + fast runs ({seconds} s each)", file=sys.stderr
    )
    pids = target.tunnel_pids()

    def fast(run_s: int) -> WrkResult:
        return run_wrk(
            world,
            target.port,
            connections=slow.FAST_CONNECTIONS,
            threads=slow.FAST_THREADS,
            seconds=run_s,
            pids=pids,
        )

    result = slow.measure_slow(
        world.children,
        world.logs,
        upstream,
        tunnel_port=target.port,
        tunnel_pids=pids,
        seconds=seconds,
        fast=fast,
    )
    print(f"   slow: {result.summary()}", file=sys.stderr)
    return result


def sample_rss(row: RowResult, target: Target) -> None:
    """Peak RSS of the tunnel's processes, read before they stop."""
    pids = target.tunnel_pids()
    if pids:
        samples = procfs.sample(pids)
        row.processes = [asdict(s) for s in samples]
        row.peak_rss_mib = sum(s.vmhwm_kib for s in samples) / 1024


def wait_for_quiet(limit_s: float = QUIET_WAIT_S, window_s: float = 2.0) -> float:
    """Measure other processes' load in windows until one is quiet or ``limit_s``
    passes; returns the last window's load (cores)."""
    deadline = time.monotonic() + limit_s
    while True:
        others = procfs.ForeignLoad()
        time.sleep(window_s)  # a measuring window, not a readiness wait
        load = others.cores()
        if load <= OTHER_LOAD_WARN_CORES or time.monotonic() > deadline:
            return load


@dataclass
class Running:
    """A row set up and taking load: its target and what its rounds measured so far."""

    row: RowResult
    target: Target
    stack: contextlib.ExitStack[bool | None]  # stops the row's processes
    wrk64: list[WrkResult] = field(default_factory=list)
    wrk1: list[WrkResult] = field(default_factory=list)
    downloads: list[float] = field(default_factory=list)
    uploads: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    split: split.SplitResult = field(default_factory=split.SplitResult)


def measure(world: World, running: Running, label: str, step: Callable[[], T]) -> T:
    """One measurement of one row, again (``--retry-disturbed``) while other processes
    disturb it; the last attempt's figure is returned and its other load recorded."""
    for attempt in range(world.settings.retry_disturbed + 1):
        others = procfs.ForeignLoad()
        figure = step()
        load = others.cores()
        if load <= OTHER_LOAD_WARN_CORES or attempt == world.settings.retry_disturbed:
            break
        print(
            f"   {running.row.name}, {label}: disturbed ({load:.2f} cores used by others); "
            "waiting for quiet, then again",
            file=sys.stderr,
        )
        wait_for_quiet()
    running.loads.append(load)
    return figure


def round_of(world: World, running: Running, index: int, wrk_s: int) -> None:
    """One round of one row: a wrk run at each concurrency, a download and an upload."""
    row, port, pids = running.row, running.target.port, running.target.tunnel_pids()

    def wrk(connections: int, threads: int, label: str) -> WrkResult:
        result = run_wrk(
            world, port, connections=connections, threads=threads, seconds=wrk_s, pids=pids
        )
        check_wrk(result, row, label)
        return result

    if index < world.settings.wrk_rounds:
        running.wrk64.append(
            measure(world, running, "64 connections", lambda: wrk(64, 2, "64 connections"))
        )
        running.wrk1.append(
            measure(world, running, "1 connection", lambda: wrk(1, 1, "1 connection"))
        )
    split_port = running.target.split_port
    if index < world.settings.wrk_rounds and split_port is not None:
        count = split_requests_in_round(world.settings, index)
        running.split.add(
            measure(world, running, "split-write", lambda: split.measure_split(split_port, count))
        )
    if index < world.settings.reps:
        name = f"{row.name.replace(' ', '_')}-{index}"
        running.downloads.append(
            measure(
                world,
                running,
                "download",
                lambda: measure_download(world, port, check=index == 0),
            )
        )
        running.uploads.append(
            measure(world, running, "upload", lambda: measure_upload(world, port, name))
        )
    figures = []
    if index < world.settings.wrk_rounds:
        figures.append(
            f"{running.wrk64[-1].req_per_s:,.0f} / {running.wrk1[-1].req_per_s:,.0f} req/s"
        )
        if split_port is not None:
            figures.append(f"split-write p99 {fmt(running.split.p99_ms, '.2f')} ms")
    if index < world.settings.reps:
        figures.append(f"{running.downloads[-1]:,.0f} / {running.uploads[-1]:,.0f} MB/s")
    print(f"   {row.name}: {', '.join(figures)}", file=sys.stderr, flush=True)


def split_requests_in_round(settings: Settings, index: int) -> int:
    """The split-write requests are spread over the wrk rounds; the first takes the rest."""
    count = split.SPLIT_REQUESTS // settings.wrk_rounds
    return count + (split.SPLIT_REQUESTS % settings.wrk_rounds if index == 0 else 0)


def finish(running: Running) -> None:
    """A row's figures from its rounds."""
    row = running.row
    if running.split.requests:
        row.split = running.split
    if running.wrk64:
        row.wrk64 = merge_wrk(running.wrk64)
    if running.wrk1:
        row.wrk1 = merge_wrk(running.wrk1)
    if running.downloads:
        row.download = transfer(running.downloads)
    if running.uploads:
        row.upload = transfer(running.uploads)
    if running.loads:
        row.other_load_cores = sum(running.loads) / len(running.loads)
        if row.other_load_cores > OTHER_LOAD_WARN_CORES:
            row.notes.append(
                f"other processes used {row.other_load_cores:.2f} cores on "
                "average during this row: its figures are disturbed"
            )


def fail(row: RowResult, exc: BaseException) -> None:
    """Mark the row failed; its first failure stays the error, later ones become notes."""
    error = str(exc) if isinstance(exc, h.BenchError) else f"{type(exc).__name__}: {exc}"
    if row.error is None:
        row.error = error
    else:
        row.notes.append(f"then: {error}")
    row.ok = False
    print(f"   {row.name} FAILED: {error}", file=sys.stderr)


_FAILURES: Final = (h.BenchError, OSError, subprocess.SubprocessError)


class _Guarded:
    """A row's setup as a context: a failure while tearing it down fails that row
    (the others' figures stand); a failure setting it up reaches the caller."""

    def __init__(self, row: RowResult, setup: contextlib.AbstractContextManager[Target]) -> None:
        self._row = row
        self._setup = setup

    def __enter__(self) -> Target:
        return self._setup.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            return bool(self._setup.__exit__(kind, exc, tb))
        except _FAILURES as failure:
            fail(self._row, failure)
            return False  # an exception already on its way out keeps going


def measure_rows(world: World) -> dict[str, RowResult]:
    """Every row set up at once, then measured in rounds that visit the rows in turn.

    The machine's speed drifts by 20-30 % within minutes on a shared VM. Rows measured
    one after another then differ by the minute they ran in; taken in turns, each
    round's drift falls on every row alike, so the ratios between rows hold.
    """
    settings = world.settings
    rows = {name: RowResult(name=name) for name in settings.rows}
    with contextlib.ExitStack() as stack:
        running: list[Running] = []
        for name in settings.rows:
            row = rows[name]
            print(f"== {name}: setting up", file=sys.stderr, flush=True)
            # The row's own stack: a row that fails to come up is stopped at once,
            # not left running beside the others' measurements.
            row_stack = contextlib.ExitStack()
            try:
                target = row_stack.enter_context(_Guarded(row, ROW_SETUP[name](world, row)))
                verify_small(target.port)
                if target.split_port is not None:
                    split.one_request(target.split_port)  # checked; warms a pooled connection
                run_wrk(
                    world,
                    target.port,
                    connections=64,
                    threads=2,
                    seconds=settings.warmup_s,
                    pids=target.tunnel_pids(),
                )
            except _FAILURES as exc:
                fail(row, exc)
                row_stack.close()
                continue
            stack.enter_context(row_stack)
            row.ok = True
            running.append(Running(row=row, target=target, stack=row_stack))
        for index in range(max(settings.wrk_rounds, settings.reps) if running else 0):
            print(f"== round {index + 1}", file=sys.stderr, flush=True)
            # Each round starts at another row, so none is always first after a pause.
            for running_row in running[index % len(running) :] + running[: index % len(running)]:
                if not running_row.row.ok:
                    continue
                try:
                    round_of(world, running_row, index, settings.round_s)
                except _FAILURES as exc:
                    fail(running_row.row, exc)
                    running_row.stack.close()  # stopped now, not beside the others' rounds
        for running_row in running:
            finish(running_row)
            report_row(running_row.row)
            if running_row.row.ok:  # a failed row's processes are gone
                sample_rss(running_row.row, running_row.target)
        for running_row in running:
            upstream = running_row.target.slow_upstream
            if upstream is not None and running_row.row.ok:  # after the RSS sample
                try:
                    running_row.row.slow = measure_slow(world, running_row.target, upstream)
                except _FAILURES as exc:
                    fail(running_row.row, exc)
    return rows


def report_row(row: RowResult) -> None:
    print(f"== {row.name}", file=sys.stderr)
    if row.wrk64:
        print(f"   64 conns: {row.wrk64.req_per_s:,.0f} req/s", file=sys.stderr)
    if row.wrk1:
        print(f"   1 conn: {row.wrk1.req_per_s:,.0f} req/s", file=sys.stderr)
    if row.download:
        print(f"   download: {row.download.median_mb_s:,.0f} MB/s", file=sys.stderr)
    if row.upload:
        print(f"   upload: {row.upload.median_mb_s:,.0f} MB/s", file=sys.stderr)
