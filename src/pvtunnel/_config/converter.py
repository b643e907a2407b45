"""The cattrs converter for config tables, and the problem lines it fails with.

``CONVERTER`` structures raw TOML tables into the attrs classes of ``server`` and
``agent`` (unknown keys are errors), running each field's rule as its hook, so that
every problem in a file is collected, not just the first; where a table has invalid
keys, the checks that relate its keys (``model.relates``) still run on the valid
ones, so their problems come in the same run. ``flatten`` turns what it raises into
``(key.path, message)`` pairs, with the keys as the file spells them.

Apart from ``loading``, which finds the values (in the file, token files and the
environment) and hands over the tables: turning tables into objects, and failures
into messages, is an idea of its own.

Nothing here formats ``str(exc)`` of an unknown exception into a message, so a
token can never slip into a problem line.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Union, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from pvtunnel._errors import FieldError, InvalidKeyError, InvalidValue

from . import rules
from .agent import Route, duplicate_route_names
from .model import TOML_KEY, Problem, relation_problems
from .rules import Rule, describe, format_key, join_path, show, split_path
from .secret import Secret

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping


# ---------------------------------------------------------------- the converter


# cattrs types **kwargs so that a dict of overrides could also fill its
# `_cattrs_*` flags, which mypy rejects; the overrides here never use those names.
_make_structure_fn = cast(
    "Callable[..., Callable[[Any, Any], Any]]",
    make_dict_structure_fn,
)


def _toml_key(cls: type, attribute: str) -> str:
    field = attrs.fields_dict(cls).get(attribute)
    return attribute if field is None else str(field.metadata.get(TOML_KEY, attribute))


def _rule_hook(rule: Rule[Any]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        return rule.parse(value)

    return structure


def _table_hook(converter: cattrs.Converter, cls: Any) -> Callable[[Any, Any], Any]:
    overrides = {}
    for field in attrs.fields(cls):
        options: dict[str, Any] = {}
        if isinstance(field.validator, Rule):
            options["struct_hook"] = _rule_hook(field.validator)
        if TOML_KEY in field.metadata:
            options["rename"] = field.metadata[TOML_KEY]
        if options:
            overrides[field.name] = override(**options)
    generated = _make_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **overrides)

    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, dict):
            # Described, not quoted: `internal = "<token>"` is an easy slip to make.
            raise InvalidValue(f"expected a table, got {describe(value)}")
        try:
            return generated(value, type_)
        except ClassValidationError as exc:
            if _refused_by_the_class(exc):
                raise  # every key was valid: the class ran its own checks
            problems = relation_problems(cls, _Partial(_valid_fields(converter, cls, value)))
            if not problems:
                raise
            raise ClassValidationError(
                exc.message, _in_key_order(cls, exc, problems), cls
            ) from None

    return structure


def _refused_by_the_class(error: ClassValidationError) -> bool:
    """Whether every key of the table was valid and known, so that what failed was
    the constructor, which runs the checks relating the keys itself."""
    noted, bare = error.group_exceptions()
    return not noted and not any(isinstance(sub, ForbiddenExtraKeysError) for sub in bare)


def _in_key_order(
    cls: type, error: ClassValidationError, problems: list[Problem]
) -> list[Exception]:
    """The table's own errors and ``problems`` (from its relation checks) as one
    list: each key's lines together, the keys in the class's order, as the
    constructor's `FieldError` lists them; unknown keys last, as cattrs puts them."""
    noted, bare = error.group_exceptions()
    fields = attrs.fields_dict(cls)
    for at, message in problems:
        key, rest = split_path(at)
        relation = InvalidValue(message, at=rest)
        note = AttributeValidationNote(
            f"Structuring class {cls.__name__} @ attribute {key}", key, fields[key].type
        )
        relation.__notes__ = [note]
        noted.append((relation, note))
    order = list(fields)
    noted.sort(key=lambda pair: order.index(pair[1].name))
    return [*(sub for sub, _ in noted), *bare]


class _Partial:
    """Stands in for a table that did not load, for the checks relating its keys.

    It holds the keys whose values are valid on their own, as the class would hold
    them (tables and arrays of tables in it as stand-ins too); reading any other key
    raises `InvalidKeyError`, which skips the check that read it.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> object:
        try:
            return self._values[name]
        except KeyError:
            raise InvalidKeyError(name) from None


_INVALID: Final = object()
"""A value that is invalid on its own: its key stays out of a `_Partial`."""


def _valid_fields(converter: cattrs.Converter, cls: type, raw: dict[str, Any]) -> dict[str, object]:
    """The valid keys of the table ``raw`` for ``cls``, by attribute name; absent
    keys hold their defaults, as the constructor would give them."""
    values: dict[str, object] = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        key = _toml_key(cls, field.name)
        value = _valid_value(converter, field, raw[key]) if key in raw else _default(field, values)
        if value is not _INVALID:
            values[field.name] = value if field.converter is None else field.converter(value)
    return values


def _valid_value(converter: cattrs.Converter, field: attrs.Attribute[Any], raw: object) -> object:
    if isinstance(field.validator, Rule):
        try:
            return field.validator.parse(raw)
        except Exception:  # as cattrs collects them: this value's problem is reported already
            return _INVALID
    return _valid_part(converter, field.type, raw)


def _valid_part(converter: cattrs.Converter, type_: Any, raw: object) -> object:
    """``raw`` as ``type_``: a table (or an array of them) as a `_Partial` of its
    valid keys, anything else as the converter structures it, if it does."""
    if _is_table_array(type_):
        if not isinstance(raw, list):
            return _INVALID
        items = (_valid_part(converter, get_args(type_)[0], item) for item in raw)
        return tuple(_Partial({}) if item is _INVALID else item for item in items)
    table = _table_class(type_)
    if table is not None:
        return _Partial(_valid_fields(converter, table, raw)) if isinstance(raw, dict) else _INVALID
    try:
        return converter.structure(raw, type_)
    except Exception:  # as cattrs collects them: this value's problem is reported already
        return _INVALID


def _table_class(type_: Any) -> type | None:
    """The attrs class a field of ``type_`` holds (``X | None`` holds ``X``), if any."""
    if attrs.has(type_):
        return cast("type", type_)
    if get_origin(type_) in (Union, types.UnionType):
        tables = [arg for arg in get_args(type_) if attrs.has(arg)]
        return tables[0] if len(tables) == 1 else None
    return None


def _default(field: attrs.Attribute[Any], values: dict[str, object]) -> object:
    default: Any = field.default
    if default is attrs.NOTHING:
        return _INVALID  # required: its absence is reported as a missing key
    if not isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # a class at run time
        return default
    if not default.takes_self:
        return default.factory()
    try:
        return default.factory(_Partial(values))
    except InvalidKeyError:
        return _INVALID  # computed from a key that is invalid


def _raw_route_name(table: object) -> str | None:
    if not isinstance(table, dict):
        return None
    try:
        return rules.route_name(table.get("name"))
    except InvalidValue:
        return None


def _is_table_array(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is ... and attrs.has(args[0])


def _table_array_hook(converter: cattrs.Converter, type_: Any) -> Callable[[Any, Any], Any]:
    element = get_args(type_)[0]

    def structure(value: Any, _type: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise InvalidValue(f"expected an array of tables, got {describe(value)}")
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, element))
            except Exception as exc:  # cattrs' own convention: collect, flatten later
                note = IterableValidationNote(
                    f"Structuring {type_} @ index {index}", index, element
                )
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if element is Route:
            # Checked here, on the raw names, rather than by AgentConfig's validator,
            # so duplicates are reported along with the file's other problems.
            duplicates = duplicate_route_names([_raw_route_name(item) for item in value])
            if duplicates:
                errors.append(InvalidValue.many(duplicates))
        if errors:
            raise IterableValidationError(f"While structuring {type_}", errors, type_)
        return tuple(items)

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook_factory(attrs.has, lambda cls: _table_hook(converter, cls))
    converter.register_structure_hook_factory(
        _is_table_array, lambda type_: _table_array_hook(converter, type_)
    )
    # Unstructuring is for display (status pages, debugging); keep tokens out of it.
    converter.register_unstructure_hook(Secret, lambda _secret: str(_secret))
    converter.register_unstructure_hook(Path, str)
    return converter


CONVERTER: Final = _make_converter()
"""The one converter for config tables: unknown keys are errors, not ignored."""


# ---------------------------------------------------------------- error lines


def _unknown_key_message(cls: type, key: str, root: type | None) -> str:
    known = [_toml_key(cls, field.name) for field in attrs.fields(cls) if field.init]
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {show(close[0])}?)"
    if root is not None and cls is not root and key in _top_level_keys(root):
        # TOML puts every key after a [table] header in that table.
        return f"unknown key here: {key} goes at the top of the file, above the first [table]"
    return "unknown key"


def _top_level_keys(root: type) -> set[str]:
    """The root's own keys, not its tables (``client_id``; ``host``)."""
    return {
        _toml_key(root, field.name)
        for field in attrs.fields(root)
        if field.init and field.type in (str, int, float, bool)
    }


def flatten(
    error: BaseException, path: str = "", root: type | None = None
) -> Iterator[tuple[str, str]]:
    """Turn a structuring failure into ``(key.path, message)`` pairs, in file order.

    The same walk as ``cattrs.transform_error``, but with TOML key names (``url``,
    not ``urls``), one line per unknown key, and our own messages. ``root`` is the
    file's top level (the outermost class, found on the way in).
    """
    if isinstance(error, ClassValidationError | ForbiddenExtraKeysError) and root is None:
        root = error.cl
    if isinstance(error, ClassValidationError):
        noted, bare = error.group_exceptions()
        for sub, attribute_note in noted:
            key = _toml_key(error.cl, attribute_note.name)
            yield from flatten(sub, join_path(path, key), root)
        for sub in bare:
            yield from flatten(sub, path, root)
    elif isinstance(error, IterableValidationError):
        indexed, bare = error.group_exceptions()
        for sub, index_note in indexed:
            yield from flatten(sub, f"{path}[{index_note.index}]", root)
        for sub in bare:
            yield from flatten(sub, path, root)
    elif isinstance(error, ForbiddenExtraKeysError):
        for key in sorted(error.extra_fields):
            message = _unknown_key_message(error.cl, key, root)
            yield join_path(path, format_key(key)), message
    elif isinstance(error, InvalidValue | FieldError):
        for at, message in error.entries:
            yield join_path(path, at), message
    elif isinstance(error, KeyError):
        yield path, "missing required key"
    else:
        # Deliberately not str(error): it could quote a value, and values may be tokens.
        yield path, f"invalid value ({type(error).__name__})"
