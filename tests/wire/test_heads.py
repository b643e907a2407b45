"""Request and response heads to and from their wire fields (protocol.md 4.4)."""

from __future__ import annotations

import pytest
from hypothesis import given

from pvtunnel._errors import RemoteProtocolError
from pvtunnel._wire.frames import encode_fields
from pvtunnel._wire.heads import RequestHead, ResponseHead
from tests import strategies as sts


@given(sts.request_heads())
def test_request_heads_round_trip(head: RequestHead) -> None:
    assert RequestHead.from_fields(tuple(head.to_fields())) == head


@given(sts.response_heads())
def test_response_heads_round_trip(head: ResponseHead) -> None:
    fields = tuple(head.to_fields())
    assert ResponseHead.from_fields(fields, is_informational=head.is_informational) == head


@given(sts.request_heads())
def test_request_head_encodes_as_its_fields(head: RequestHead) -> None:
    assert head.encode() == encode_fields(head.to_fields())


@given(sts.response_heads())
def test_response_head_encodes_as_its_fields(head: ResponseHead) -> None:
    assert head.encode() == encode_fields(head.to_fields())


@pytest.mark.parametrize("size", [0, 255, 256, 1023, 1024, 65535])
def test_heads_encode_fields_of_any_length(size: int) -> None:
    """Short fields take ready-made length prefixes, longer ones the general path."""
    field = b"v" * size
    request = RequestHead(route="app", method=b"GET", target=b"/", headers=((b"x", field),))
    assert request.encode() == encode_fields(request.to_fields())
    response = ResponseHead(status=200, reason=field, headers=((field, b""),))
    assert response.encode() == encode_fields(response.to_fields())


def test_heads_refuse_a_field_over_65535_bytes() -> None:
    with pytest.raises(ValueError, match="65535"):
        ResponseHead(status=200, headers=((b"x", b"v" * 65536),)).encode()
    with pytest.raises(ValueError, match="65535"):
        RequestHead(route="app", method=b"GET", target=b"/" * 65536).encode()


def test_field_order_is_route_method_target_then_pairs() -> None:
    head = RequestHead(
        route="app", method=b"POST", target=b"/x", headers=((b"a", b"1"), (b"b", b""))
    )
    assert head.to_fields() == [b"app", b"POST", b"/x", b"a", b"1", b"b", b""]
    response = ResponseHead(status=204, reason=b"", headers=((b"x", b"y"),))
    assert response.to_fields() == [b"204", b"", b"x", b"y"]


@pytest.mark.parametrize(
    ("status", "informational"),
    [
        (100, True),
        (102, True),
        (103, True),
        (199, True),
        (101, False),
        (200, False),
        (404, False),
        (599, False),
    ],
)
def test_informational_means_1xx_other_than_101(status: int, informational: bool) -> None:
    head = ResponseHead(status=status)
    assert head.is_informational is informational
    assert ResponseHead.from_fields(tuple(head.to_fields()), is_informational=informational) == head
    with pytest.raises(RemoteProtocolError, match="with that flag"):
        ResponseHead.from_fields(tuple(head.to_fields()), is_informational=not informational)


@pytest.mark.parametrize(
    "raw_status", [b"", b"20", b"2000", b"20a", b" 20", b"+20", b"-20", b"\xd9\xa2\xd9\xa0\xd9\xa0"]
)
def test_status_must_be_three_ascii_digits(raw_status: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="three digits"):
        ResponseHead.from_fields((raw_status, b"OK"), is_informational=False)


@pytest.mark.parametrize("raw_status", [b"000", b"099", b"600", b"999"])
def test_status_must_be_100_to_599(raw_status: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="response status"):
        ResponseHead.from_fields((raw_status, b""), is_informational=False)


@pytest.mark.parametrize("fields", [(), (b"200",), (b"200", b"OK", b"name")])
def test_response_field_count_must_be_even_and_at_least_two(fields: tuple[bytes, ...]) -> None:
    with pytest.raises(RemoteProtocolError, match="status, reason and pairs"):
        ResponseHead.from_fields(fields, is_informational=False)


@pytest.mark.parametrize("fields", [(), (b"app", b"GET"), (b"app", b"GET", b"/", b"name")])
def test_request_field_count_must_be_odd_and_at_least_three(fields: tuple[bytes, ...]) -> None:
    with pytest.raises(RemoteProtocolError, match="route, method, target"):
        RequestHead.from_fields(fields)


@pytest.mark.parametrize(
    "fields", [(b"app", b"", b"/"), (b"app", b"GET", b""), (b"\xc3\xa9", b"GET", b"/")]
)
def test_request_needs_method_target_and_an_ascii_route(fields: tuple[bytes, ...]) -> None:
    with pytest.raises(RemoteProtocolError):
        RequestHead.from_fields(fields)


def test_empty_route_is_allowed() -> None:
    assert RequestHead.from_fields((b"", b"GET", b"/")) == RequestHead(
        route="", method=b"GET", target=b"/"
    )
