"""The token type: a string that cannot end up in a log line by accident.

Tokens must never reach logs and must be compared in constant time (SECURITY.md,
"Secrets"). Wrapping them makes both the default: ``repr``, ``str`` and f-strings print
``***``, so a config object (or an exception built from one) can be logged whole,
and the only comparison offered is ``hmac.compare_digest``.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final, NoReturn

_REDACTED: Final = "***"
_TOKEN_BYTES: Final = 32


class Secret:
    """A token whose value is only reachable through ``reveal()``.

    Immutable and hashable, so frozen attrs configs holding one stay hashable, and
    equality is itself constant time.
    """

    __slots__ = ("_encoded", "_value")

    _value: str
    _encoded: bytes

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret takes a str, not {type(value).__name__}")
        object.__setattr__(self, "_value", value)
        # Encoded once: matches() runs for every request on the hot path.
        object.__setattr__(self, "_encoded", value.encode("utf-8", "surrogatepass"))

    def reveal(self) -> str:
        """Return the token itself, for the few places that must send or store it.

        Returns:
            The token text, exactly as configured.
        """
        return self._value

    def matches(self, candidate: str | bytes) -> bool:
        """Check a presented credential against this token in constant time.

        Args:
            candidate: What the peer sent, as text or raw header bytes.

        Returns:
            True if it is exactly the token. The time taken does not depend on where
            the first differing byte is, so it leaks nothing but the length.
        """
        if isinstance(candidate, str):
            # surrogatepass: a lone surrogate becomes bytes no valid token contains,
            # where "replace" would turn it into "?", which a token might.
            candidate = candidate.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(self._encoded, candidate)

    def __repr__(self) -> str:
        return f"Secret({_REDACTED!r})"

    def __str__(self) -> str:
        return _REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._encoded, other._encoded)

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Secret is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Secret is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # copy, deepcopy and pickle would otherwise restore the slots via the
        # blocked __setattr__.
        return (Secret, (self._value,))


def generate_token() -> str:
    """Make a fresh random token for ``pvtunnel init`` or a first ``serve``.

    Returns:
        43 URL-safe characters (256 bits from ``secrets``), safe in headers and TOML.
    """
    return secrets.token_urlsafe(_TOKEN_BYTES)
