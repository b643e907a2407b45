"""The metric figures and their text exposition, read back with prometheus-client's parser."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from pvtunnel._metrics import (
    DURATION_BUCKETS_S,
    NO_ROUTE,
    AgentMetrics,
    Histogram,
    ServerLinkFigures,
    ServerMetrics,
    render_agent,
    render_server,
)
from tests.prometheus import Scrape


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(8.65)


def test_requests_are_counted_by_route_and_status_class() -> None:
    metrics = ServerMetrics()
    for status in (200, 204, 200, 404, 503, 101):
        metrics.record_request("app", status, 10, 100, 0.02)
    metrics.record_request(None, 404, 0, 0, None)
    metrics.record_request(None, 400, 0, 0, None)
    scrape = Scrape(render_server(metrics, active_streams=2, connected_agents=1))

    requests = scrape.series("pvtunnel_requests_total")
    assert requests == {
        (("route", "app"), ("status_class", "1xx")): 1,
        (("route", "app"), ("status_class", "2xx")): 3,
        (("route", "app"), ("status_class", "3xx")): 0,
        (("route", "app"), ("status_class", "4xx")): 1,
        (("route", "app"), ("status_class", "5xx")): 1,
        (("route", NO_ROUTE), ("status_class", "1xx")): 0,
        (("route", NO_ROUTE), ("status_class", "2xx")): 0,
        (("route", NO_ROUTE), ("status_class", "3xx")): 0,
        (("route", NO_ROUTE), ("status_class", "4xx")): 2,
        (("route", NO_ROUTE), ("status_class", "5xx")): 0,
    }
    assert scrape.value("pvtunnel_request_body_bytes_total", route="app") == 60
    assert scrape.value("pvtunnel_response_body_bytes_total", route="app") == 600
    assert scrape.value("pvtunnel_request_body_bytes_total", route=NO_ROUTE) == 0
    assert scrape.value("pvtunnel_active_streams") == 2
    assert scrape.value("pvtunnel_connected_agents") == 1
    assert scrape.types["pvtunnel_requests"] == "counter"
    assert scrape.types["pvtunnel_active_streams"] == "gauge"


def test_duration_histogram_counts_only_requests_that_reached_an_agent() -> None:
    metrics = ServerMetrics()
    for duration_s in (0.004, 0.005, 0.3, 120.0):
        metrics.record_request("app", 200, 0, 0, duration_s)
    metrics.record_request("app", 503, 0, 0, None)
    metrics.record_request(None, 404, 0, 0, None)
    scrape = Scrape(render_server(metrics, active_streams=0, connected_agents=0))

    assert scrape.types["pvtunnel_request_duration_seconds"] == "histogram"
    buckets = {
        dict(labels)["le"]: value
        for labels, value in scrape.series("pvtunnel_request_duration_seconds_bucket").items()
    }
    assert len(buckets) == len(DURATION_BUCKETS_S) + 1
    assert buckets["0.005"] == 2  # 0.005 itself falls in le="0.005"
    assert buckets["0.25"] == 2
    assert buckets["0.5"] == 3
    assert buckets["60.0"] == 3
    assert buckets["+Inf"] == 4
    assert scrape.value("pvtunnel_request_duration_seconds_count", route="app") == 4
    assert scrape.value("pvtunnel_request_duration_seconds_sum", route="app") == pytest.approx(
        120.309
    )
    assert ("pvtunnel_request_duration_seconds_count", (("route", NO_ROUTE),)) not in (
        scrape.values
    )


def test_unusual_status_classes_appear_once_seen() -> None:
    metrics = ServerMetrics()
    metrics.record_request("app", 799, 0, 0, 0.1)
    scrape = Scrape(render_server(metrics, active_streams=0, connected_agents=0))
    assert scrape.value("pvtunnel_requests_total", route="app", status_class="7xx") == 1
    assert ("pvtunnel_requests_total", (("route", "app"), ("status_class", "6xx"))) not in (
        scrape.values
    )


def test_label_values_are_escaped() -> None:
    # Route names cannot hold these characters today; the format must survive them anyway.
    name = 'we"ird\\route\nname'
    metrics = ServerMetrics()
    metrics.record_request(name, 200, 1, 2, 0.1)
    scrape = Scrape(render_server(metrics, active_streams=0, connected_agents=0))
    assert scrape.value("pvtunnel_requests_total", route=name, status_class="2xx") == 1


def test_connection_and_protocol_counters() -> None:
    metrics = ServerMetrics()
    metrics.agent_connects = 3
    metrics.agent_disconnects = 2
    metrics.agent_protocol_errors = 1
    metrics.client_protocol_errors = 4
    scrape = Scrape(render_server(metrics, active_streams=0, connected_agents=1))
    assert scrape.value("pvtunnel_agent_connects_total") == 3
    assert scrape.value("pvtunnel_agent_disconnects_total") == 2
    assert scrape.value("pvtunnel_protocol_errors_total", peer="agent") == 1
    assert scrape.value("pvtunnel_protocol_errors_total", peer="client") == 4


def test_an_empty_server_page_has_every_unlabelled_family() -> None:
    scrape = Scrape(render_server(ServerMetrics(), active_streams=0, connected_agents=0))
    assert set(scrape.types) == {
        "pvtunnel_requests",
        "pvtunnel_request_body_bytes",
        "pvtunnel_response_body_bytes",
        "pvtunnel_request_duration_seconds",
        "pvtunnel_active_streams",
        "pvtunnel_connected_agents",
        "pvtunnel_agent_connects",
        "pvtunnel_agent_disconnects",
        "pvtunnel_protocol_errors",
        "pvtunnel_held_requests_waiting",
        "pvtunnel_held_requests",
        "pvtunnel_client_connections",
        "pvtunnel_client_connections_refused",
    }
    assert scrape.series("pvtunnel_requests_total") == {}
    # Every outcome and reason from the first scrape, so rate() works at once.
    assert scrape.series("pvtunnel_held_requests_total") == {
        (("outcome", outcome),): 0.0
        for outcome in ("served", "timed_out", "refused", "abandoned", "shutting_down")
    }
    assert scrape.series("pvtunnel_client_connections_refused_total") == {
        (("reason", reason),): 0.0 for reason in ("not_allowed", "at_limit")
    }


def test_held_requests_figures() -> None:
    metrics = ServerMetrics()
    metrics.held_request_ended("served")
    metrics.held_request_ended("served")
    metrics.held_request_ended("timed_out")
    page = render_server(metrics, active_streams=0, connected_agents=0, held_requests=4)
    scrape = Scrape(page)
    assert scrape.value("pvtunnel_held_requests_waiting") == 4
    assert scrape.value("pvtunnel_held_requests_total", outcome="served") == 2
    assert scrape.value("pvtunnel_held_requests_total", outcome="timed_out") == 1


def test_agent_page() -> None:
    metrics = AgentMetrics()
    metrics.stream_started("app")
    metrics.stream_started("app")
    metrics.upstream_connect_failed("db")
    metrics.protocol_errors = 1
    text = render_agent(
        metrics,
        connected=True,
        reconnects=4,
        active_streams=1,
        idle_connections={"app": 2, "db": 0},
    )
    scrape = Scrape(text)
    assert scrape.value("pvtunnel_agent_connected") == 1
    assert scrape.value("pvtunnel_agent_reconnects_total") == 4
    assert scrape.value("pvtunnel_agent_active_streams") == 1
    assert scrape.series("pvtunnel_agent_streams_total") == {
        (("route", "app"),): 2,
        (("route", "db"),): 0,
    }
    assert scrape.series("pvtunnel_upstream_connect_errors_total") == {
        (("route", "app"),): 0,
        (("route", "db"),): 1,
    }
    assert scrape.series("pvtunnel_upstream_idle_connections") == {
        (("route", "app"),): 2,
        (("route", "db"),): 0,
    }
    assert scrape.value("pvtunnel_protocol_errors_total", peer="server") == 1


def test_agent_page_counts_refused_replays_by_reason_with_the_inspector_on() -> None:
    """Every reason from the first scrape (so rate() works at once), and only while
    the inspector runs: an agent without it has no replays to refuse."""
    metrics = AgentMetrics()

    def page(*, inspector: bool) -> Scrape:
        text = render_agent(
            metrics,
            connected=True,
            reconnects=0,
            active_streams=0,
            idle_connections={"app": 0},
            inspector=inspector,
        )
        return Scrape(text)

    assert "pvtunnel_inspector_replays_refused" not in page(inspector=False).types
    scrape = page(inspector=True)
    assert scrape.types["pvtunnel_inspector_replays_refused"] == "counter"
    assert scrape.series("pvtunnel_inspector_replays_refused_total") == {
        (("reason", reason),): 0 for reason in ("busy", "not_found", "bad_edits", "not_replayable")
    }
    metrics.replays_refused["busy"] += 3
    scrape = page(inspector=True)
    assert scrape.value("pvtunnel_inspector_replays_refused_total", reason="busy") == 3


def test_recording_a_request_allocates_nothing_that_stays() -> None:
    """The hot path: once a route is known, counting adds no memory, whatever the traffic."""
    metrics = ServerMetrics()
    metrics.record_request("app", 200, 1, 1, 0.01)
    metrics.record_request(None, 404, 0, 0, None)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for index in range(20000):
            metrics.record_request("app", 200 + index % 400, index, index, index / 1000)
            metrics.record_request(None, 404, 0, 0, None)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename.endswith("_metrics.py")
    )
    assert grown < 1024, grown
    assert set(metrics.routes) == {"app", NO_ROUTE}


def _agent_page(servers: list[ServerLinkFigures]) -> Scrape:
    """An agent's page with these server links (its reconnects summed over them)."""
    text = render_agent(
        AgentMetrics(),
        connected=any(server.connected for server in servers),
        reconnects=sum(server.reconnects for server in servers),
        active_streams=0,
        idle_connections={"app": 0},
        servers=servers,
    )
    return Scrape(text)


def test_agent_page_has_a_series_per_server_link() -> None:
    scrape = _agent_page(
        [
            ServerLinkFigures(url="wss://a.example.com", connected=True, reconnects=0),
            ServerLinkFigures(url="wss://b.example.com", connected=False, reconnects=3),
        ]
    )
    assert scrape.types["pvtunnel_agent_server_connected"] == "gauge"
    assert scrape.types["pvtunnel_agent_server_reconnects"] == "counter"
    assert scrape.series("pvtunnel_agent_server_connected") == {
        (("server", "wss://a.example.com"),): 1,
        (("server", "wss://b.example.com"),): 0,
    }
    assert scrape.series("pvtunnel_agent_server_reconnects_total") == {
        (("server", "wss://a.example.com"),): 0,
        (("server", "wss://b.example.com"),): 3,
    }
    # The unlabelled figures keep their meaning: any server, and all servers together.
    assert scrape.value("pvtunnel_agent_connected") == 1
    assert scrape.value("pvtunnel_agent_reconnects_total") == 3


def test_agent_page_has_one_series_for_two_links_to_one_address() -> None:
    """A link retiring (its address left DNS) and a new one for the same address
    (it came back meanwhile) are one series: written twice, Prometheus refuses
    the whole scrape (the parser here too)."""
    url, address = "wss://servers.example.com", "192.0.2.7"
    scrape = _agent_page(
        [
            ServerLinkFigures(url=url, connected=False, reconnects=2, address=address),
            ServerLinkFigures(url=url, connected=True, reconnects=3, address=address),
            ServerLinkFigures(url=url, connected=False, reconnects=1, address="192.0.2.8"),
        ]
    )
    assert scrape.series("pvtunnel_agent_server_connected") == {
        (("address", address), ("server", url)): 1,
        (("address", "192.0.2.8"), ("server", url)): 0,
    }
    assert scrape.series("pvtunnel_agent_server_reconnects_total") == {
        (("address", address), ("server", url)): 5,
        (("address", "192.0.2.8"), ("server", url)): 1,
    }
