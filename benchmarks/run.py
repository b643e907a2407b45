#!/usr/bin/env python3
"""pvtunnel speed benchmark: pvtunnel next to the tunnels people use today.

Usage::

    python benchmarks/run.py                # full run, 10 s of wrk per figure
    python benchmarks/run.py --quick        # 3 s of wrk per figure
    python benchmarks/run.py --rows direct,pvtunnel --out /tmp/bench

(``python``: the interpreter of the environment pvtunnel is installed in.)

Run as root on Debian: missing tools (wrk, nginx, openssh-server, openssh-client) are
installed with apt-get (``--no-install`` turns that off). Everything runs on 127.0.0.1:
a private nginx (its own config and ports, access log off) serves ``/1k`` (1 KiB) and
``/100m`` (100 MiB) and accepts ``PUT /upload/NAME`` (WebDAV, the body lands in a file
that is checked byte for byte), and a private sshd with throwaway keys provides the
``ssh -R`` rows. Rows, all set up at once and measured in turns (rounds) in one run:

- ``direct``       wrk straight to nginx: the physical limit;
- ``nginx-proxy``  a second nginx (own instance) doing ``proxy_pass`` with upstream
                   keep-alive: the best single-hop proxy;
- ``ssh -N -R``    OpenSSH remote forwarding as people run it (Nagle-bound on loopback);
- ``ssh -R best``  the same with ``-tt`` and a remote ``sleep``: TCP_NODELAY on;
- ``trio-relay``   ``trio_relay.py``: two Trio processes that only move bytes over one
                   multiplexed connection, parsing nothing: the floor under any tunnel
                   written on pvtunnel's runtime;
- ``h11-relay``    the same doing the h11 work any HTTP tunnel must per request (each
                   head validated once, a response written in one send) and nothing
                   else: the floor under any tunnel on pvtunnel's stack;
- ``pvtunnel``     ``pvtunnel serve`` + ``pvtunnel agent``, route ``app`` -> nginx, and
                   route ``slow`` -> a slow upstream (``slow.py``): after the row's
                   figures, 1,000 slow requests are held through that one agent while
                   wrk measures the fast route's p99.

The split-write upstream (``split.py``: a threaded ``http.server`` speaking HTTP/1.1
on keep-alive, writing each response's head and body in two sends) is reached
directly, through pvtunnel (a second agent route, ``split``) and through both ssh rows
(a second ``-R`` forward): 300 sequential GETs per row, each on a fresh client
connection, spread over the wrk rounds; p50 and p99 over all of them.

Per row: wrk with 64 connections / 2 threads and 1 connection / 1 thread (req/s over
the rounds, the median of the rounds' p50 and p99), the median of several 100 MiB
downloads and uploads (MB/s = 10**6 B/s), the tunnel's peak RSS (sum of VmHWM of its
processes, read after all rounds) and its CPU per request. Each round visits every row,
starting at a different one, so the machine's drift (20-30 % within minutes on a shared
VM) falls on all rows alike. Prints markdown tables (figures, ratios, and the bars of
``docs/performance.md`` with pass/fail) and writes ``OUT/results.json``,
``OUT/chart.png`` (when matplotlib, the ``bench`` extra, is importable) and the
children's logs under ``OUT/logs/``.

The bars are ratios to rows of the same run (absolute times on a shared machine are
noise), except peak RSS: req/s >= 0.18 x ``ssh -R best`` at 64 connections and
>= 0.22 x at 1 connection; at 1 connection p50 <= 4 x and p99 <= 3 x ``ssh -R best``'s;
100 MiB downloads >= 0.5 x and uploads >= 0.75 x ``ssh -N -R``; peak RSS of server
and agent together < 80 MiB; split-write p99 through pvtunnel <= 5 x directly; and
the 1,000 slow requests (``slow.py``).

The code, by seam: ``_settings.py`` (rows, constants, command line), ``_results.py``
(what was measured, per row), ``_rows.py`` (the shared fixtures and each row's setup),
``_measure.py`` (wrk, transfers, split-write and slow requests, in rounds),
``_report.py`` (ratios, bars, tables, chart) and this file (the run from start to end);
``_harness.py`` holds what every script here shares.

Exit status: 0 when every row ran, 1 when a row failed (its error is in the table and the
JSON), 3 with ``--fail-on-bars`` when a bar is missed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import _procfs as procfs
import split
from _measure import measure_rows
from _report import compute_ratios, draw_chart, judge_bars, render_tables, versions
from _rows import World, make_tmp_dir, origin_block, start_nginx, write_payloads
from _settings import OTHER_LOAD_WARN_CORES, TOOLS, parse_args

if TYPE_CHECKING:
    from _results import RowResult


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    h.install_signal_handlers()
    tools = h.ensure_debian_packages(TOOLS, install=settings.install)
    settings.out.mkdir(parents=True, exist_ok=True)
    logs = settings.out / "logs"
    logs.mkdir(exist_ok=True)
    others = procfs.ForeignLoad()
    tmp = make_tmp_dir()
    children = h.Children()
    world = World(settings=settings, tmp=tmp, logs=logs, tools=tools, children=children)
    rows: dict[str, RowResult] = {}
    fixtures = contextlib.ExitStack()
    try:
        write_payloads(world)
        (world.nginx_port,) = h.free_ports(1)
        world.nginx = start_nginx(
            world, name="nginx-origin", port=world.nginx_port, server_block=origin_block(world)
        )
        world.split_port = fixtures.enter_context(split.split_upstream(children, logs))
        world.other_load_at_start = others.cores()
        if world.other_load_at_start > OTHER_LOAD_WARN_CORES:
            print(
                f"warning: other processes are using {world.other_load_at_start:.2f} cores; "
                "figures will be disturbed (see the 'other load' column)",
                file=sys.stderr,
            )
        rows = measure_rows(world)
        meta = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
            "versions": versions(world),
            "settings": {
                "wrk_s": settings.wrk_s,
                "wrk_round_s": settings.round_s,
                "wrk_rounds": settings.wrk_rounds,
                "warmup_s": settings.warmup_s,
                "reps": settings.reps,
            },
            "other_load_at_start_cores": world.other_load_at_start,
        }
    finally:
        fixtures.close()
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = compute_ratios(rows)
    bars = judge_bars(rows)
    report = render_tables(rows, ratios, bars, settings)
    chart_problem = draw_chart(rows, settings.out / "chart.png")
    print(report)
    results = {
        **meta,
        "rows": {name: asdict(row) for name, row in rows.items()},
        "ratios": ratios,
        "bars": [asdict(bar) for bar in bars],
    }
    (settings.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {settings.out / 'results.json'}", file=sys.stderr)
    if chart_problem:
        print(chart_problem, file=sys.stderr)
    else:
        print(f"wrote {settings.out / 'chart.png'}", file=sys.stderr)
    if any(not row.ok for row in rows.values()):
        return 1
    if settings.fail_on_bars and any(bar.passed is False for bar in bars):
        return 3
    return 0


if __name__ == "__main__":
    h.run_main(main)
