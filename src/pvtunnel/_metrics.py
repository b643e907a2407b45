"""Figures for ``/metrics``: plain integers bumped on the hot path, rendered on scrape.

Why not prometheus-client's metric objects: each ``labels(...).inc()`` hashes a
label tuple and takes a lock, and a request should cost no more than a few
attribute increments. So the figures live in plain slotted objects here, with no
I/O and no trio, and `render_server` / `render_agent` write the Prometheus text
exposition format (version 0.0.4) only when someone scrapes. The format is small
and exact enough to write by hand; the tests read it back with prometheus-client's
own parser.

Label sets stay bounded: a route label only ever holds a name some authenticated
agent announced (a request no route matched counts under `NO_ROUTE`, never under
the Host header a client made up), and statuses are folded into classes.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

NO_ROUTE: Final = "(none)"
"""The route label of requests no route matched; parentheses never occur in a route name."""

DURATION_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds of the request duration histogram, in seconds (Prometheus' defaults, to 60 s)."""

HELD_OUTCOMES: Final = ("served", "timed_out", "refused", "abandoned", "shutting_down")
"""How a held request's wait ended: an agent came back and it was forwarded; none came
within the hold time (503); too many waited already (503 at once, not held); the
client's own deadline ended it; the server began to drain (503)."""

REFUSAL_REASONS: Final = ("not_allowed", "at_limit")
"""Why a client connection was refused before its first request: its address is not
allowed (403); the server is at ``max_client_connections`` (503)."""

REPLAY_REFUSAL_REASONS: Final = ("busy", "not_found", "bad_edits", "not_replayable")
"""Why the agent's inspector answered a replay without sending it: ``max_replays``
were in flight already (429); no such exchange (404); edits that came too late,
too large or make no valid request (408, 413, 400); a recorded body that is
incomplete, or a route the agent no longer serves (409). A request refused before
it is known to be a replay (no token, another site's page, a POST not sent as
JSON: 401, 403, 415) is not counted: the same checks guard every inspector path."""

# Classes 1xx-5xx are always exposed (zero included, so rate() works from the first
# scrape); 6xx-9xx only once seen, since h11 lets an upstream send any 3-digit status.
_ALWAYS_SHOWN_CLASSES: Final = range(1, 6)


class Histogram:
    """Counts per bucket (not yet cumulative) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self.bounds = bounds
        # One slot per bound plus the +Inf bucket.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le means <=).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with +Inf."""
        pairs: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs


class RouteFigures:
    """What the server counted for one route; created once, on the route's first request."""

    __slots__ = ("bytes_in", "bytes_out", "duration", "status_classes")

    def __init__(self) -> None:
        # Index = status // 100, so recording needs no branching or lookup.
        self.status_classes = [0] * 10
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration = Histogram()


class ServerMetrics:
    """The server's counters; gauges (streams, agents) are read from live state on scrape."""

    __slots__ = (
        "agent_connects",
        "agent_disconnects",
        "agent_protocol_errors",
        "client_protocol_errors",
        "connections_refused",
        "held_requests",
        "routes",
    )

    def __init__(self) -> None:
        self.routes: dict[str, RouteFigures] = {}
        # Requests for a route whose agents had left lately, by how their wait ended.
        self.held_requests: dict[str, int] = dict.fromkeys(HELD_OUTCOMES, 0)
        self.agent_connects = 0
        self.agent_disconnects = 0
        self.agent_protocol_errors = 0
        self.client_protocol_errors = 0
        # Client connections answered and closed before any request was read.
        self.connections_refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)

    def record_request(
        self,
        route: str | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration_s: float | None,
    ) -> None:
        """Count one answered request (proxied or refused).

        Args:
            route: The matched route name, or None when no route matched.
            status: The status the client was sent.
            bytes_in: Request body bytes forwarded to the agent.
            bytes_out: Response body bytes sent to the client.
            duration_s: From opening the stream to the end of the response; None
                for a request answered without reaching an agent, which the
                duration histogram leaves out (it would only add zeros).
        """
        key = NO_ROUTE if route is None else route
        figures = self.routes.get(key)
        if figures is None:
            figures = self.routes[key] = RouteFigures()
        figures.status_classes[status // 100] += 1
        figures.bytes_in += bytes_in
        figures.bytes_out += bytes_out
        if duration_s is not None:
            figures.duration.observe(duration_s)

    def held_request_ended(self, outcome: str) -> None:
        """Count a request held for a departed route; ``outcome`` is one of `HELD_OUTCOMES`."""
        self.held_requests[outcome] += 1


class AgentMetrics:
    """The agent's counters; connection state, reconnects and pool sizes are read on scrape."""

    __slots__ = ("protocol_errors", "replays_refused", "streams", "upstream_connect_errors")

    def __init__(self) -> None:
        self.streams: dict[str, int] = {}
        self.upstream_connect_errors: dict[str, int] = {}
        self.protocol_errors = 0
        # Inspector replays answered without being sent, by `REPLAY_REFUSAL_REASONS`.
        self.replays_refused: dict[str, int] = dict.fromkeys(REPLAY_REFUSAL_REASONS, 0)

    def stream_started(self, route: str) -> None:
        streams = self.streams
        streams[route] = streams.get(route, 0) + 1

    def upstream_connect_failed(self, route: str) -> None:
        errors = self.upstream_connect_errors
        errors[route] = errors.get(route, 0) + 1


@attrs.frozen(kw_only=True)
class ServerLinkFigures:
    """One of the agent's server connections, as a scrape sees it."""

    url: str
    connected: bool
    reconnects: int
    # The address DNS discovery dialled for this link; None for a plain URL.
    address: str | None = None


def render_server(
    metrics: ServerMetrics,
    *,
    active_streams: int,
    connected_agents: int,
    held_requests: int = 0,
    client_connections: int = 0,
) -> str:
    """The server's /metrics page.

    Args:
        metrics: The counters.
        active_streams: Requests in flight through agents right now.
        connected_agents: Agents registered right now.
        held_requests: Requests waiting right now for a departed route's agent.
        client_connections: Client connections open on the external port right now.

    Returns:
        Prometheus text exposition format 0.0.4 (serve it as `CONTENT_TYPE`).
    """
    out = _Exposition()
    routes = sorted(metrics.routes.items())
    out.family(
        "pvtunnel_requests_total", "counter", "Requests answered, by route and status class."
    )
    for route, figures in routes:
        for index, count in enumerate(figures.status_classes):
            if count or index in _ALWAYS_SHOWN_CLASSES:
                out.sample("pvtunnel_requests_total", count, route=route, status_class=f"{index}xx")
    out.family(
        "pvtunnel_request_body_bytes_total",
        "counter",
        "Request body bytes received from clients and forwarded to agents, by route.",
    )
    for route, figures in routes:
        out.sample("pvtunnel_request_body_bytes_total", figures.bytes_in, route=route)
    out.family(
        "pvtunnel_response_body_bytes_total",
        "counter",
        "Response body bytes sent to clients, by route.",
    )
    for route, figures in routes:
        out.sample("pvtunnel_response_body_bytes_total", figures.bytes_out, route=route)
    out.family(
        "pvtunnel_request_duration_seconds",
        "histogram",
        "Time from opening a stream to an agent to the end of the response, by route.",
    )
    for route, figures in routes:
        # Only routes that reached an agent: for NO_ROUTE it would be all zeros forever.
        if figures.duration.count:
            out.histogram("pvtunnel_request_duration_seconds", figures.duration, route=route)
    out.family("pvtunnel_active_streams", "gauge", "Requests in flight through agents.")
    out.sample("pvtunnel_active_streams", active_streams)
    out.family("pvtunnel_connected_agents", "gauge", "Agents connected and registered.")
    out.sample("pvtunnel_connected_agents", connected_agents)
    out.family("pvtunnel_agent_connects_total", "counter", "Agents that completed the handshake.")
    out.sample("pvtunnel_agent_connects_total", metrics.agent_connects)
    out.family(
        "pvtunnel_agent_disconnects_total", "counter", "Registered agents whose connection ended."
    )
    out.sample("pvtunnel_agent_disconnects_total", metrics.agent_disconnects)
    out.family(
        "pvtunnel_protocol_errors_total",
        "counter",
        "Peers that broke the protocol: agents (tunnel frames) or clients (malformed HTTP).",
    )
    out.sample("pvtunnel_protocol_errors_total", metrics.agent_protocol_errors, peer="agent")
    out.sample("pvtunnel_protocol_errors_total", metrics.client_protocol_errors, peer="client")
    out.family(
        "pvtunnel_held_requests_waiting",
        "gauge",
        "Requests waiting for an agent of a route whose agents left lately.",
    )
    out.sample("pvtunnel_held_requests_waiting", held_requests)
    out.family(
        "pvtunnel_held_requests_total",
        "counter",
        "Requests for a route whose agents had left lately, by outcome: served, timed_out, "
        "refused (too many waiting), abandoned, shutting_down.",
    )
    for outcome, count in metrics.held_requests.items():
        out.sample("pvtunnel_held_requests_total", count, outcome=outcome)
    out.family(
        "pvtunnel_client_connections", "gauge", "Client connections open on the external port."
    )
    out.sample("pvtunnel_client_connections", client_connections)
    out.family(
        "pvtunnel_client_connections_refused_total",
        "counter",
        "Client connections answered and closed before a request was read, by reason: "
        "not_allowed (403, outside whitelisted_ips), at_limit (503, max_client_connections).",
    )
    for reason, count in metrics.connections_refused.items():
        out.sample("pvtunnel_client_connections_refused_total", count, reason=reason)
    return out.text()


def render_agent(
    metrics: AgentMetrics,
    *,
    connected: bool,
    reconnects: int,
    active_streams: int,
    idle_connections: Mapping[str, int],
    servers: Sequence[ServerLinkFigures] = (),
    inspector: bool = False,
) -> str:
    """The agent's /metrics page.

    Args:
        metrics: The counters.
        connected: Whether the agent is registered with at least one server now.
        reconnects: Connection attempts after the first, summed over all servers.
        active_streams: Requests being replayed right now.
        idle_connections: Pooled keep-alive upstream connections per route; its
            keys are the configured routes, so every route gets its series.
        servers: Each configured server URL's link, for the per-server series
            (a ``server`` label holds only URLs from the agent's own config; with
            DNS discovery an ``address`` label tells the links of one URL apart).
        inspector: Whether the inspector is on; its figures are left out when
            it is not, as a feature the agent does not run has nothing to count.

    Returns:
        Prometheus text exposition format 0.0.4 (serve it as `CONTENT_TYPE`).
    """
    out = _Exposition()
    routes = sorted(idle_connections)
    servers = _one_per_link(servers)
    out.family("pvtunnel_agent_connected", "gauge", "1 while registered with at least one server.")
    out.sample("pvtunnel_agent_connected", int(connected))
    out.family(
        "pvtunnel_agent_reconnects_total",
        "counter",
        "Connection attempts after the first one, all servers together.",
    )
    out.sample("pvtunnel_agent_reconnects_total", reconnects)
    out.family("pvtunnel_agent_server_connected", "gauge", "1 while registered with this server.")
    for server in servers:
        out.sample("pvtunnel_agent_server_connected", int(server.connected), **_link_labels(server))
    out.family(
        "pvtunnel_agent_server_reconnects_total",
        "counter",
        "Connection attempts to this server after the first one.",
    )
    for server in servers:
        out.sample(
            "pvtunnel_agent_server_reconnects_total", server.reconnects, **_link_labels(server)
        )
    out.family("pvtunnel_agent_active_streams", "gauge", "Requests being replayed right now.")
    out.sample("pvtunnel_agent_active_streams", active_streams)
    out.family("pvtunnel_agent_streams_total", "counter", "Requests received to replay, by route.")
    for route in routes:
        out.sample("pvtunnel_agent_streams_total", metrics.streams.get(route, 0), route=route)
    out.family(
        "pvtunnel_upstream_connect_errors_total",
        "counter",
        "Failed connection attempts to a route's target (refused, DNS, timeout).",
    )
    for route in routes:
        errors = metrics.upstream_connect_errors.get(route, 0)
        out.sample("pvtunnel_upstream_connect_errors_total", errors, route=route)
    out.family(
        "pvtunnel_upstream_idle_connections",
        "gauge",
        "Keep-alive upstream connections waiting in the pool, by route.",
    )
    for route in routes:
        out.sample("pvtunnel_upstream_idle_connections", idle_connections[route], route=route)
    out.family(
        "pvtunnel_protocol_errors_total", "counter", "Times the server broke the tunnel protocol."
    )
    out.sample("pvtunnel_protocol_errors_total", metrics.protocol_errors, peer="server")
    if inspector:
        out.family(
            "pvtunnel_inspector_replays_refused_total",
            "counter",
            "Inspector replays answered without being sent, by reason: busy (429, "
            "max_replays in flight), not_found (404), bad_edits (400, 408, 413), "
            "not_replayable (409).",
        )
        for reason, count in metrics.replays_refused.items():
            out.sample("pvtunnel_inspector_replays_refused_total", count, reason=reason)
    return out.text()


def _one_per_link(servers: Sequence[ServerLinkFigures]) -> list[ServerLinkFigures]:
    """One figure per URL and address: connected if either is, reconnects summed.

    Two links share them while one whose address left DNS drains and the address
    has come back meanwhile. Written twice, a series makes Prometheus refuse the
    whole scrape.
    """
    merged: dict[tuple[str, str | None], ServerLinkFigures] = {}
    for server in servers:
        key = (server.url, server.address)
        seen = merged.get(key)
        if seen is not None:
            server = attrs.evolve(
                server,
                connected=seen.connected or server.connected,
                reconnects=seen.reconnects + server.reconnects,
            )
        merged[key] = server
    return list(merged.values())


def _link_labels(server: ServerLinkFigures) -> dict[str, str]:
    if server.address is None:
        return {"server": server.url}
    return {"server": server.url, "address": server.address}


class _Exposition:
    """Lines of the text format; families must be written whole, one after another."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        self._lines.append(f"{name}{_labels(labels.items())} {_number(value)}")

    def histogram(self, name: str, histogram: Histogram, **labels: str) -> None:
        for bound, count in histogram.cumulative():
            le = (*labels.items(), ("le", _number(bound)))
            self._lines.append(f"{name}_bucket{_labels(le)} {count}")
        self._lines.append(f"{name}_sum{_labels(labels.items())} {_number(histogram.sum)}")
        self._lines.append(f"{name}_count{_labels(labels.items())} {histogram.count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)
