"""What ``run.py`` measured: per-row results, and the figures read from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import slow
    import split


@dataclass
class WrkResult:
    """One wrk run, as printed by the Lua ``done`` hook."""

    connections: int
    threads: int
    requests: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: dict[str, int]
    tunnel_cpu_us_per_req: float | None = None


@dataclass
class Transfer:
    """Repeated 100 MiB transfers; MB/s = 10**6 bytes per second."""

    runs_mb_s: list[float]
    median_mb_s: float


@dataclass
class RowResult:
    """Everything measured for one row (figures are None when not measured)."""

    name: str
    ok: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    wrk64: WrkResult | None = None
    wrk1: WrkResult | None = None
    download: Transfer | None = None
    upload: Transfer | None = None
    peak_rss_mib: float | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    other_load_cores: float | None = None
    slow: slow.SlowResult | None = None  # 1,000 slow requests (pvtunnel only)
    split: split.SplitResult | None = None  # the split-write upstream (rows that reach it)


@dataclass
class Target:
    """Where the load goes for one row, and which processes are the tunnel."""

    port: int
    tunnel_pids: Callable[[], list[int]]
    slow_upstream: slow.SlowUpstream | None = None  # the row's agent also routes `slow`
    split_port: int | None = None  # where the row reaches the split-write upstream


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def metric(row: RowResult, key: str) -> float | None:
    """A named figure of a row, or None when it was not measured."""
    match key:
        case "rps64":
            return row.wrk64.req_per_s if row.wrk64 else None
        case "rps1":
            return row.wrk1.req_per_s if row.wrk1 else None
        case "p50_1":
            return row.wrk1.p50_ms if row.wrk1 else None
        case "p99_1":
            return row.wrk1.p99_ms if row.wrk1 else None
        case "down":
            return row.download.median_mb_s if row.download else None
        case "up":
            return row.upload.median_mb_s if row.upload else None
        case "rss":
            return row.peak_rss_mib
    raise KeyError(key)


def one_line(text: str) -> str:
    """Collapse whitespace so a message fits in one markdown table cell."""
    return " ".join(text.split()).replace("|", "/")


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)
