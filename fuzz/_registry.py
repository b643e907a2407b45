"""What a fuzz target is, and adapters for the two kinds of property we have."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Protocol, cast

import attrs
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


@attrs.define
class Budget:
    """Examples run so far, and when to stop starting new batches."""

    deadline: float
    examples: int = 0

    @property
    def is_spent(self) -> bool:
        return time.monotonic() >= self.deadline


@attrs.frozen(kw_only=True)
class Target:
    """One property to fuzz.

    ``run_batch`` runs one hypothesis run (a few seconds at most), adds each example
    it executes to the budget, and raises whatever the property raised on failure.
    """

    name: str
    description: str
    run_batch: Callable[[Budget], None]


class _Handle(Protocol):
    inner_test: Callable[..., object]


class _GivenTest(Protocol):
    hypothesis: _Handle

    def __call__(self, *args: object) -> None: ...


def _given_test(test: Callable[..., None]) -> _GivenTest:
    # @given's return type does not declare the documented ``.hypothesis`` handle.
    return cast("_GivenTest", test)


def given_target(
    name: str,
    description: str,
    test: Callable[..., None],
    *,
    arguments: Callable[[], contextlib.AbstractContextManager[tuple[object, ...]]] | None = None,
) -> Target:
    """A target from a ``@given`` test function taking no fixtures.

    The test must have been decorated while the ``fuzz`` profile was loaded (the
    runner loads it before importing targets): ``@given`` fixes its settings then.
    ``arguments``, if given, is entered around each batch and yields the positional
    arguments that ``@given`` leaves to the caller (say, a running server).
    """
    given_test = _given_test(test)
    original = given_test.hypothesis.inner_test
    current: list[Budget] = []

    def counted(*args: object, **kwargs: object) -> object:
        current[-1].examples += 1
        return original(*args, **kwargs)

    # ``.hypothesis.inner_test`` is hypothesis's documented hook for wrapping the body.
    given_test.hypothesis.inner_test = counted

    def run_batch(budget: Budget) -> None:
        current.append(budget)
        try:
            with arguments() if arguments is not None else contextlib.nullcontext(()) as args:
                given_test(*args)
        finally:
            current.pop()

    return Target(name=name, description=description, run_batch=run_batch)


def machine_target(
    name: str,
    description: str,
    machine: type[RuleBasedStateMachine],
    *,
    examples_per_batch: int = 25,
) -> Target:
    """A target from a `RuleBasedStateMachine`; each example is one run of the machine."""

    def run_batch(budget: Budget) -> None:
        class Counted(machine):  # type: ignore[valid-type,misc]  # a class from a variable
            def __init__(self) -> None:
                budget.examples += 1
                super().__init__()

        Counted.__name__ = Counted.__qualname__ = machine.__name__
        run_state_machine_as_test(Counted, settings=settings(max_examples=examples_per_batch))

    return Target(name=name, description=description, run_batch=run_batch)
