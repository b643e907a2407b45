"""``python -m fuzz mutants``: how many mutants of the wire layer the fuzz targets kill.

mutmut (the ``mutants`` extra) copies the tree into ``mutants/``, mutates
``src/pvtunnel/_wire/`` and runs, for each mutant, the tests of the wire fuzz targets
that cover the mutated function (``[tool.mutmut]`` in pyproject.toml lists them)
under the bounded, derandomized ``mutants`` hypothesis profile of tests/conftest.py.
The report counts each module's mutants by outcome. Survivors that only change the
text of an exception, and those fuzz/README.md lists as equivalent (by name, with
the reason), leave the score; any other survivor is printed, and the exit status is
1 while one is left.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "fuzz" / "README.md"
META = ROOT / "mutants" / "src" / "pvtunnel" / "_wire"
# The modules the wire targets must cover (fuzz/README.md, "Mutation testing").
SCORED = ("credit", "states", "endpoint", "sending", "mux", "frames")
GOAL = 0.90

# mutmut's exit codes for a mutant's test run (mutmut.stats.status_by_exit_code).
_OUTCOMES = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout"}
_OUTCOMES |= {-24: "timeout", 152: "timeout", 255: "timeout", 33: "no tests", 5: "no tests"}
_MUTANT_NAME = re.compile(r"`(pvtunnel\._wire\.\w+\.\w+__mutmut_\d+)`")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz mutants",
        description="Mutation testing of src/pvtunnel/_wire/ by the fuzz targets alone.",
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument(
        "--report-only", action="store_true", help="print the report of the last run"
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="test again only the last run's unexplained survivors and the mutants it did"
        " not get to (after an oracle got stronger), with the tests as they are now",
    )
    args = parser.parse_args(argv)
    if not args.report_only:
        env = os.environ | {"HYPOTHESIS_PROFILE": "mutants"}
        mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs)]
        if args.survivors:
            # mutmut copied tests/ when it made the mutants: give it today's.
            shutil.rmtree(ROOT / "mutants" / "tests")
            shutil.copytree(ROOT / "tests", ROOT / "mutants" / "tests")
            # ...and which tests cover which function, measured again with them.
            (ROOT / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
            results = outcomes()
            not_run = {
                n for by_name in results.values() for n, o in by_name.items() if o == "not run"
            }
            mutmut += sorted(unexplained(results) | not_run)
        subprocess.run(mutmut, cwd=ROOT, env=env, check=False)
    return report()


def unexplained(results: dict[str, dict[str, str]]) -> set[str]:
    """The surviving mutants that are neither message-only nor listed as equivalent."""
    equivalent = equivalent_mutants()
    found: set[str] = set()
    for module, by_name in results.items():
        alive = {n for n, o in by_name.items() if o in ("survived", "no tests")}
        found |= alive - equivalent - message_only_mutants(module, alive)
    return found


def outcomes() -> dict[str, dict[str, str]]:
    """Every mutant's outcome, by module: {"credit": {mutant name: outcome}}."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(META.glob("*.py.meta")):
        module = meta.name.removesuffix(".py.meta")
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        found[module] = {
            name: "not run" if code is None else _OUTCOMES.get(code, f"exit {code}")
            for name, code in codes.items()
        }
    return found


def equivalent_mutants() -> set[str]:
    """The mutants fuzz/README.md explains as equivalent (in that section only)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Equivalent mutants", 1)[-1].split("\n### ", 1)[0]
    return set(_MUTANT_NAME.findall(section))


def message_only_mutants(module: str, names: set[str]) -> set[str]:
    """Of ``names``, the mutants that change nothing but the text of an exception.

    An exception's message is a diagnostic for logs and close reasons; no rule of
    protocol.md depends on it (the error code is what the peer is told). Found by
    comparing each mutant's function with the original once the messages are left
    out: the text arguments of every ``...Error(...)`` or ``_fail(...)`` call, the
    frame names that `_require_role`, `_load_object` and `_window` only put in their
    messages, and every assignment to a ``message`` variable.
    """
    source = (META / f"{module}.py").read_text(encoding="utf-8")
    functions = {
        node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
    }
    found = set()
    for name in names:
        mutant = name.rsplit(".", 1)[1]
        original = mutant.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
        pair = functions.get(mutant), functions.get(original)
        if pair[0] and pair[1] and _blanked(pair[0]) == _blanked(pair[1]):
            found.add(name)
    return found


def _blanked(function: ast.FunctionDef) -> str:
    """The function with every exception message left out (see `message_only_mutants`)."""
    tree = copy.deepcopy(function)
    tree.name = ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node.func).endswith(("Error", "_fail")):
            node.args = [arg for arg in node.args if not _is_message(arg)]
        elif isinstance(node, ast.Call) and _callee(node.func) in _NAMING_ARGUMENTS:
            position = _NAMING_ARGUMENTS[_callee(node.func)]
            if len(node.args) > position and _is_message(node.args[position]):
                node.args[position] = ast.Constant("")
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "message" for t in node.targets
        ):
            node.value = ast.Constant("")
    return ast.dump(tree)


# Helpers whose argument at this position only names a frame in their messages.
_NAMING_ARGUMENTS = {"_require_role": 1, "_load_object": 1, "_window": 2}


def _is_message(arg: ast.expr) -> bool:
    """A message argument, or the code every protocol error has by default."""
    match arg:
        case ast.Constant(value=str() | None) | ast.JoinedStr() | ast.Name(id="message"):
            return True
        case ast.Attribute(value=ast.Name(id="ErrorCode"), attr="PROTOCOL_ERROR"):
            return True
        case ast.Call(func=ast.Name(id="str")):  # the text of another exception
            return True
    return False


def _callee(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def report() -> int:
    results = outcomes()
    if not results:
        print("no results: run `python -m fuzz mutants` first", file=sys.stderr)
        return 1
    equivalent = equivalent_mutants()
    unexplained: list[str] = []
    print(
        f"{'module':10} {'mutants':>7} {'killed':>6} {'survived':>8} {'equiv.':>6} "
        f"{'timeout':>7} {'other':>5} {'score':>6}"
    )
    for module, by_name in results.items():
        counts = Counter(by_name.values())
        # A mutant no target runs is one the targets cannot notice: a survivor.
        alive = {n for n, o in by_name.items() if o in ("survived", "no tests")}
        equivalents = (alive & equivalent) | message_only_mutants(module, alive)
        survivors = sorted(alive - equivalents)
        # A timeout is a kill (the mutant looped where the code must finish);
        # equivalent mutants cannot be killed, so they leave the denominator.
        caught = counts["killed"] + counts["timeout"]
        other = len(by_name) - caught - len(alive)
        scored = len(by_name) - len(equivalents)
        score = caught / scored if scored else 1.0
        print(
            f"{module:10} {len(by_name):7d} {counts['killed']:6d} {len(survivors):8d} "
            f"{len(equivalents):6d} {counts['timeout']:7d} {other:5d} {score:6.1%}"
        )
        if module in SCORED:
            unexplained += survivors
    if unexplained:
        print(
            f"\n{len(unexplained)} surviving mutants of {', '.join(SCORED)} not explained "
            "in fuzz/README.md (`mutmut show NAME` shows one):"
        )
        print("\n".join(f"  {name}" for name in unexplained))
    return 1 if unexplained else 0
