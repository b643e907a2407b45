"""1,000 concurrent slow requests through one agent, next to fast ones.

The bar: "1,000 concurrent slow requests through one agent: all complete; meanwhile
fast requests' p99 stays under 10 ms and under 2 x their p99 alone."

``run.py`` uses this module for its ``pvtunnel`` row:

- :func:`slow_upstream` starts the *slow upstream* (this file run as
  ``slow.py serve``): a Trio HTTP/1.1 server on 127.0.0.1, port 0, that holds every
  request until it is released through ``GET /_control/release`` (or, as a safety net,
  until ``--hold-max-s`` after the request arrived, which stays below the server's
  ``upstream_response_s`` of 60 s), then answers 200 with ``held TARGET``.
  ``GET /_control/stats`` reports how many requests it holds.
- The row's one agent gets a second route, ``slow`` -> that upstream
  (:func:`agent_route_args`), next to ``app`` -> nginx.
- :func:`measure_slow`: the fast run alone (wrk, 4 connections, 1 thread, on the
  ``app`` route), then the *slow client* (this file run as ``slow.py client``: 1,000
  TCP connections, one ``GET /slow/N`` with ``Host: slow`` each); once the upstream
  reports all 1,000 held, the same fast run again; then the release, and every slow
  answer is checked (status 200 and its own body, so crossed answers count as
  failures).

Only loopback addresses are used; every child is stopped and every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import _harness as h
import _httpclient as hc
import _procfs as procfs
import h11
import trio

from pvtunnel._trio.demo import read_request, send_response

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

SCRIPT: Final = Path(__file__).resolve()
SLOW_HOST: Final = "slow"
SLOW_REQUESTS: Final = 1000
FAST_CONNECTIONS: Final = 4
FAST_THREADS: Final = 1
P99_LIMIT_MS: Final = 10.0
P99_FACTOR: Final = 2.0
# The server answers 504 when an upstream has not answered in upstream_response_s
# (60 s by default): the fallback hold stays below it, and the whole measurement
# (opening + fast run) fits inside the hold.
HOLD_MAX_S: Final = 45.0
MAX_FAST_S: Final = 25
OPEN_TIMEOUT_S: Final = 15.0
COMPLETE_TIMEOUT_S: Final = 20.0
CONNECT_CONCURRENCY: Final = 100
CONTROL: Final = b"/_control/"
RESULT_PREFIX: Final = "RESULT "
READY_WORD: Final = "slow upstream ready"


def raise_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit to ``needed`` (up to the hard limit); children
    started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --------------------------------------------------------------------------- upstream


@dataclass
class HoldState:
    """What the slow upstream holds and has answered."""

    release: trio.Event
    hold_max_s: float
    held: int = 0
    peak_held: int = 0
    answered: int = 0
    answered_by_timeout: int = 0
    send_failed: int = 0
    connections: int = 0

    def stats(self) -> dict[str, int]:
        return {
            "held": self.held,
            "peak_held": self.peak_held,
            "answered": self.answered,
            "answered_by_timeout": self.answered_by_timeout,
            "send_failed": self.send_failed,
            "connections": self.connections,
            "released": int(self.release.is_set()),
        }


async def _hold(state: HoldState, target: bytes) -> bytes:
    state.held += 1
    state.peak_held = max(state.peak_held, state.held)
    try:
        with trio.move_on_after(state.hold_max_s) as scope:
            await state.release.wait()
        if scope.cancelled_caught:
            state.answered_by_timeout += 1
    finally:
        state.held -= 1
    return b"held " + target + b"\n"


async def _serve_connection(stream: trio.SocketStream, *, state: HoldState) -> None:
    state.connections += 1
    conn = h11.Connection(h11.SERVER)
    try:
        async with stream:
            while True:
                received = await read_request(stream, conn)
                if received is None:
                    return
                request, _ = received
                held = False
                if request.target == CONTROL + b"stats":
                    status, body = 200, json.dumps(state.stats()).encode()
                elif request.target == CONTROL + b"release":
                    state.release.set()
                    status, body = 200, json.dumps(state.stats()).encode()
                elif request.target.startswith(CONTROL):
                    status, body = 404, b"unknown control path\n"
                else:
                    status, body, held = 200, await _hold(state, request.target), True
                try:
                    await send_response(
                        stream,
                        conn,
                        body,
                        status=status,
                        headers=[(b"content-type", b"text/plain")],
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    state.send_failed += held
                    return
                state.answered += held
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
    finally:
        state.connections -= 1


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def serve(hold_max_s: float) -> None:
    """The slow upstream: serve until SIGTERM or SIGINT, then exit 0."""
    state = HoldState(release=trio.Event(), hold_max_s=hold_max_s)
    listeners = await trio.open_tcp_listeners(0, host=h.LOOPBACK)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        handler = functools.partial(_serve_connection, state=state)
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        print(f"{READY_WORD} port={port}", flush=True)


# --------------------------------------------------------------------------- client


@dataclass
class Progress:
    """How many of the slow requests have been sent."""

    total: int
    sent: int = 0


@dataclass
class Outcome:
    """One slow request as the client saw it."""

    status: int | None = None
    ok: bool = False
    error: str | None = None
    seconds: float | None = None


async def _one_slow(
    index: int,
    port: int,
    host_header: str,
    limiter: trio.CapacityLimiter,
    outcome: Outcome,
    progress: Progress,
) -> None:
    target = f"/slow/{index}".encode()
    conn = h11.Connection(h11.CLIENT)
    try:
        async with limiter:  # bounds connects in flight, not requests
            stream = await trio.open_tcp_stream(h.LOOPBACK, port)
        async with stream:
            head = h11.Request(
                method="GET",
                target=target,
                headers=[("host", host_header), ("connection", "close")],
            )
            await stream.send_all(conn.send(head) + conn.send(h11.EndOfMessage()))
            started = time.monotonic()
            progress.sent += 1
            if progress.sent == progress.total:
                print(f"slow client: all {progress.total} requests sent", flush=True)
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    outcome.status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    raise h11.RemoteProtocolError("closed before the response ended")
        outcome.seconds = time.monotonic() - started
        outcome.ok = outcome.status == 200 and bytes(body) == b"held " + target + b"\n"
        if outcome.status == 200 and not outcome.ok:
            outcome.error = "200 with another request's body"
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:100]


async def run_client(port: int, host_header: str, count: int, deadline_s: float) -> dict[str, Any]:
    """Send ``count`` concurrent slow requests; summarize what came back."""
    outcomes = [Outcome() for _ in range(count)]
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    progress = Progress(count)
    started = time.monotonic()
    with trio.move_on_after(deadline_s) as scope:
        async with trio.open_nursery() as nursery:
            for index, outcome in enumerate(outcomes):
                nursery.start_soon(_one_slow, index, port, host_header, limiter, outcome, progress)
    errors: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        if outcome.error is not None:
            errors[outcome.error] += 1
        elif not outcome.ok:
            errors["unfinished at the client's deadline"] += 1
    times = sorted(o.seconds for o in outcomes if o.ok and o.seconds is not None)
    return {
        "count": count,
        "sent": progress.sent,
        "completed": sum(o.ok for o in outcomes),
        "statuses": dict(collections.Counter(str(o.status) for o in outcomes)),
        "errors": dict(errors.most_common(8)),
        "deadline_hit": scope.cancelled_caught,
        "seconds": time.monotonic() - started,
        "latency_min_s": times[0] if times else None,
        "latency_max_s": times[-1] if times else None,
    }


# --------------------------------------------------------------------------- parent side


@dataclass
class SlowUpstream:
    """A running slow upstream child and its control endpoint."""

    child: h.Child
    port: int
    hold_max_s: float

    def _control(self, what: str) -> dict[str, int]:
        response = hc.http_request(self.port, "GET", f"/_control/{what}", timeout_s=5)
        if response.status != 200:
            raise h.BenchError(f"slow upstream /_control/{what} answered {response.status}")
        stats: dict[str, int] = json.loads(response.body)
        return stats

    def stats(self) -> dict[str, int]:
        """Held, answered, ... right now."""
        return self._control("stats")

    def release(self) -> dict[str, int]:
        """Answer every held request now (and every later one at once)."""
        return self._control("release")


@contextlib.contextmanager
def slow_upstream(
    children: h.Children, log_dir: Path, *, hold_max_s: float = HOLD_MAX_S
) -> Iterator[SlowUpstream]:
    """Start the slow upstream, wait for its ready line, stop it on exit."""
    raise_fd_limit(4 * SLOW_REQUESTS + 256)  # also for the tunnel started next
    child = children.start(
        "slow upstream",
        [sys.executable, str(SCRIPT), "serve", "--hold-max-s", str(hold_max_s)],
        log_path=log_dir / "slow-upstream.log",
        ready_word=READY_WORD,
    )
    try:
        line = child.wait_ready()
        port = int(line.rpartition("port=")[2].split()[0])
        yield SlowUpstream(child, port, hold_max_s)
    finally:
        children.stop(child)


def agent_route_args(upstream: SlowUpstream) -> list[str]:
    """The agent flags that add the slow route."""
    return ["--route", f"{SLOW_HOST}={h.LOOPBACK}:{upstream.port}"]


def fast_seconds(wrk_s: int) -> int:
    """Length of each fast run: the row's wrk duration, capped so that everything
    fits in the slow upstream's fallback hold."""
    return min(wrk_s, MAX_FAST_S)


class FastRun(Protocol):
    """What is needed of a wrk run (run.py's WrkResult)."""

    @property
    def requests(self) -> int: ...
    @property
    def req_per_s(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...
    @property
    def errors(self) -> dict[str, int]: ...


@dataclass
class SlowResult:
    """The slow-requests measurement of one tunnel (times in ms unless named _s)."""

    slow_requests: int
    fast_connections: int
    fast_threads: int
    fast_seconds: int
    completed: int = 0
    held_through_fast_run: int | None = None  # still held when the loaded fast run ended
    fast_p99_alone_ms: float | None = None
    fast_p99_under_load_ms: float | None = None
    p99_ratio: float | None = None
    fast_p50_alone_ms: float | None = None
    fast_p50_under_load_ms: float | None = None
    fast_rps_alone: float | None = None
    fast_rps_under_load: float | None = None
    fast_errors_alone: int | None = None
    fast_errors_under_load: int | None = None
    open_s: float | None = None  # client start -> all slow requests held upstream
    complete_s: float | None = None  # release -> slow client done
    slow_latency_max_s: float | None = None
    slow_statuses: dict[str, int] = field(default_factory=dict)
    slow_errors: dict[str, int] = field(default_factory=dict)
    upstream: dict[str, int] = field(default_factory=dict)  # its stats at the end
    tunnel_rss_mib_held: float | None = None  # VmRSS of server + agent, all held
    other_load_cores: float | None = None
    error: str | None = None

    def passed(self) -> bool:
        """The bar: all complete, fast p99 < 10 ms and < 2 x alone (and no fast
        request failed, which would make the p99 meaningless)."""
        return (
            self.error is None
            and self.completed == self.slow_requests
            and self.held_through_fast_run == self.slow_requests
            and self.fast_errors_alone == 0
            and self.fast_errors_under_load == 0
            and self.fast_p99_alone_ms is not None
            and self.fast_p99_under_load_ms is not None
            and self.fast_p99_under_load_ms < P99_LIMIT_MS
            and self.fast_p99_under_load_ms < P99_FACTOR * self.fast_p99_alone_ms
        )

    def summary(self) -> str:
        """One line for the report."""
        if self.error is not None:
            return f"error: {self.error}"

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f} ms"

        ratio = "-" if self.p99_ratio is None else f"{self.p99_ratio:.2f} x"
        return (
            f"fast p99 {ms(self.fast_p99_under_load_ms)} under load vs "
            f"{ms(self.fast_p99_alone_ms)} alone ({ratio}); "
            f"{self.completed}/{self.slow_requests} slow complete"
        )


def _client_result(client: h.Child) -> dict[str, Any] | None:
    try:
        text = client.log_path.read_text(errors="replace")
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith(RESULT_PREFIX)), None)
    if line is None:
        return None
    result: dict[str, Any] = json.loads(line.removeprefix(RESULT_PREFIX))
    return result


def _tunnel_rss_mib(pids: Sequence[int]) -> float:
    return sum(s.vmrss_kib for s in procfs.sample(pids)) / 1024


def measure_slow(
    children: h.Children,
    log_dir: Path,
    upstream: SlowUpstream,
    *,
    tunnel_port: int,
    tunnel_pids: Sequence[int],
    seconds: int,
    fast: Callable[[int], FastRun],
    count: int = SLOW_REQUESTS,
) -> SlowResult:
    """Fast run alone, then ``count`` slow requests held through one agent while the
    same fast run repeats, then release them and check every answer.

    Never raises for a failed step: the reason goes to ``SlowResult.error``.
    """
    result = SlowResult(count, FAST_CONNECTIONS, FAST_THREADS, seconds)
    others = procfs.ForeignLoad()
    client: h.Child | None = None
    try:
        before = upstream.stats()
        if before["held"] or before["answered"] or before["released"]:
            raise h.BenchError(f"slow upstream not idle before the measurement: {before}")
        alone = fast(seconds)
        result.fast_p99_alone_ms = alone.p99_ms
        result.fast_p50_alone_ms = alone.p50_ms
        result.fast_rps_alone = alone.req_per_s
        result.fast_errors_alone = sum(alone.errors.values())

        client_deadline_s = upstream.hold_max_s + COMPLETE_TIMEOUT_S
        started = time.monotonic()
        client = children.start(
            "slow client",
            [
                sys.executable,
                str(SCRIPT),
                "client",
                "--port",
                str(tunnel_port),
                "--host-header",
                SLOW_HOST,
                "--count",
                str(count),
                "--deadline-s",
                str(client_deadline_s),
            ],
            log_path=log_dir / "slow-client.log",
        )
        watched = client

        def problem() -> str | None:
            if (trouble := upstream.child.problem()) is not None:
                return trouble
            if watched.proc.poll() is not None:
                return f"slow client ended early: {_client_result(watched) or watched.tail()}"
            return None

        h.wait_until(
            lambda: upstream.stats()["held"] >= count,
            what=f"{count} slow requests held at the slow upstream",
            timeout_s=OPEN_TIMEOUT_S,
            alive=problem,
        )
        result.open_s = time.monotonic() - started
        result.tunnel_rss_mib_held = _tunnel_rss_mib(tunnel_pids)

        loaded = fast(seconds)
        result.fast_p99_under_load_ms = loaded.p99_ms
        result.fast_p50_under_load_ms = loaded.p50_ms
        result.fast_rps_under_load = loaded.req_per_s
        result.fast_errors_under_load = sum(loaded.errors.values())
        if alone.p99_ms > 0:
            result.p99_ratio = loaded.p99_ms / alone.p99_ms
        during = upstream.stats()
        result.held_through_fast_run = during["held"]

        released = time.monotonic()
        upstream.release()
        try:
            client.proc.wait(timeout=max(0.0, started + client_deadline_s - released) + 10)
        except subprocess.TimeoutExpired:
            raise h.BenchError(
                f"slow client still running {client_deadline_s + 10:.0f} s after it started"
            ) from None
        result.complete_s = time.monotonic() - released
        summary = _client_result(client)
        if summary is None:
            raise h.BenchError(f"slow client printed no result: {client.tail()}")
        result.completed = int(summary["completed"])
        result.slow_statuses = summary["statuses"]
        result.slow_errors = summary["errors"]
        result.slow_latency_max_s = summary["latency_max_s"]
        result.upstream = upstream.stats()
        if result.held_through_fast_run != count:
            raise h.BenchError(
                f"only {result.held_through_fast_run} of {count} slow requests were still "
                f"held when the fast run under load ended (upstream: {during})"
            )
    except (h.BenchError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        message = str(exc) if isinstance(exc, h.BenchError) else f"{type(exc).__name__}: {exc}"
        result.error = " ".join(message.split())[:400]
    finally:
        if client is not None:
            with contextlib.suppress(h.BenchError, OSError):
                upstream.release()  # nothing stays held
            children.stop(client)
        result.other_load_cores = others.cores()
    return result


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    roles = parser.add_subparsers(dest="role", required=True)
    serve_args = roles.add_parser("serve", help="the slow upstream")
    serve_args.add_argument("--hold-max-s", type=float, default=HOLD_MAX_S)
    client_args = roles.add_parser("client", help="send the slow requests")
    client_args.add_argument("--port", type=int, required=True)
    client_args.add_argument("--host-header", default=SLOW_HOST)
    client_args.add_argument("--count", type=int, default=SLOW_REQUESTS)
    client_args.add_argument("--deadline-s", type=float, default=HOLD_MAX_S + COMPLETE_TIMEOUT_S)
    args = parser.parse_args(argv)
    if args.role == "serve":
        raise_fd_limit(2 * SLOW_REQUESTS + 256)
        trio.run(serve, args.hold_max_s)
        return 0
    raise_fd_limit(args.count + 256)
    summary = trio.run(run_client, args.port, args.host_header, args.count, args.deadline_s)
    print(RESULT_PREFIX + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
