"""The server id of the upgrade (protocol.md 1.1): made from random bytes, read leniently."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pvtunnel._wire.identity import (
    MAX_SERVER_ID_LENGTH,
    SERVER_ID_HEADER,
    new_server_id,
    server_id_from,
)


def test_a_new_id_is_the_bytes_in_hexadecimal() -> None:
    assert new_server_id(bytes(range(16))) == "000102030405060708090a0b0c0d0e0f"


@pytest.mark.parametrize("size", [0, 7, MAX_SERVER_ID_LENGTH // 2 + 1])
def test_too_few_or_too_many_bytes_make_no_id(size: int) -> None:
    with pytest.raises(ValueError, match="random bytes"):
        new_server_id(bytes(size))


@given(st.binary(min_size=8, max_size=MAX_SERVER_ID_LENGTH // 2))
def test_every_new_id_reads_back_from_its_header(entropy: bytes) -> None:
    server_id = new_server_id(entropy)
    assert server_id_from([(SERVER_ID_HEADER, server_id.encode())]) == server_id


def test_the_header_name_is_case_insensitive_and_the_first_counts() -> None:
    headers = [
        (b"server", b"pvtunnel"),
        (b"Pvtunnel-Server-Id", b" abc-1.2_X\t"),
        (b"pvtunnel-server-id", b"second"),
    ]
    assert server_id_from(headers) == "abc-1.2_X"


def test_no_header_is_no_id() -> None:
    assert server_id_from([]) is None
    assert server_id_from([(b"upgrade", b"websocket")]) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"   ",
        b"a" * (MAX_SERVER_ID_LENGTH + 1),
        b"has space",
        b"line\r\nbreak",
        b"\x1b[31mred",
        "caf\u00e9".encode(),
        b"semi;colon",
    ],
)
def test_a_value_unfit_for_logs_is_no_id(value: bytes) -> None:
    # Not refused: the link then counts as reaching a server of its own.
    assert server_id_from([(SERVER_ID_HEADER, value)]) is None


def test_the_longest_id_is_taken() -> None:
    value = b"z" * MAX_SERVER_ID_LENGTH
    assert server_id_from([(SERVER_ID_HEADER, value)]) == value.decode()
