"""Secret: redaction everywhere a value can be printed, constant-time comparison."""

from __future__ import annotations

import copy
import hmac
import pickle
import string
from pathlib import Path

import pytest

from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    ExternalConfig,
    InternalConfig,
    ScopedToken,
    Secret,
    ServerConfig,
    ServerEndpoint,
    generate_token,
)
from pvtunnel._config.converter import CONVERTER

TOKEN = "tok-Very-Secret-4711"


def test_repr_and_str_are_redacted() -> None:
    secret = Secret(TOKEN)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret} {secret!r} {secret!s}" == "*** Secret('***') ***"
    assert "%s %r" % (secret, secret) == "*** Secret('***')"  # noqa: UP031 - logging style


def test_reveal_returns_the_value() -> None:
    assert Secret(TOKEN).reveal() == TOKEN


def test_only_str_is_accepted() -> None:
    with pytest.raises(TypeError, match="Secret takes a str"):
        Secret(b"bytes")  # type: ignore[arg-type]  # the mistake under test


@pytest.mark.parametrize("candidate", [TOKEN, TOKEN.encode()])
def test_matches_the_token_as_str_or_bytes(candidate: str | bytes) -> None:
    assert Secret(TOKEN).matches(candidate)


@pytest.mark.parametrize(
    "candidate",
    ["", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), b"wrong", "tök", "\ud800", TOKEN.encode() + b"\0"],
)
def test_does_not_match_anything_else(candidate: str | bytes) -> None:
    assert not Secret(TOKEN).matches(candidate)


def test_a_lone_surrogate_does_not_match_a_question_mark() -> None:
    # An encoder that replaced the surrogate with "?" would let this through.
    assert not Secret("?").matches("\ud800")


def test_matches_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert Secret(TOKEN).matches(TOKEN)
    assert not Secret(TOKEN).matches(b"nope")
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (TOKEN.encode(), b"nope")]


def test_equality_and_hash_follow_the_value() -> None:
    assert Secret(TOKEN) == Secret(TOKEN)
    assert Secret(TOKEN) != Secret("other")
    assert Secret(TOKEN) != TOKEN
    assert len({Secret(TOKEN), Secret(TOKEN), Secret("other")}) == 2


def test_is_immutable() -> None:
    secret = Secret(TOKEN)
    with pytest.raises(AttributeError):
        secret._value = "changed"
    with pytest.raises(AttributeError):
        del secret._value
    assert secret.reveal() == TOKEN


def test_survives_copy_and_pickle() -> None:
    secret = Secret(TOKEN)
    for clone in (copy.copy(secret), copy.deepcopy(secret), pickle.loads(pickle.dumps(secret))):
        assert clone.reveal() == TOKEN
        assert repr(clone) == "Secret('***')"


def _configs_holding(secret: Secret) -> list[object]:
    # A scoped token must differ from the unscoped one; this one still holds TOKEN.
    scoped = Secret(secret.reveal() + "-scoped")
    internal = InternalConfig(token=secret, tokens=(ScopedToken(token=scoped, routes=("*",)),))
    external = ExternalConfig(token=secret)
    admin = AdminConfig(port=9000, host="0.0.0.0", token=secret)
    endpoint = ServerEndpoint(urls=("ws://proxy:8081",), token=secret)
    return [
        internal.tokens[0],
        internal,
        external,
        admin,
        ServerConfig(internal=internal, external=external, admin=admin),
        endpoint,
        AgentConfig(client_id="a", server=endpoint, admin=admin),
    ]


def test_no_config_repr_shows_the_token() -> None:
    for config in _configs_holding(Secret(TOKEN)):
        text = f"{config!r} {config!s} {config}"
        assert TOKEN not in text
        assert "Secret('***')" in text


def test_unstructuring_redacts_tokens() -> None:
    for config in _configs_holding(Secret(TOKEN)):
        dumped = repr(CONVERTER.unstructure(config))
        assert TOKEN not in dumped
        assert "***" in dumped


def test_unstructuring_renders_paths_as_text() -> None:
    dumped = CONVERTER.unstructure(InternalConfig(tls_cert=Path("/c"), tls_key=Path("/k")))
    assert dumped["tls_cert"] == "/c"


def test_generated_tokens_are_long_random_and_header_safe() -> None:
    tokens = {generate_token() for _ in range(20)}
    assert len(tokens) == 20
    allowed = set(string.ascii_letters + string.digits + "-_")
    for token in tokens:
        assert len(token) == 43
        assert set(token) <= allowed
