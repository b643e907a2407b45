"""``python -m fuzz --minutes N [--target NAME ...]``: run targets until time is up.

The time is shared equally between the chosen targets. A failing target is reported,
written to fuzz/failures/, and not run again in this session; the exit status is 1
if anything failed. ``python -m fuzz mutants`` runs mutation testing instead
(fuzz/_mutants.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from pathlib import Path

import pytest

FAILURES = Path(__file__).resolve().parent / "failures"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mutants"]:
        from fuzz import _mutants

        return _mutants.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m fuzz", description="Fuzz the wire layer for a while."
    )
    parser.add_argument(
        "--minutes", type=float, default=1.0, help="total time for all chosen targets (default 1)"
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this target (repeatable); default: all",
    )
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)

    # @given fixes its settings when it decorates, so the profile must be loaded
    # before any test module (and so any target) is imported.
    os.environ["HYPOTHESIS_PROFILE"] = "fuzz"
    import tests.conftest  # noqa: F401  (registers the profiles and loads "fuzz")
    from fuzz.targets import discover

    targets = discover()
    if args.list:
        for name, target in targets.items():
            print(f"{name:16} {target.description}")
        return 0
    unknown = sorted(set(args.target) - set(targets))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; try --list")
    chosen = [targets[name] for name in args.target] if args.target else list(targets.values())
    share_s = args.minutes * 60 / len(chosen)

    from fuzz._registry import Budget

    failed = 0
    for target in chosen:
        started = time.monotonic()
        budget = Budget(deadline=started + share_s)
        batches, outcome = 0, "ok"
        while not budget.is_spent:
            batches += 1
            try:
                target.run_batch(budget)
            # A property fails with an exception, with pytest's Failed (from a
            # pytest.raises that did not raise: a BaseException), or with a group of
            # both when hypothesis found several distinct failures.
            except (Exception, BaseExceptionGroup, pytest.fail.Exception) as exc:
                failed += 1
                outcome = f"FAILED, see {save_failure(target.name, exc)}"
                break
        elapsed = time.monotonic() - started
        print(
            f"{target.name:16} {budget.examples:9,d} examples in {batches:4d} batches, "
            f"{elapsed:6.1f} s: {outcome}",
            flush=True,
        )
    return 1 if failed else 0


def save_failure(name: str, exc: BaseException) -> Path:
    """Write the shrunk failure (with hypothesis's notes and reproduce blob) to a file."""
    FAILURES.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = FAILURES / f"{name}-{stamp}.txt"
    report = "".join(traceback.format_exception(exc))
    path.write_text(report, encoding="utf-8")
    print(report, file=sys.stderr)
    return path


if __name__ == "__main__":
    sys.exit(main())
