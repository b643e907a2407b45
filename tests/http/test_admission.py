"""The server's admission rules as a table: request and server facts -> outcome."""

from __future__ import annotations

import base64

import attrs
import pytest

from pvtunnel._config import Secret
from pvtunnel._http.access import PROXY_AUTHENTICATE
from pvtunnel._http.admission import Forward, Refuse, WaitForRoute, admit, forward_to
from pvtunnel._http.routing import Router

TOKEN = Secret("s3cret")
LIMIT = 2
BASIC = b"Basic " + base64.b64encode(b"any:s3cret")


@attrs.define(eq=False)
class Agent:
    name: str
    in_flight: int = 0


IDLE = Agent("idle")
BUSY = Agent("busy", in_flight=1)
FULL = Agent("full", in_flight=LIMIT)


def router() -> Router[Agent]:
    served: Router[Agent] = Router(domain="tunnel.example.com")
    served.add(IDLE, ["app"])
    served.add(BUSY, ["app"])
    served.add(FULL, ["full"])
    return served


@attrs.frozen(kw_only=True)
class Facts:
    authority: bytes | None = b"app"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    token: Secret | None = None
    draining: bool = False


def forward(route: str, agent: Agent) -> Forward[Agent]:
    return Forward(route=route, session=agent)


ROWS = [
    # (case, facts, outcome)
    ("routed by host", Facts(), forward("app", IDLE)),
    ("host names are case-insensitive", Facts(authority=b"APP:8080"), forward("app", IDLE)),
    ("subdomain of the domain", Facts(authority=b"app.tunnel.example.com"), forward("app", IDLE)),
    ("no host", Facts(authority=None), Refuse(status=400, reason="the request names no host")),
    ("empty host", Facts(authority=b""), Refuse(status=400, reason="the request names no host")),
    (
        "no host wins over a missing token",
        Facts(authority=None, token=TOKEN),
        Refuse(status=400, reason="the request names no host"),
    ),
    (
        "token required, none presented",
        Facts(token=TOKEN),
        Refuse(status=407, reason="proxy authentication required", headers=(PROXY_AUTHENTICATE,)),
    ),
    (
        "token required, a wrong one presented",
        Facts(token=TOKEN, headers=((b"Proxy-Authorization", b"Bearer nope"),)),
        Refuse(status=407, reason="proxy authentication required", headers=(PROXY_AUTHENTICATE,)),
    ),
    (
        "token presented as Bearer",
        Facts(token=TOKEN, headers=((b"proxy-authorization", b"Bearer s3cret"),)),
        forward("app", IDLE),
    ),
    (
        "token presented as Basic password",
        Facts(token=TOKEN, headers=((b"Proxy-Authorization", BASIC),)),
        forward("app", IDLE),
    ),
    (
        "a token where none is asked for is ignored",
        Facts(headers=((b"Proxy-Authorization", b"Bearer nope"),)),
        forward("app", IDLE),
    ),
    ("draining", Facts(draining=True), Refuse(status=503, reason="the server is shutting down")),
    (
        "a missing token wins over draining",
        Facts(draining=True, token=TOKEN),
        Refuse(status=407, reason="proxy authentication required", headers=(PROXY_AUTHENTICATE,)),
    ),
    (
        "draining wins over an unknown host",
        Facts(authority=b"nowhere", draining=True),
        Refuse(status=503, reason="the server is shutting down"),
    ),
    ("no agent serves the host", Facts(authority=b"nowhere"), WaitForRoute(authority="nowhere")),
    ("an IPv6 literal", Facts(authority=b"[::1]:8080"), WaitForRoute(authority="[::1]:8080")),
    ("an IPv4 address", Facts(authority=b"192.0.2.1"), WaitForRoute(authority="192.0.2.1")),
    *[
        (f"valid host {good!r}", Facts(authority=good), WaitForRoute(authority=good.decode()))
        for good in (
            b"[v1.fe80::a+en1]",
            b"[fe80::1%25eth0]:80",
            b"[::ffff:192.0.2.1]",
            b"[FE80::1%25en%2F1]",
            b"a%41b",
            b"x!$&'()*+,;=",
        )
    ],
    *[
        (
            f"invalid host {bad!r}",
            Facts(authority=bad, token=TOKEN),
            Refuse(status=400, reason="the request's host is not a valid host[:port]"),
        )
        for bad in (
            b"app, evil.example",
            b"user@app",
            b"app:80x",
            b"app/x",
            b"a\tb",
            b"[::1",
            b"%",
            b"a%zz",
            # Brackets hold an IPv6 address (its zone as "%25...") or an IPvFuture.
            b"[app]",
            b"[1.2.3.4]:80",
            b"[::1::2]",
            b"[fe80::1%eth0]",
            b"[fe80::1%25]",
            b"[v.x]",
            b"[vz.x]",
        )
    ],
    (
        "agent at its limit",
        Facts(authority=b"full"),
        Refuse(status=503, reason="the agent for this host is at its limit", route="full"),
    ),
]


@pytest.mark.parametrize(("facts", "outcome"), [row[1:] for row in ROWS], ids=[r[0] for r in ROWS])
def test_admission_table(facts: Facts, outcome: Forward[Agent] | Refuse | WaitForRoute) -> None:
    result = admit(
        authority=facts.authority,
        headers=facts.headers,
        token=facts.token,
        draining=facts.draining,
        router=router(),
        max_streams_per_agent=LIMIT,
    )
    assert result == outcome


def test_the_least_busy_agent_is_chosen() -> None:
    served: Router[Agent] = Router()
    busy, idle = Agent("busy", in_flight=5), Agent("idle", in_flight=1)
    served.add(busy, ["app"])
    served.add(idle, ["app"])
    result = admit(
        authority=b"app",
        headers=(),
        token=None,
        draining=False,
        router=served,
        max_streams_per_agent=10,
    )
    assert result == forward("app", idle)


@pytest.mark.parametrize(
    ("agent", "outcome"),
    [
        (IDLE, forward("app", IDLE)),
        (BUSY, forward("app", BUSY)),
        (FULL, Refuse(status=503, reason="the agent for this host is at its limit", route="app")),
    ],
    ids=["idle", "below the limit", "at the limit"],
)
def test_a_request_that_waited_meets_the_limit_rule_alone(
    agent: Agent, outcome: Forward[Agent] | Refuse
) -> None:
    assert forward_to("app", agent, LIMIT) == outcome
