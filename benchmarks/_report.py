"""``run.py``'s report: ratios between rows, the bars, markdown tables and the chart."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import _harness as h
import slow
import split
from _results import RowResult, fmt, metric, one_line, ratio
from _settings import BEST, PLAIN_SSH, ROWS, Settings

if TYPE_CHECKING:
    from pathlib import Path

    from _rows import World

RSS_LIMIT_MIB: Final = 80.0  # server + agent together
SPLIT_P99_FACTOR: Final = 5.0  # split-write p99 through pvtunnel / directly


RATIO_METRICS: Final = (
    ("rps64", "req/s 64c"),
    ("rps1", "req/s 1c"),
    ("down", "download"),
    ("up", "upload"),
)


def compute_ratios(rows: dict[str, RowResult]) -> dict[str, dict[str, dict[str, float | None]]]:
    """row -> baseline -> metric -> row/baseline."""
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, row in rows.items():
        result[name] = {}
        for base_name in ("direct", BEST, PLAIN_SSH):
            base = rows.get(base_name)
            result[name][base_name] = {
                key: ratio(metric(row, key), metric(base, key) if base else None)
                for key, _ in RATIO_METRICS
            }
    return result


@dataclass
class Bar:
    """One speed or memory bar and how pvtunnel did against it."""

    what: str
    needed: str
    value: str
    passed: bool | None  # None: could not be judged (a row is missing)


def judge_bars(rows: dict[str, RowResult]) -> list[Bar]:
    """The speed and memory bars this benchmark measures, as ratios within the run.

    Absolute times on a shared machine are noise; every bar but peak RSS compares
    pvtunnel with a row measured in the same rounds.
    """
    tunnel = rows.get("pvtunnel")
    best = rows.get(BEST)
    plain = rows.get(PLAIN_SSH)
    direct = rows.get("direct")
    bars: list[Bar] = []

    attempted = tunnel is not None  # a missing figure of an attempted row fails

    def relative(
        what: str,
        value: float | None,
        reference: float | None,
        *,
        at_least: bool,
        factor: float,
        base_label: str,
        spec: str,
        unit: str = "",
    ) -> None:
        needed = f"{'>=' if at_least else '<='} {factor:g} x {base_label}"
        if value is None or reference is None:
            missing = "pvtunnel" if value is None else base_label.removesuffix("'s")
            passed = False if value is None and attempted else None
            bars.append(Bar(what, needed, f"not measured ({missing})", passed))
            return
        ratio_text = f"{value / reference:.2f} x" if reference else "-"
        text = f"{value:{spec}}{unit} = {ratio_text} ({reference:{spec}}{unit})"
        passed = value >= factor * reference if at_least else value <= factor * reference
        bars.append(Bar(what, needed, text, passed))

    def versus(what: str, key: str, base: RowResult | None, factor: float, base_label: str) -> None:
        at_least = key not in ("p50_1", "p99_1")  # rates: more is better; latencies: less
        relative(
            what,
            metric(tunnel, key) if tunnel else None,
            metric(base, key) if base else None,
            at_least=at_least,
            factor=factor,
            base_label=f"{base_label}'s" if not at_least else base_label,
            spec=",.0f" if at_least else ".3f",
            unit="" if at_least else " ms",
        )

    versus("req/s, 1 KiB, 64 connections", "rps64", best, 0.18, BEST)
    versus("req/s, 1 KiB, 1 connection", "rps1", best, 0.22, BEST)
    versus("p50, 1 connection", "p50_1", best, 4.0, BEST)
    versus("p99, 1 connection", "p99_1", best, 3.0, BEST)
    versus("100 MiB download", "down", plain, 0.5, PLAIN_SSH)
    versus("100 MiB upload", "up", plain, 0.75, PLAIN_SSH)
    rss = metric(tunnel, "rss") if tunnel else None
    rss_needed = f"< {RSS_LIMIT_MIB:g} MiB"
    if rss is None:
        bars.append(
            Bar(
                "peak RSS, server + agent", rss_needed, "not measured", False if attempted else None
            )
        )
    else:
        bars.append(
            Bar("peak RSS, server + agent", rss_needed, f"{rss:.3g} MiB", rss < RSS_LIMIT_MIB)
        )
    relative(
        f"split-write upstream, p99 of {split.SPLIT_REQUESTS} requests on fresh connections",
        tunnel.split.p99_ms if tunnel and tunnel.split else None,
        direct.split.p99_ms if direct and direct.split else None,
        at_least=False,
        factor=SPLIT_P99_FACTOR,
        base_label="direct's",
        spec=".3f",
        unit=" ms",
    )
    slow_what = (
        f"{slow.SLOW_REQUESTS:,} slow requests: fast p99 < {slow.P99_LIMIT_MS:g} ms and "
        f"< {slow.P99_FACTOR:g}x alone; all complete"
    )
    slow_needed = (
        f"p99 < {slow.P99_LIMIT_MS:g} ms and < {slow.P99_FACTOR:g} x alone; "
        f"{slow.SLOW_REQUESTS:,}/{slow.SLOW_REQUESTS:,} complete"
    )
    if tunnel is None or tunnel.slow is None:
        bars.append(Bar(slow_what, slow_needed, "not measured", False if attempted else None))
    else:
        bars.append(Bar(slow_what, slow_needed, tunnel.slow.summary(), tunnel.slow.passed()))
    return bars


def render_tables(
    rows: dict[str, RowResult], ratios: dict[str, Any], bars: list[Bar], settings: Settings
) -> str:
    """The markdown report."""
    out: list[str] = []
    out.append(
        f"rows measured in turns; wrk: {settings.round_s * settings.wrk_rounds:g} s per figure in "
        f"{settings.wrk_rounds} round(s), 1 KiB responses; "
        f"transfers: median of {settings.reps} x 100 MiB, one per round; MB/s = 10^6 B/s; "
        "other load: CPU cores used by processes not started by this run\n"
    )
    out.append(
        "| row | req/s 64c | p50 64c ms | p99 64c ms | req/s 1c | p50 1c ms | "
        "p99 1c ms | down MB/s | up MB/s | peak RSS MiB | CPU us/req 64c | "
        "CPU us/req 1c | other load (cores) |"
    )
    out.append("|---|" + "---:|" * 12)
    for name, row in rows.items():
        if not row.ok and row.wrk64 is None:
            out.append(f"| {name} | FAILED: {one_line(row.error or '')} |" + " |" * 11)
            continue
        w64, w1 = row.wrk64, row.wrk1
        cells = [
            fmt(w64.req_per_s if w64 else None),
            fmt(w64.p50_ms if w64 else None, ".3f"),
            fmt(w64.p99_ms if w64 else None, ".3f"),
            fmt(w1.req_per_s if w1 else None),
            fmt(w1.p50_ms if w1 else None, ".3f"),
            fmt(w1.p99_ms if w1 else None, ".3f"),
            fmt(metric(row, "down")),
            fmt(metric(row, "up")),
            fmt(row.peak_rss_mib, ".1f"),
            fmt(w64.tunnel_cpu_us_per_req if w64 else None, ".0f"),
            fmt(w1.tunnel_cpu_us_per_req if w1 else None, ".0f"),
            fmt(row.other_load_cores, ".2f"),
        ]
        label = name if row.ok else f"{name} (FAILED: {one_line(row.error or '')})"
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for base_name in ("direct", BEST, PLAIN_SSH):
        if base_name not in rows or not rows[base_name].ok:
            continue
        out.append(f"\nRatios: row / `{base_name}`\n")
        out.append("| row | " + " | ".join(label for _, label in RATIO_METRICS) + " |")
        out.append("|---|" + "---:|" * len(RATIO_METRICS))
        for name in rows:
            cells = [fmt(ratios[name][base_name][key], ".2f") for key, _ in RATIO_METRICS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, row in rows.items():
        if row.slow is not None:
            s = row.slow
            out.append(
                f"\n{name}, {s.slow_requests:,} slow requests held through its one agent: "
                f"fast route wrk -c{s.fast_connections} -t{s.fast_threads} {s.fast_seconds} s: "
                f"p99 {fmt(s.fast_p99_alone_ms, '.3f')} ms alone "
                f"({fmt(s.fast_rps_alone)} req/s), {fmt(s.fast_p99_under_load_ms, '.3f')} ms "
                f"under load ({fmt(s.fast_rps_under_load)} req/s), ratio "
                f"{fmt(s.p99_ratio, '.2f')}; slow completed {s.completed:,}/{s.slow_requests:,}"
                + (f"; error: {one_line(s.error)}" if s.error else "")
            )
    measured = {name: row.split for name, row in rows.items() if row.split is not None}
    if measured:
        direct = measured.get("direct")
        out.append(
            f"\nSplit-write upstream (http.server, HTTP/1.1, head and body in two sends): "
            f"{split.SPLIT_REQUESTS} sequential GETs, each on a fresh connection\n"
        )
        out.append("| row | requests | p50 ms | p99 ms | max ms | p99 / direct's |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for name, result in measured.items():
            versus = ratio(result.p99_ms, direct.p99_ms if direct else None)
            out.append(
                f"| {name} | {result.requests} | {fmt(result.p50_ms, '.3f')} | "
                f"{fmt(result.p99_ms, '.3f')} | {fmt(result.max_ms, '.3f')} | "
                f"{fmt(versus, '.2f')} |"
            )
    out.append("\nBars (pvtunnel; ratios to rows of this run)\n")
    out.append("| bar | needed | pvtunnel | result |")
    out.append("|---|---|---|---|")
    for bar in bars:
        verdict = {True: "PASS", False: "FAIL", None: "not run"}[bar.passed]
        out.append(f"| {bar.what} | {bar.needed} | {bar.value} | {verdict} |")
    notes = [(name, note) for name, row in rows.items() for note in row.notes]
    if notes:
        out.append("\nNotes\n")
        out.extend(f"- {name}: {note}" for name, note in notes)
    return "\n".join(out) + "\n"


def draw_chart(rows: dict[str, RowResult], path: Path) -> str | None:
    """Bar charts of the main figures; needs matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib  # optional dependency (the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'pvtunnel[bench]'): no chart"
    panels = (
        ("rps64", "req/s, 64 connections"),
        ("rps1", "req/s, 1 connection"),
        ("p99_1", "p99 latency, 1 connection (ms, log)"),
        ("down", "100 MiB download (MB/s)"),
        ("up", "100 MiB upload (MB/s)"),
        ("rss", "tunnel peak RSS (MiB)"),
    )
    names = list(rows)
    shades = (
        "#7f7f7f",
        "#bcbd22",
        "#d62728",
        "#ff7f0e",
        "#9467bd",
        "#c5b0d5",
        "#1f77b4",
        "#aec7e8",
    )
    colors = dict(zip(ROWS, shades, strict=True))
    palette = {name: colors[name] for name in names}
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    for axis, (key, title) in zip(axes.flat, panels, strict=True):
        values = [metric(rows[name], key) for name in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = axis.bar(names, heights, color=[palette[n] for n in names])
        for bar, value in zip(bars, values, strict=True):
            label = "n/a" if value is None else (f"{value:.3g}" if value < 10 else f"{value:,.0f}")
            axis.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if key == "p99_1" and any(v for v in values):
            axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    figure.suptitle("pvtunnel benchmark (loopback, one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def versions(world: World) -> dict[str, str]:
    """Tool versions, for the JSON. ``python`` runs this script; the Python that runs
    pvtunnel (which its speed depends on) is in ``pvtunnel --version``."""
    found: dict[str, str] = {"python": platform.python_version()}
    probes = {
        "nginx": [world.tools["nginx"], "-v"],
        "ssh": [world.tools["ssh"], "-V"],
        "wrk": [world.tools["wrk"], "-v"],
    }
    for name, argv in probes.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            found[name] = (done.stderr + done.stdout).strip().splitlines()[0]
    try:
        found["pvtunnel"] = h.check_pvtunnel(h.pvtunnel_command())
    except h.BenchError as exc:
        found["pvtunnel"] = str(exc)
    return found
