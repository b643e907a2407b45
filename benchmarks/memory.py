#!/usr/bin/env python3
"""pvtunnel memory benchmark: 1 GiB up and down through one server + agent pair.

Usage::

    python benchmarks/memory.py                 # 1 GiB each way
    python benchmarks/memory.py --size-mib 256  # smaller, quicker
    python benchmarks/memory.py --verify        # also CRC-32 the bytes
    python benchmarks/memory.py --inspect       # the agent's inspector on

Starts, on 127.0.0.1 only:
- an upstream (this file with ``--serve-upstream``, a separate process: plain sockets,
  one thread per connection, keep-alive) that streams N bytes generated on the fly
  (``GET /download/N`` with Content-Length, ``GET /download-chunked/N`` chunked) and
  discards uploads (``POST /upload``, Content-Length or chunked), answering with the
  byte count (and CRC-32 with ``--verify``);
- ``pvtunnel serve`` and ``pvtunnel agent`` via the CLI, route ``app`` -> upstream.

A raw-socket client then streams, through the tunnel: a download with Content-Length,
a chunked download, an upload with Content-Length and a chunked upload, each checked
for its byte count. Before each transfer the server's and the agent's peak RSS
(VmHWM) is reset (``/proc/PID/clear_refs``) and read after it, so every transfer gets
its own peak; the overall peak also covers start-up. The same four transfers straight
to the upstream (row ``direct``) show that the upstream and client are not the limit.

The bar (docs/performance.md): peak RSS of the server and of the agent each < 100 MiB.
Prints a markdown table; writes ``OUT/memory.json`` and logs under ``OUT/logs/``.
Exit status: 0 all transfers ran, 1 one failed, 3 with ``--fail-on-bars`` and a bar missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import socket
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import _httpclient as hc
import _procfs as procfs

if TYPE_CHECKING:
    from collections.abc import Callable

BAR_MIB: Final = 100.0
BLOCK: Final = h.MIB
TRANSFER_LIMIT_S: Final = 600.0
SOCKET_TIMEOUT_S: Final = 60.0
TRANSFERS: Final = ("download", "download chunked", "upload", "upload chunked")


def make_block(seed: int) -> bytes:
    """The 1 MiB pattern repeated in every body (same seed: same bytes on both sides)."""
    return random.Random(seed).randbytes(BLOCK)


def expected_crc(block: bytes, total: int) -> int:
    """CRC-32 of ``total`` bytes of ``block`` repeated."""
    crc = 0
    left = total
    while left:
        take = min(left, len(block))
        crc = zlib.crc32(memoryview(block)[:take], crc)
        left -= take
    return crc


# --------------------------------------------------------------------------- upstream


class Upstream:
    """A small keep-alive HTTP/1.1 server on plain sockets, one thread per connection.

    It is written to cost the tunnel nothing: bodies go out as 1 MiB sends (zero
    copies: the same block each time) and come in through one reused buffer.
    """

    def __init__(self, block: bytes, *, checksum: bool) -> None:
        self.block = block
        self.checksum = checksum
        self.listener = socket.create_server((h.LOOPBACK, 0), backlog=128)

    def serve_forever(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = hc.SocketReader(conn)
            with contextlib.suppress(OSError, h.BenchError):
                while self._one_request(conn, reader):
                    pass

    def _one_request(self, conn: socket.socket, reader: hc.SocketReader) -> bool:
        if not reader.pending:
            first = conn.recv(65536)
            if not first:
                return False
            reader.pending = first
        head = reader.read_head()
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "100-continue" in fields.get("expect", "").lower():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        keep_alive = "close" not in fields.get("connection", "").lower()
        parts = target.split("/")
        if method == "GET" and len(parts) == 3 and parts[1] in ("download", "download-chunked"):
            self._download(conn, int(parts[2]), chunked=parts[1] == "download-chunked")
        elif method in ("POST", "PUT") and target == "/upload":
            self._upload(conn, reader, fields)
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        return keep_alive

    def _download(self, conn: socket.socket, total: int, *, chunked: bool) -> None:
        framing = "transfer-encoding: chunked" if chunked else f"content-length: {total}"
        conn.sendall(
            f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            f"{framing}\r\n\r\n".encode()
        )
        view = memoryview(self.block)
        left = total
        while left:
            piece = view[: min(left, len(view))]
            if chunked:
                conn.sendall(b"%x\r\n" % len(piece))
            conn.sendall(piece)
            if chunked:
                conn.sendall(b"\r\n")
            left -= len(piece)
        if chunked:
            conn.sendall(b"0\r\n\r\n")

    def _upload(self, conn: socket.socket, reader: hc.SocketReader, fields: dict[str, str]) -> None:
        crc = 0

        def on_data(data: memoryview) -> None:
            nonlocal crc
            crc = zlib.crc32(data, crc)

        sink = on_data if self.checksum else None
        if "chunked" in fields.get("transfer-encoding", "").lower():
            decoder = hc.ChunkedCounter(on_data=sink)
            while True:
                data = reader.read_some()
                if not data:
                    raise h.BenchError("upload: EOF inside chunked body")
                rest = decoder.feed(data)
                if decoder.done:
                    reader.pending = bytes(rest)
                    break
            count = decoder.count
        else:
            remaining = int(fields.get("content-length", "0"))
            count = 0
            while remaining:
                data = reader.read_some()
                if not data:
                    raise h.BenchError("upload: EOF inside body")
                if len(data) > remaining:
                    reader.pending = bytes(data[remaining:])
                    data = data[:remaining]
                count += len(data)
                remaining -= len(data)
                if sink is not None:
                    sink(data)
        body = json.dumps({"bytes": count, "crc32": crc if self.checksum else None}).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )


def serve_upstream(seed: int, checksum: bool) -> None:
    """Entry point of the upstream child process: print the ready line, serve."""
    upstream = Upstream(make_block(seed), checksum=checksum)
    port = upstream.listener.getsockname()[1]
    print(f"upstream ready port={port}", flush=True)
    upstream.serve_forever()


# --------------------------------------------------------------------------- client


@dataclass
class TransferResult:
    """One transfer through one path."""

    path: str
    transfer: str
    ok: bool = False
    error: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    mb_s: float = 0.0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    other_load_cores: float | None = None


def deadline_guard(limit_s: float) -> Callable[[], None]:
    """A check that raises once ``limit_s`` has passed: bounds every transfer."""
    end = time.monotonic() + limit_s

    def check() -> None:
        if time.monotonic() > end:
            raise h.BenchError(f"transfer took longer than {limit_s:.0f} s")

    return check


def run_transfer(
    port: int, transfer: str, size: int, block: bytes, *, verify_crc: int | None
) -> tuple[int, float]:
    """Do one transfer; returns (bytes checked, seconds). Raises BenchError on any
    mismatch (status, byte count, CRC)."""
    check_deadline = deadline_guard(TRANSFER_LIMIT_S)
    crc = 0

    def on_data(data: memoryview) -> None:
        nonlocal crc
        check_deadline()
        if verify_crc is not None:
            crc = zlib.crc32(data, crc)

    if transfer.startswith("download"):
        path = f"/download{'-chunked' if transfer.endswith('chunked') else ''}/{size}"
        response = hc.http_request(
            port, "GET", path, keep_body=False, on_data=on_data, timeout_s=SOCKET_TIMEOUT_S
        )
        if response.status != 200 or response.body_bytes != size:
            raise h.BenchError(
                f"status {response.status}, got {response.body_bytes} of {size} bytes"
            )
        if verify_crc is not None and crc != verify_crc:
            raise h.BenchError(f"CRC-32 {crc:#x} != expected {verify_crc:#x}")
        return response.body_bytes, response.seconds
    chunked = transfer.endswith("chunked")
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
    source = hc.send_repeated(block, size, chunked=chunked, each_block=check_deadline)
    response = hc.http_request(
        port, "POST", "/upload", headers=[framing], body_source=source, timeout_s=SOCKET_TIMEOUT_S
    )
    if response.status != 200:
        raise h.BenchError(f"status {response.status}: {response.body[:200]!r}")
    answer = json.loads(response.body)
    if answer["bytes"] != size:
        raise h.BenchError(f"upstream received {answer['bytes']} of {size} bytes")
    if verify_crc is not None and answer["crc32"] != verify_crc:
        raise h.BenchError(f"upstream CRC-32 {answer['crc32']:#x} != {verify_crc:#x}")
    return answer["bytes"], response.seconds


def measure_path(
    name: str,
    port: int,
    size: int,
    block: bytes,
    *,
    verify_crc: int | None,
    watched: dict[str, int],
    overall_peak_kib: dict[str, int],
) -> list[TransferResult]:
    """The four transfers through one path, with per-transfer peak RSS of ``watched``
    (name -> PID) and the running overall peak in ``overall_peak_kib``."""
    results: list[TransferResult] = []
    for transfer in TRANSFERS:
        result = TransferResult(path=name, transfer=transfer)
        cpu_before: dict[str, float] = {}
        for who, pid in watched.items():
            before = procfs.proc_status_kib(pid, "VmHWM") or 0
            overall_peak_kib[who] = max(overall_peak_kib.get(who, 0), before)
            if not procfs.reset_peak_rss(pid):
                print(f"warning: cannot reset VmHWM of {who}", file=sys.stderr)
            cpu_before[who] = procfs.proc_cpu_s(pid) or 0.0
        print(f"   {name}: {transfer} {size / h.MIB:.0f} MiB ...", file=sys.stderr, flush=True)
        others = procfs.ForeignLoad()
        try:
            result.bytes, result.seconds = run_transfer(
                port, transfer, size, block, verify_crc=verify_crc
            )
            result.mb_s = result.bytes / result.seconds / 1e6
            result.ok = True
        except (h.BenchError, OSError, ValueError, KeyError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            print(f"   FAILED: {result.error}", file=sys.stderr)
        result.other_load_cores = others.cores()
        for who, pid in watched.items():
            peak = procfs.proc_status_kib(pid, "VmHWM")
            if peak is not None:
                result.peak_rss_mib[who] = peak / 1024
                overall_peak_kib[who] = max(overall_peak_kib.get(who, 0), peak)
            cpu = procfs.proc_cpu_s(pid)
            if cpu is not None:
                result.cpu_s[who] = cpu - cpu_before[who]
        results.append(result)
    return results


# --------------------------------------------------------------------------- report


def render(
    results: list[TransferResult], overall: dict[str, float], size: int, tunnel_error: str | None
) -> tuple[str, list[dict[str, object]]]:
    """Markdown report and the bar verdicts."""
    out = [
        f"{size / h.MIB:.0f} MiB per transfer; MB/s = 10^6 B/s; peak RSS = VmHWM "
        "reset before each transfer\n",
        "| path | transfer | MB/s | seconds | server peak MiB | agent peak MiB | "
        "server CPU s | agent CPU s | other load (cores) | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:

        def cell(d: dict[str, float], key: str, spec: str = ".1f") -> str:
            return format(d[key], spec) if key in d else "-"

        verdict = "ok" if r.ok else f"FAILED: {' '.join((r.error or '').split())}"
        out.append(
            f"| {r.path} | {r.transfer} | {r.mb_s:,.0f} | {r.seconds:.2f} | "
            f"{cell(r.peak_rss_mib, 'server')} | {cell(r.peak_rss_mib, 'agent')} | "
            f"{cell(r.cpu_s, 'server', '.2f')} | {cell(r.cpu_s, 'agent', '.2f')} | "
            f"{r.other_load_cores or 0.0:.2f} | {verdict} |"
        )
    if tunnel_error:
        out.append(f"| pvtunnel | all | - | - | - | - | - | - | - | FAILED: {tunnel_error} |")
    bars: list[dict[str, object]] = []
    out += [
        "\nThe bar: 1 GiB upload and download, peak RSS of each process\n",
        "| process | peak RSS MiB (whole run) | bar | result |",
        "|---|---:|---|---|",
    ]
    for who in ("server", "agent"):
        value = overall.get(who)
        passed = None if value is None else value < BAR_MIB
        if tunnel_error or any(not r.ok for r in results if r.path == "pvtunnel"):
            passed = False
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[passed]
        shown = "-" if value is None else f"{value:.1f}"
        out.append(f"| pvtunnel {who} | {shown} | < {BAR_MIB:g} MiB | {verdict} |")
        bars.append({"process": who, "peak_rss_mib": value, "bar_mib": BAR_MIB, "passed": passed})
    if size < h.GIB:
        out.append(f"\n(size {size / h.MIB:.0f} MiB is below the 1 GiB the bar is about)")
    if any((r.other_load_cores or 0.0) > 0.1 for r in results):
        out.append(
            "\nOther processes used CPU during some transfers (column 'other "
            "load'): their MB/s are disturbed; peak RSS is not."
        )
    return "\n".join(out) + "\n", bars


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="1 GiB transfers through pvtunnel: peak RSS.")
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB per transfer (1024)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="CRC-32 every byte on both ends (costs CPU next to the tunnel)",
    )
    parser.add_argument(
        "--skip-direct", action="store_true", help="skip the transfers straight to the upstream"
    )
    parser.add_argument("--fail-on-bars", action="store_true", help="exit 3 when a bar fails")
    parser.add_argument(
        "--inspect",
        action="store_true",
        help="run the agent with its request inspector on (--inspect, any free admin port)",
    )
    parser.add_argument("--seed", type=int, default=20251126, help=argparse.SUPPRESS)
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.seed, args.verify)
        return 0
    if not 1 <= args.size_mib <= 8192:
        parser.error("--size-mib must be in [1, 8192]")
    h.install_signal_handlers()
    size = args.size_mib * h.MIB
    block = make_block(args.seed)
    crc = expected_crc(block, size) if args.verify else None
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    children = h.Children()
    results: list[TransferResult] = []
    overall_kib: dict[str, int] = {}
    tunnel_error: str | None = None
    exit_codes: dict[str, int | None] = {}
    version = "?"
    try:
        upstream_argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-upstream",
            "--seed",
            str(args.seed),
        ] + (["--verify"] if args.verify else [])
        upstream = children.start(
            "upstream", upstream_argv, log_path=logs / "upstream.log", ready_word="upstream ready"
        )
        port = int(upstream.wait_ready().rsplit("=", 1)[1])
        if not args.skip_direct:
            print("== direct (client -> upstream)", file=sys.stderr)
            results += measure_path(
                "direct", port, size, block, verify_crc=crc, watched={}, overall_peak_kib={}
            )
        print("== pvtunnel", file=sys.stderr)
        try:
            version = h.check_pvtunnel(h.pvtunnel_command())
            inspect = ["--inspect", "--admin-port", "0"] if args.inspect else []
            with h.open_pvtunnel(
                children, upstream_port=port, log_dir=logs, extra_agent_args=inspect
            ) as tunnel:
                exit_codes = tunnel.exit_codes
                watched = {"server": tunnel.server.pid, "agent": tunnel.agent.pid}
                results += measure_path(
                    "pvtunnel",
                    tunnel.external_port,
                    size,
                    block,
                    verify_crc=crc,
                    watched=watched,
                    overall_peak_kib=overall_kib,
                )
        except (h.BenchError, OSError) as exc:
            tunnel_error = " ".join(str(exc).split())
            print(f"   FAILED: {tunnel_error}", file=sys.stderr)
    finally:
        children.stop_all()
    overall = {who: kib / 1024 for who, kib in overall_kib.items()}
    report, bars = render(results, overall, size, tunnel_error)
    notes = [
        f"pvtunnel {who} exited {code} after SIGTERM (contract: 0)"
        for who, code in exit_codes.items()
        if who in ("server", "agent") and code != 0
    ]
    notes += [
        f"pvtunnel {key.split('_')[0]} needed SIGKILL after SIGTERM"
        for key in exit_codes
        if key.endswith("needed_sigkill")
    ]
    if notes:
        report += "\nNotes\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    print(report)
    (args.out / "memory.json").write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "pvtunnel": version,
                "size_bytes": size,
                "verified_crc32": args.verify,
                "transfers": [asdict(r) for r in results],
                "overall_peak_rss_mib": overall,
                "tunnel_error": tunnel_error,
                "exit_codes": exit_codes,
                "bars": bars,
                "notes": notes,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out / 'memory.json'}", file=sys.stderr)
    if tunnel_error or any(not r.ok for r in results):
        return 1
    if args.fail_on_bars and any(bar["passed"] is not True for bar in bars):
        return 3
    return 0


if __name__ == "__main__":
    h.run_main(main)
