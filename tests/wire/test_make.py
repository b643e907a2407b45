"""The positional constructors build what attrs' own constructors build."""

from __future__ import annotations

import attrs
import pytest

from pvtunnel._errors import ErrorCode
from pvtunnel._wire import events as ev, frames as fr, heads
from pvtunnel._wire._make import positional
from pvtunnel._wire.frames import StreamId

S1 = StreamId(1)
REQUEST = heads.RequestHead(route="app", method=b"GET", target=b"/", headers=((b"a", b"1"),))
RESPONSE = heads.ResponseHead(status=200, reason=b"OK", headers=((b"a", b"1"),))


@pytest.mark.parametrize(
    ("made", "built"),
    [
        (fr._data(S1, b"x"), fr.Data(stream_id=S1, data=b"x")),
        (fr._head(S1, (b"a",), True), fr.Head(stream_id=S1, fields=(b"a",), is_informational=True)),
        (fr._end(S1), fr.End(stream_id=S1)),
        (ev.stream_opened(S1, REQUEST), ev.StreamOpened(stream_id=S1, head=REQUEST)),
        (ev.response_received(S1, RESPONSE), ev.ResponseReceived(stream_id=S1, head=RESPONSE)),
        (ev.data_received(S1, b"x"), ev.DataReceived(stream_id=S1, data=b"x")),
        (ev.stream_ended(S1), ev.StreamEnded(stream_id=S1)),
        (
            heads._request_head("app", b"GET", b"/", ((b"a", b"1"),)),
            REQUEST,
        ),
        (heads._response_head(200, b"OK", ((b"a", b"1"),)), RESPONSE),
    ],
)
def test_made_instances_are_the_attrs_ones(made: object, built: object) -> None:
    assert type(made) is type(built)
    assert made == built
    assert hash(made) == hash(built)
    assert repr(made) == repr(built)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.stream_id = StreamId(2)  # type: ignore[attr-defined]


@attrs.frozen
class _Checked:
    value: int = attrs.field(validator=attrs.validators.instance_of(int))


@attrs.frozen
class _Five:
    a: int
    b: int
    c: int
    d: int
    e: int


def test_only_plain_classes_with_all_attributes_in_order() -> None:
    with pytest.raises(TypeError, match="positionally"):
        positional(fr.Reset, "stream_id", "code")
    with pytest.raises(TypeError, match="positionally"):
        positional(fr.Data, "data", "stream_id")
    with pytest.raises(TypeError, match="positionally"):
        positional(_Checked, "value")
    with pytest.raises(TypeError, match="positionally"):
        positional(_Five, "a", "b", "c", "d", "e")
    assert positional(fr.Reset, "stream_id", "code", "reason")(S1, ErrorCode.CANCEL, "") == (
        fr.Reset(stream_id=S1, code=ErrorCode.CANCEL)
    )
