"""Every fuzz target: each module here defines ``TARGETS: list[Target]``.

To add one (say, HTTP through the tunnel), drop a module in this package; `discover`
finds it. Keep the property itself in tests/ so CI runs it too, and only adapt it here.
"""

from __future__ import annotations

import importlib
import pkgutil

from fuzz._registry import Target


def discover() -> dict[str, Target]:
    """Import every module of this package and collect its targets by name."""
    found: dict[str, Target] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for target in getattr(module, "TARGETS", []):
            assert isinstance(target, Target), f"{module_info.name}: {target!r}"
            assert target.name not in found, f"two targets named {target.name}"
            found[target.name] = target
    return found
