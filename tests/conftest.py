"""Hypothesis profiles for the whole suite; fixtures belong in the layer's own conftest.

Pick one with ``HYPOTHESIS_PROFILE`` (``dev`` when unset). Every profile turns the
deadline off: on a shared 2-core CI machine a slow example is load, not a bug, and a
deadline there only makes failures flaky.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, Phase, settings

if TYPE_CHECKING:
    import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Under ``python -bb`` (.ci/run), hypothesis's own caches compare choice sequences
    # holding b"" and 0 (equal hashes), a BytesWarning inside hypothesis. Ignore it
    # there only: a bytes/str mix in our code still fails.
    config.addinivalue_line("filterwarnings", r"ignore::BytesWarning:hypothesis\.")


settings.register_profile("dev", max_examples=100, deadline=None)
# tests/wire under this profile takes about 30 s on 2 cores, well under the 2-minute
# budget; print_blob makes a CI failure reproducible from the log alone.
settings.register_profile(
    "ci",
    max_examples=400,
    stateful_step_count=80,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Used by `python -m fuzz`, which runs batches of this size until its time is up.
settings.register_profile(
    "fuzz",
    max_examples=500,
    deadline=None,
    print_blob=True,
    stateful_step_count=100,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
# Used by `python -m fuzz mutants`: the fuzz targets as mutation testing's test
# command. Derandomized, so every mutant meets the same examples and a score is
# reproducible; without the example database, so no mutant is killed by a failure
# another one left behind; and without shrinking, since a failure is all a kill
# needs and shrinking one costs more than finding it.
settings.register_profile(
    "mutants",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
