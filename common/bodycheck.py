"""Is a decoded message body well formed? Each field is checked against the type its message dataclass
declares. ``body_checker`` makes the predicates once per field, when ``common.protocol`` is imported, so a
message costs a few dict lookups and one call per field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from common.errors import DecodeError

if TYPE_CHECKING:
    from common.protocol import Message, MsgType

MAX_DEPTH = 8  # maps and lists in a body nest at most this deep


def body_checker(messages: Mapping[MsgType, type[Message]], fields: Mapping[MsgType, Collection[str]],
                 shallow: Collection[tuple[MsgType, str]] = ()) -> Callable[[MsgType, Any, Any], type[Message]]:
    """``checked(mtype, msg_id, body)``: the class of a message whose id and body are well formed; raises
    ``DecodeError`` if not. ``fields`` names each type's body fields; a ``(type, field)`` in ``shallow``
    skips the depth check (its parts are checked one by one elsewhere)."""
    hints = {t: typing.get_type_hints(cls) for t, cls in messages.items()}
    checks = {t: {name: _checker(hints[t][name]) for name in names} for t, names in fields.items()}
    required = {t: _required(cls, fields[t]) for t, cls in messages.items()}
    nesting = {t: frozenset(n for n in names if _may_nest(hints[t][n]) and (t, n) not in shallow)
               for t, names in fields.items()}
    classes = dict(messages)

    def checked(mtype: MsgType, msg_id: Any, body: Any) -> type[Message]:
        if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 128:
            raise DecodeError("message id must be a non-empty string")
        if not isinstance(body, dict):
            raise DecodeError("body must be a map")
        type_checks = checks[mtype]
        unknown = body.keys() - type_checks.keys()  # a key that is not a string is unknown too
        if unknown:
            if not all(isinstance(k, str) for k in unknown):
                raise DecodeError(f"{mtype.value}: body keys must be strings")
            raise DecodeError(f"{mtype.value}: unknown fields {sorted(unknown)}")
        for n in nesting[mtype]:
            if body.get(n) and _depth(body[n], 1) > MAX_DEPTH:  # an empty map or list is one level
                raise DecodeError(f"body is nested deeper than {MAX_DEPTH} levels")
        missing = required[mtype] - body.keys()
        if missing:
            raise DecodeError(f"{mtype.value}: missing fields {sorted(missing)}")
        for name, value in body.items():
            if not type_checks[name](value):
                raise DecodeError(f"{mtype.value}: field {name!r} has the wrong type")
        return classes[mtype]

    return checked


def _checker(hint: Any) -> Callable[[Any], bool]:
    """A predicate for values of the type ``hint`` (made once per field, used on every message)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_checker(h) for h in typing.get_args(hint)]
        return lambda v: any(ok(v) for ok in options)
    if hint is type(None):
        return lambda v: v is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if item is Any:
            return lambda v: isinstance(v, list)
        item_ok = _checker(item)
        return lambda v: isinstance(v, list) and all(item_ok(x) for x in v)
    if hint is Any:
        return lambda v: True
    if hint is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    return lambda v: isinstance(v, hint)


def _may_nest(hint: Any) -> bool:
    """Whether a value of this type can hold maps or lists (and so needs the depth check)."""
    if hint in (dict, list, Any) or typing.get_origin(hint) in (list, dict):
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(map(_may_nest, typing.get_args(hint)))


def _required(cls: type, names: Collection[str]) -> frozenset[str]:
    """The body fields without a default."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.name in names
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
