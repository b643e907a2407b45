"""Which route a request is for, and which agent serves it (README, "HTTP behaviour").

The route key is the request target's authority in absolute form (proxy mode),
else the Host header. Names match case-insensitively: first ``host:port`` whole,
then the host without its port (and without the trailing dot of a fully qualified
name), then ``<name>.<domain>`` when a domain is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Container, Iterable

_ABSOLUTE_PREFIXES = (b"http://", b"https://")


class Session(Protocol):
    """What the router needs of an agent session: how busy it is."""

    @property
    def in_flight(self) -> int: ...


SessionT = TypeVar("SessionT", bound=Session)


def split_target(target: bytes, method: bytes = b"GET") -> tuple[bytes | None, bytes]:
    """Split an absolute-form target into (authority, origin-form target).

    Returns ``(None, target)`` for origin-form (and asterisk-form) targets. RFC 9112
    section 3.2.2: a proxy forwards the origin form and takes Host from the
    authority, ignoring any Host header the client sent. An empty path becomes
    ``/``, or for OPTIONS ``*``: the server as a whole (section 3.2.4).
    """
    lowered = target[:8].lower()
    for prefix in _ABSOLUTE_PREFIXES:
        if lowered.startswith(prefix):
            rest = target[len(prefix) :]
            cut = len(rest)
            for mark in (b"/", b"?", b"#"):
                found = rest.find(mark)
                if found != -1 and found < cut:
                    cut = found
            authority = rest[:cut]
            if b"@" in authority:  # userinfo is never part of the route
                authority = authority.rsplit(b"@", 1)[1]
            path = rest[cut:]
            if not path and method == b"OPTIONS":
                path = b"*"
            elif not path.startswith(b"/"):
                path = b"/" + path
            return authority, path
    return None, target


def is_origin_form(target: bytes, method: bytes) -> bool:
    """Whether a target that is not absolute-form is one a request may carry.

    RFC 9112 section 3.2: a path, CONNECT's authority, or OPTIONS' ``*``. Anything
    else (``ftp://other/``, a bare name) would be routed by Host but read by the
    upstream as naming some other host.
    """
    return (
        target.startswith(b"/") or method == b"CONNECT" or (target == b"*" and method == b"OPTIONS")
    )


def strip_port(authority: str) -> str:
    """``host:port`` -> ``host``; keeps IPv6 literals whole (``[::1]:80`` -> ``[::1]``)."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end != -1 else authority
    host, sep, port = authority.rpartition(":")
    # An empty port is the same as none (RFC 3986 section 3.2.3: port = *DIGIT).
    return host if sep and (port.isdigit() or not port) else authority


class Router(Generic[SessionT]):
    """Route names to the agent sessions that serve them; least in-flight wins.

    A session removed with `remove` is never chosen again, which is what keeps a
    request from going to an agent that has left.
    """

    def __init__(self, *, domain: str | None = None) -> None:
        self._domain_suffix = "." + domain.lower().strip(".") if domain else None
        self._routes: dict[str, list[SessionT]] = {}
        # Where `lookup` starts among a name's sessions: it moves on at each lookup,
        # so sessions equally busy take turns (a sequential client, or a quiet one,
        # would otherwise always reach the first, and a broken second go unnoticed).
        self._turn = 0

    def add(self, session: SessionT, names: Iterable[str]) -> None:
        for name in names:
            sessions = self._routes.setdefault(name.lower(), [])
            if session not in sessions:
                sessions.append(session)

    def remove(self, session: SessionT) -> tuple[str, ...]:
        """Stop routing to ``session``.

        Returns:
            The names no session serves any more: the routes whose agents have all
            left, which the server remembers for a while (see ``_http.holding``).
        """
        unserved: list[str] = []
        for name in [n for n, sessions in self._routes.items() if session in sessions]:
            sessions = self._routes[name]
            sessions.remove(session)
            if not sessions:
                del self._routes[name]
                unserved.append(name)
        return tuple(unserved)

    def names(self) -> dict[str, tuple[SessionT, ...]]:
        return {name: tuple(sessions) for name, sessions in self._routes.items()}

    def lookup(self, authority: str) -> tuple[str, SessionT] | None:
        """The matched route name and the least busy session serving it (among equals,
        each in turn), or None."""
        routes = self._routes
        key = self.match_name(authority, routes)
        if key is None:
            return None
        sessions = routes[key]
        count = len(sessions)
        if count == 1:
            return key, sessions[0]
        self._turn = turn = (self._turn + 1) % count
        return key, min(sessions[turn:] + sessions[:turn], key=_in_flight)

    def match_name(self, authority: str, names: Container[str]) -> str | None:
        """The name among ``names`` that a request for ``authority`` is for, or None.

        The same rules as `lookup`, so a name the server remembers after its agents
        left (``names``) is matched exactly as a served one would be.
        """
        key = authority.lower()
        if key in names:
            return key
        # A fully qualified name may end in a dot ("app.example.com."), which
        # names the same host; nginx drops it too.
        key = strip_port(key).removesuffix(".")
        if key in names:
            return key
        suffix = self._domain_suffix
        if suffix is not None and key.endswith(suffix):
            key = key[: -len(suffix)]
            if key in names:
                return key
        return None


def _in_flight(session: Session) -> int:
    return session.in_flight
