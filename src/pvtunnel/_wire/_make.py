"""Positional constructors for attrs frozen classes built on the hot path.

attrs' ``__init__`` for a frozen class binds ``object.__setattr__`` and sets each
attribute by name, about twice the cost of storing into the slots directly. Every
proxied request builds several frames, events and heads from values the decoder
or the multiplexer has already checked, so those take these constructors. The
instances are the same as attrs' (equal, same hash and repr); classes with
validators, converters or defaults computed at build time must not use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


def positional(cls: type[T], *names: str) -> Callable[..., T]:
    """A constructor taking ``names`` positionally, in that order: all of ``cls``'s
    attributes (an attribute left out would be unset, not defaulted)."""
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    if (
        names != tuple(field.name for field in fields)
        or any(field.validator or field.converter for field in fields)
        or not 1 <= len(names) <= 4
    ):
        raise TypeError(f"{cls.__name__} cannot take {names} positionally")
    new = object.__new__
    setters: list[Callable[[Any, Any], None]] = [cls.__dict__[name].__set__ for name in names]
    if len(setters) == 1:
        (s1,) = setters

        def make1(a: object) -> T:
            obj = new(cls)
            s1(obj, a)
            return obj

        return make1
    if len(setters) == 2:
        s1, s2 = setters

        def make2(a: object, b: object) -> T:
            obj = new(cls)
            s1(obj, a)
            s2(obj, b)
            return obj

        return make2
    if len(setters) == 3:
        s1, s2, s3 = setters

        def make3(a: object, b: object, c: object) -> T:
            obj = new(cls)
            s1(obj, a)
            s2(obj, b)
            s3(obj, c)
            return obj

        return make3
    s1, s2, s3, s4 = setters

    def make4(a: object, b: object, c: object, d: object) -> T:
        obj = new(cls)
        s1(obj, a)
        s2(obj, b)
        s3(obj, c)
        s4(obj, d)
        return obj

    return make4
