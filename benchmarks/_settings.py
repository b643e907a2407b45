"""What a run of ``run.py`` measures: its rows, figures and command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import _harness as h

ROWS: Final = (
    "direct",
    "nginx-proxy",
    "ssh -N -R",
    "ssh -R best",
    "trio-relay",
    "h11-relay",
    "pvtunnel",
    "pvtunnel-base",
)
ROW_KEYS: Final = {
    "direct": "direct",
    "nginx-proxy": "nginx-proxy",
    "ssh-n-r": "ssh -N -R",
    "ssh-r-best": "ssh -R best",
    "trio-relay": "trio-relay",
    "h11-relay": "h11-relay",
    "pvtunnel": "pvtunnel",
    "pvtunnel-base": "pvtunnel-base",
}
# The rows run unless --rows names them; pvtunnel-base runs when --base-bin is given.
DEFAULT_ROW_KEYS: Final = tuple(key for key in ROW_KEYS if key != "pvtunnel-base")
BEST: Final = "ssh -R best"
PLAIN_SSH: Final = "ssh -N -R"
HOST_HEADER: Final = "app"
SMALL_PATH: Final = "/1k"
BIG_PATH: Final = "/100m"
BIG_BYTES: Final = 100 * h.MIB
OTHER_LOAD_WARN_CORES: Final = 0.1
QUIET_WAIT_S: Final = 120.0
TOOLS: Final = {
    "wrk": "wrk",
    "nginx": "nginx",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


@dataclass(frozen=True)
class Settings:
    """What to run and for how long."""

    out: Path
    rows: tuple[str, ...]
    wrk_s: int
    warmup_s: int
    reps: int
    install: bool
    fail_on_bars: bool
    retry_disturbed: int
    # Rows take turns: wrk's time is split over this many rounds, one transfer each.
    wrk_rounds: int = 1
    # The CLI of another pvtunnel (e.g. the parent commit's), for the pvtunnel-base row.
    base_command: tuple[str, ...] = ()

    @property
    def round_s(self) -> int:
        """Whole seconds of wrk per round: each figure gets ``round_s * wrk_rounds``."""
        return max(1, self.wrk_s // self.wrk_rounds)


def parse_args(argv: list[str] | None = None) -> Settings:
    """Command line -> Settings."""
    parser = argparse.ArgumentParser(
        description="Benchmark pvtunnel against direct, nginx proxy_pass and ssh -R.",
    )
    parser.add_argument("--quick", action="store_true", help="~3 s wrk runs, 3 transfers each")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for results.json, chart.png and logs/ (default: benchmarks/results)",
    )
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated subset of {','.join(ROW_KEYS)} "
        "(default: all; pvtunnel-base only with --base-bin)",
    )
    parser.add_argument(
        "--base-bin",
        default=None,
        metavar="COMMAND",
        help="another pvtunnel CLI (e.g. a checkout of the previous commit installed in "
        "its own venv), measured beside this one as the row pvtunnel-base",
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        help="whole seconds of wrk per row and concurrency, in three rounds from 9 s "
        "and two from 6 s (default 12, --quick 3)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="100 MiB downloads and uploads per row (default 5, --quick 3)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing tools; fail instead",
    )
    parser.add_argument(
        "--fail-on-bars", action="store_true", help="exit 3 when a speed or memory bar is missed"
    )
    parser.add_argument(
        "--retry-disturbed",
        type=int,
        default=0,
        metavar="N",
        help="take a measurement up to N more times while other processes use more "
        f"than {OTHER_LOAD_WARN_CORES} cores during it (after waiting up to "
        f"{QUIET_WAIT_S:.0f} s for quiet each time)",
    )
    args = parser.parse_args(argv)
    rows: list[str] = []
    default_keys = [*DEFAULT_ROW_KEYS, *(["pvtunnel-base"] if args.base_bin else [])]
    asked = args.rows.split(",") if args.rows is not None else default_keys
    for key in (part.strip().lower() for part in asked if part.strip()):
        if key not in ROW_KEYS:
            parser.error(f"unknown row {key!r}; choose from {','.join(ROW_KEYS)}")
        rows.append(ROW_KEYS[key])
    # wrk takes whole seconds only.
    wrk_s = round(args.duration) if args.duration is not None else (3 if args.quick else 12)
    reps = args.reps if args.reps is not None else (3 if args.quick else 5)
    if not 0 <= args.retry_disturbed <= 5:
        parser.error("--retry-disturbed must be in [0, 5]")
    if "pvtunnel-base" in rows and not args.base_bin:
        parser.error("the row pvtunnel-base needs --base-bin")
    if not 1 <= wrk_s <= 120 or not 1 <= reps <= 50:
        parser.error("--duration must be in [1, 120] seconds and --reps in [1, 50]")
    return Settings(
        out=args.out,
        rows=tuple(row for row in ROWS if row in rows),
        wrk_s=wrk_s,
        warmup_s=1 if wrk_s < 10 else 2,
        reps=reps,
        install=not args.no_install,
        fail_on_bars=args.fail_on_bars,
        retry_disturbed=args.retry_disturbed,
        # Percentiles are the median of the rounds': with three, one round's spike
        # (a reference's p99 of 12 ms among rounds of 0.5 ms) does not set the figure.
        wrk_rounds=3 if wrk_s >= 9 else 2 if wrk_s >= 6 else 1,
        base_command=tuple(args.base_bin.split()) if args.base_bin else (),
    )
