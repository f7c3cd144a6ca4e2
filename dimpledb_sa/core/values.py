"""Column values <-> canonical JSON text, chosen once per column from its SQLAlchemy type.

The change log and the bundles hold JSON-compatible values; locally each is stored as the
text ``json.dumps(value)`` (default settings: the one canonical spelling, so that logs
compare equal across replicas), and ``None`` (SQL NULL) stands for JSON ``null``.

=================  ==========================  ===================================
column type        JSON value                  back to Python
=================  ==========================  ===================================
String, Text       string                      str
Integer family     number                      int
Float              number                      float
Numeric(decimal)   string ``"12.50"``          Decimal
Boolean            true / false                bool
Date/DateTime/Time ISO-8601 string             date / naive datetime / time
DateTime(tz=True)  ISO-8601, UTC ``+00:00``    aware datetime in UTC
LargeBinary        base64 string               bytes
JSON               the JSON value itself       the same
Enum (enum class)  the member's name           the member
Uuid               canonical string            uuid.UUID or str (``as_uuid``)
Interval           number of seconds           timedelta
PickleType         base64 of the pickle        the unpickled object
=================  ==========================  ===================================

``Float(asdecimal=True)`` holds ``Decimal`` values and is logged as a decimal ``Numeric``.
A ``TypeDecorator``'s value is logged the way its ``impl`` stores it: ``process_bind_param``
then the impl's codec on the way in, the impl's codec then ``process_result_value`` on the
way out (both called with SQLAlchemy's default dialect). Other types pass values through
``json.dumps`` unchanged, so they must already be JSON-compatible, and (like JSON columns)
nested at most :data:`MAX_VALUE_DEPTH` arrays/objects deep: :func:`check_depth` walks them
iteratively before they are serialized, so a deeper value is refused with ``ValueError`` at
flush, whatever the call stack, exactly as every reader refuses it in a bundle.
``to_json``/``from_json`` take non-null values; ``encode``/``decode`` also map ``None`` to
``None``.

**What decoding a pulled value runs.** Pulled values come from other devices, so no codec
may run code a value chooses, and a value of the wrong JSON type fails with ``ValueError``,
``TypeError``, ``LookupError`` or ``ArithmeticError`` (what the merge treats as a change
that cannot be applied), never anything else. The built-in decoders only parse:
``json.loads`` (no object hooks), ``int``/``float``/``Decimal``/``bool`` of a JSON scalar,
``fromisoformat``, strict base64, ``uuid.UUID``, ``timedelta(seconds=...)`` and an enum
class's member lookup by name (the application's own enum class). The exception is
``PickleType``: ``pickle.loads`` (or the type's ``pickler``) calls whatever the bytes name,
so a value forged by any device that can write to the remote could run code here.
:func:`unsafe_reason` finds such types (also inside a ``TypeDecorator``, ``ARRAY``,
``MutableDict.as_mutable(...)``), and :mod:`.tracking` refuses to track them unless the
column opts in. Beyond that, a ``TypeDecorator``'s ``process_result_value`` (and a custom
type's result and bind processors, run by SQLAlchemy when the merge writes the row) are the
application's own code, run on a value the remote chose: they are as safe as that code is
(one that unpickles or evaluates its input is as dangerous as ``PickleType``, and dimpledb
cannot tell).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.schema import Column

__all__ = ["MAX_VALUE_DEPTH", "Codec", "check_depth", "codec_for", "decode_column", "dumps",
           "exact_encoder", "holds_nul", "json_texts", "loads", "passes_through", "unsafe_reason",
           "value_depth"]

Encoder = Callable[[Any], "str | None"]
Decoder = Callable[["str | None"], Any]

dumps: Callable[[Any], str] = json.dumps
loads: Callable[[str], Any] = json.loads

MAX_VALUE_DEPTH = 64
"""How deeply a value may nest arrays and objects (``[]`` is 1, ``[[1]]`` 2, a scalar 0): a
format constant, the same on every replica (``docs/FORMAT.md``, Limits)."""

_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
"""``\u0000`` as JSON escapes it (not preceded by an odd number of backslashes)."""


def holds_nul(json_text: str) -> bool:
    """Whether a JSON text holds a string (value, key or id) with the character U+0000.

    No text value may: PostgreSQL cannot store it in text or ``JSONB``, so a change holding
    one would apply on SQLite and fail on PostgreSQL, and replicas would differ. It is refused
    everywhere alike, as deep nesting is: at flush, and in every file read from a remote
    (``docs/FORMAT.md``, Limits). ``json.dumps`` writes the character as ``\u0000``, and
    strict JSON has no other spelling of it (a raw NUL in a string is invalid JSON)."""
    return "\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None

_CONTAINERS = (list, tuple, dict)

_BOOL_JSON = {True: "true", False: "false"}


def _float_json(f: float) -> str:
    # json.dumps spells finite floats as float.__repr__ does; NaN and infinities its own way
    return float.__repr__(f) if f - f == 0.0 else json.dumps(f)


_SCALAR_JSON: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    float: _float_json,
    bool: _BOOL_JSON.__getitem__,
}


def json_texts(values: Iterable[Any]) -> list[str | None]:
    """``[None if v is None else json.dumps(v) for v in values]``, the same texts, with the
    scalars spelled by the C functions ``json.dumps`` itself ends in (one call each)."""
    to_json = _SCALAR_JSON.get
    return [None if v is None else to_json(type(v), dumps)(v) for v in values]


def value_depth(value: Any, limit: int = MAX_VALUE_DEPTH) -> int:
    """How deeply ``value`` nests lists/tuples/dicts, found by an iterative walk (never by
    recursion, so the answer does not depend on the caller's stack); the walk stops as soon
    as the depth passes ``limit`` and returns ``limit + 1`` (so a cyclic value ends too)."""
    if not isinstance(value, _CONTAINERS):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if depth > limit:
                return limit + 1
        items = node.values() if isinstance(node, dict) else node
        stack.extend((x, depth + 1) for x in items if isinstance(x, _CONTAINERS))
    return deepest


def check_depth(value: Any) -> Any:
    """``value`` itself; ``ValueError`` when it nests deeper than :data:`MAX_VALUE_DEPTH`."""
    if isinstance(value, _CONTAINERS) and value_depth(value) > MAX_VALUE_DEPTH:
        raise ValueError(
            f"a value nested more than {MAX_VALUE_DEPTH} arrays/objects deep cannot be "
            f"recorded: every dimpledb replica refuses such values (docs/FORMAT.md, Limits)"
        )
    return value


class Codec:
    """``encode(python_value) -> json text | None`` and ``decode(json text | None) -> value``
    for one column, plus ``to_json``/``from_json`` between Python and JSON-compatible values.
    """

    __slots__ = ("decode", "encode", "from_json", "to_json")

    def __init__(self, to_json: Callable[[Any], Any], from_json: Callable[[Any], Any],
                 encode: Encoder | None = None, decode: Decoder | None = None) -> None:
        self.to_json = to_json
        self.from_json = from_json
        self.encode: Encoder = encode or (lambda v: None if v is None else dumps(to_json(v)))
        self.decode: Decoder = decode or (
            lambda s: None if s is None else from_json(loads(s)))


def _dec_str(s: str | None) -> Any:
    """Fast path for JSON strings without escapes (the merge decodes one per change)."""
    if s is None:
        return None
    if s[0] == '"' and "\\" not in s:
        return s[1:-1]
    return loads(s)


def _dec_int(s: str | None) -> Any:
    if s is None:
        return None
    try:
        return int(s)
    except ValueError:
        return loads(s)


def _dec_bool(s: str | None) -> Any:
    if s is None:
        return None
    if s == "true":
        return True
    if s == "false":
        return False
    return bool(loads(s))


def _dec_float(s: str | None) -> Any:
    """``float(json.loads(s))`` without the parser for a plain JSON number (the merge
    decodes one per change); anything else (a string, a boolean) goes through the parser."""
    if s is None:
        return None
    if _JSON_NUMBER(s) is not None:  # float() alone takes more than JSON allows
        return float(s)
    return float(loads(s))


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?").fullmatch


def _ident(v: Any) -> Any:
    return v


def passes_through(codec: Codec) -> bool:
    """Whether ``codec.from_json`` gives back the JSON value itself (strings, integers and
    JSON columns), so that a caller decoding many values may skip the call."""
    return codec.from_json is _ident


def _bools(values: list[Any]) -> list[Any]:
    return [v if v is None or v is True or v is False else bool(v) for v in values]


def _floats(values: list[Any]) -> list[Any]:
    return [None if v is None else float(v) for v in values]


def decode_column(codec: Codec, texts: Sequence[str | None]) -> list[Any]:
    """``[codec.decode(t) for t in texts]``, for texts that are each one JSON value as
    this package writes them (``json_texts``, the change log's values): for the plain
    decoders (strings, integers, floats, booleans), whose result is what ``json.loads``
    makes of the text (then ``float`` or ``bool``), every text is parsed in one
    ``json.loads`` of the array they make; any other codec, texts that do not make an
    array of as many values, values that do not convert, and the text ``null`` (not the
    ``None`` that stands for it: some decoders refuse it), are decoded one by one."""
    fix = _COLUMN_FIX.get(codec.decode)
    if fix is not None and texts and "null" not in texts:
        try:
            parsed = loads("[" + ",".join(["null" if t is None else t for t in texts]) + "]")
        except (ValueError, RecursionError):
            parsed = None
        if type(parsed) is list and len(parsed) == len(texts):
            try:
                return fix(parsed)
            except (OverflowError, ValueError, TypeError):
                pass  # (an integer too large for a float: one by one, as _dec_float does)
    decode = codec.decode
    return [decode(t) for t in texts]


_COLUMN_FIX: dict[Decoder, Callable[[list[Any]], list[Any]]] = {
    _dec_str: _ident, _dec_int: _ident, _dec_float: _floats, _dec_bool: _bools}
"""The decoders :func:`decode_column` runs as one ``json.loads``, and what follows it."""


def _enc_str(v: Any) -> str | None:
    if v is None:
        return None
    if type(v) is str:
        return encode_basestring_ascii(v)
    return dumps(v)


def _enc_int(v: Any) -> str | None:
    if v is None:
        return None
    if type(v) is int:
        return int.__repr__(v)
    return dumps(v)


def _enc_bool(v: Any) -> str | None:
    if v is None:
        return None
    return "true" if v else "false"


_EXACT: dict[Any, tuple[type, Callable[[Any], str]]] = {
    _enc_str: (str, encode_basestring_ascii),
    _enc_int: (int, int.__repr__),
}


def exact_encoder(codec: Codec) -> tuple[type, Callable[[Any], str]] | tuple[None, None]:
    """The type whose values ``codec.encode`` spells with one C function, and that function
    (``(None, None)``: none): what capture calls directly for a value of exactly that type
    (the same text, without the encoder's own call)."""
    return _EXACT.get(codec.encode, (None, None))


def _iso(v: Any) -> str:
    return str(v.isoformat())


_UTC = dt.UTC


def _iso_utc(v: dt.datetime) -> str:
    """``DateTime(timezone=True)``: the instant in UTC (a naive value is taken as UTC; one
    that UTC cannot hold, within hours of ``datetime.min``/``max``, keeps its offset)."""
    return _in_utc(v).isoformat()


def _aware_utc(v: str) -> dt.datetime:
    return _in_utc(dt.datetime.fromisoformat(v))


def _in_utc(d: dt.datetime) -> dt.datetime:
    if d.tzinfo is None:
        return d.replace(tzinfo=_UTC)
    try:
        return d.astimezone(_UTC)
    except OverflowError:
        return d


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


def _unb64(v: str) -> bytes:
    if type(v) is not str:
        raise TypeError(f"expected a base64 string, not {type(v).__name__}")
    return base64.b64decode(v.encode("ascii"), validate=True)


def _to_uuid(v: Any) -> uuid.UUID:
    if type(v) is not str:
        raise TypeError(f"expected a UUID string, not {type(v).__name__}")
    return uuid.UUID(v)


def _enum_codec(t: sqltypes.Enum) -> Codec:
    cls = t.enum_class
    if cls is None:
        return Codec(_ident, _ident, _enc_str)
    enum_cls: type[enum.Enum] = cls

    def to_json(v: Any) -> Any:
        return v.name if isinstance(v, enum.Enum) else v

    def from_json(v: Any) -> Any:
        return enum_cls[v]

    return Codec(to_json, from_json)


_DIALECT = DefaultDialect()


def _pickle_codec(t: sqltypes.PickleType) -> Codec:
    pickler: Any = t.pickler
    protocol = t.protocol

    def to_json(v: Any) -> Any:
        return _b64(pickler.dumps(v, protocol))

    def from_json(v: Any) -> Any:
        return pickler.loads(_unb64(v))

    return Codec(to_json, from_json)


def _decorated_codec(t: sqltypes.TypeDecorator[Any]) -> Codec:
    """A ``TypeDecorator``'s values are logged as its ``impl`` stores them: through its
    ``process_bind_param`` on the way in and ``process_result_value`` on the way out."""
    inner = _codec(t.impl_instance)
    cls = type(t)
    binds = cls.process_bind_param is not sqltypes.TypeDecorator.process_bind_param
    results = cls.process_result_value is not sqltypes.TypeDecorator.process_result_value
    if not binds and not results:
        return inner
    bind = t.process_bind_param if binds else _ident2
    result = t.process_result_value if results else _ident2
    d = _DIALECT

    def to_json(v: Any) -> Any:
        b = bind(v, d)
        return None if b is None else inner.to_json(b)

    def from_json(v: Any) -> Any:
        return result(inner.from_json(v), d)

    def encode(v: Any) -> str | None:
        return None if v is None else inner.encode(bind(v, d))

    def decode(s: str | None) -> Any:
        return None if s is None else result(inner.decode(s), d)

    return Codec(to_json, from_json, encode, decode)


def _ident2(v: Any, dialect: Any) -> Any:
    return v


def unsafe_reason(t: sqltypes.TypeEngine[Any]) -> str | None:
    """Why decoding values of type ``t`` could run code a value chooses (``None``: it
    cannot): a ``PickleType``, possibly wrapped in ``TypeDecorator`` impls or ``ARRAY``
    items."""
    for _ in range(32):  # impl chains are short; never loop on a self-referencing one
        if isinstance(t, sqltypes.PickleType):
            return (f"it is a {type(t).__name__}: its values are unpickled, and unpickling "
                    "runs whatever code the pickled bytes name")
        inner = (t.impl_instance if isinstance(t, sqltypes.TypeDecorator)
                 else getattr(t, "item_type", None))
        if not isinstance(inner, sqltypes.TypeEngine):
            return None
        t = inner
    return None


def codec_for(column: Column[Any]) -> Codec:
    """The codec for one column, chosen from its (decorated) type."""
    return _codec(column.type)


def _codec(t: sqltypes.TypeEngine[Any]) -> Codec:
    if isinstance(t, sqltypes.Interval):  # decorators of their own, with no bind hooks
        return Codec(_seconds, _timedelta)
    if isinstance(t, sqltypes.PickleType):
        return _pickle_codec(t)
    if isinstance(t, sqltypes.TypeDecorator):
        return _decorated_codec(t)
    if isinstance(t, sqltypes.Boolean):
        return Codec(bool, bool, _enc_bool, _dec_bool)
    if isinstance(t, sqltypes.Enum):
        return _enum_codec(t)
    if isinstance(t, sqltypes.String):
        return Codec(_ident, _ident, _enc_str, _dec_str)
    if isinstance(t, sqltypes.Integer):
        return Codec(_ident, _ident, _enc_int, _dec_int)
    if isinstance(t, sqltypes.Float | sqltypes.Numeric):  # Float is no Numeric since 2.1
        if t.asdecimal:  # Numeric, Float(asdecimal=True): Decimal values, decimal digits
            return Codec(str, decimal.Decimal)
        if isinstance(t, sqltypes.Float):
            return Codec(float, float, decode=_dec_float)
        return Codec(float, float)
    if isinstance(t, sqltypes.DateTime):
        if t.timezone:
            return Codec(_iso_utc, _aware_utc)
        return Codec(_iso, dt.datetime.fromisoformat)
    if isinstance(t, sqltypes.Date):
        return Codec(_iso, dt.date.fromisoformat)
    if isinstance(t, sqltypes.Time):
        return Codec(_iso, dt.time.fromisoformat)
    if isinstance(t, sqltypes._Binary):
        return Codec(_b64, _unb64)
    if isinstance(t, sqltypes.Uuid):
        if t.as_uuid:
            return Codec(str, _to_uuid)
        return Codec(str, _ident)
    return Codec(check_depth, _ident)  # JSON, and types whose values pass through as-is


def _seconds(v: dt.timedelta) -> float:
    return v.total_seconds()


def _timedelta(v: Any) -> dt.timedelta:
    return dt.timedelta(seconds=v)
