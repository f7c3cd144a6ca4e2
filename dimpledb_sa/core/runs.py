"""Packed rows column by column, with their values parsed (:class:`Runs`), and the JSON
texts of such values.

A version-2 snapshot (:mod:`..sync.packed`) arrives as parsed JSON: each run is a packed
row of the log (:mod:`.changelog`) whose old and new values are lists of JSON values, not
texts. Kept column by column as they came (one list per field), they let the bulk
bootstrap insert the tracked rows straight from the new values and store the log with
:func:`.changelog.store_runs`, a few calls per column instead of objects and texts per run;
:meth:`Runs.rows` makes the log's text form (``PackedRow``) only when it is asked for.

:func:`array_texts` spells arrays of JSON values as the log does (``json.dumps`` of each
value joined by bare commas, ``json_array(json_texts(values))``) with the C encoder;
:func:`old_texts` is that for old values, most of them all null; :func:`canonical_uuids`
checks many ids at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from json.encoder import encode_basestring_ascii as _esc
from typing import Any

from .pending import json_array
from .values import json_texts

__all__ = ["NULL_ARRAYS", "Runs", "array_texts", "canonical_uuids", "old_texts"]

NULL_ARRAYS: dict[int, str] = {n: "[" + ",".join(["null"] * n) + "]" for n in range(257)}
"""The JSON text of an array of ``n`` nulls (up to 256; ``"[]"`` for none)."""

_UUID_CHARS = b"0123456789abcdef-"


@dataclass(slots=True)
class Runs:
    """Packed rows field by field (``firsts[k]``, ``transactions[k]``, ... are the ``k``-th
    row's), the attribute names as their JSON text, the old and new values as parsed JSON
    values (lists as long as the names)."""

    firsts: list[str]
    transactions: list[str]
    types: list[str]
    entities: list[str]
    names: list[str]
    olds: list[list[Any]]
    news: list[list[Any]]

    def __len__(self) -> int:
        return len(self.firsts)

    def rows(self) -> list[tuple[str, str, str, str, str, str, str]]:
        """The packed rows in text form, as the log stores them (``changelog.PackedRow``)."""
        return list(zip(self.firsts, self.transactions, self.types, self.entities,
                        self.names, old_texts(self.olds), array_texts(self.news), strict=True))

    @classmethod
    def join(cls, parts: Sequence[Runs]) -> Runs:
        """The rows of ``parts`` one after the other."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(list(chain.from_iterable(getattr(p, f) for p in parts))
                     for f in cls.__slots__))


def _compact_encoder() -> Callable[[list[Any]], str]:
    """``json.dumps`` with a bare comma between items, made once: the C encoder itself
    where ``json`` has it (a documented ``JSONEncoder`` otherwise, or if it disagrees)."""
    encoder = json.JSONEncoder(separators=(",", ": "))
    slow = encoder.encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return slow
    try:
        enc = make(None, encoder.default, _esc, None, ": ", ",", False, False, True)

        def fast(values: list[Any]) -> str:
            return "".join(enc(values, 0))

        fast.c_encoder = enc  # type: ignore[attr-defined]
        sample = ["a\u00e9\"", 1, 1.5, True, None, -0.0, 1e300]
        if fast(sample) == slow(sample):
            return fast
    except (TypeError, ValueError):  # another signature: the documented way
        pass
    return slow


encode_compact = _compact_encoder()
"""``json.dumps`` of a list with bare commas between items (its scalars spelled as
``json.dumps`` spells them; a nested value's own separators are not ``json.dumps``'s)."""
_C_ENCODER = getattr(encode_compact, "c_encoder", None)


def _encode_many(arrays: Sequence[list[Any]]) -> list[str]:
    """:data:`encode_compact` of each of ``arrays`` (the C encoder mapped over them when
    there is one)."""
    if _C_ENCODER is not None:
        return list(map("".join, map(_C_ENCODER, arrays, repeat(0))))
    return list(map(encode_compact, arrays))


def nested(array_text: str) -> bool:
    """Whether an array's JSON text may hold an array or object (it has a bracket or brace
    past its opening one)."""
    return array_text.find("[", 1) >= 0 or "{" in array_text


def array_text(values: list[Any]) -> str:
    """The canonical JSON text of an array of JSON values (each ``json.dumps(value)``,
    joined by commas): one call for an array of scalars (no container, so no other
    separator is written)."""
    text = encode_compact(values)
    if nested(text):  # a nested value, or a string holding a bracket
        return json_array(json_texts(values))
    return text


def array_texts(arrays: Sequence[list[Any]]) -> list[str]:
    """:func:`array_text` of each of ``arrays``."""
    texts = _encode_many(arrays)
    for i in [i for i, t in enumerate(texts) if "{" in t or t.find("[", 1) >= 0]:
        texts[i] = json_array(json_texts(arrays[i]))
    return texts


def old_texts(arrays: Sequence[list[Any]]) -> list[str]:
    """:func:`array_texts` of old values, most often all null (an insert's): those texts
    are shared, not spelled again."""
    lens = list(map(len, arrays))
    nulls = list(map(list.count, arrays, repeat(None)))
    if nulls == lens and (not lens or max(lens) <= 256):
        return list(map(NULL_ARRAYS.__getitem__, lens))
    return [(NULL_ARRAYS.get(n) if c == n else None) or array_text(o)
            for o, n, c in zip(arrays, lens, nulls, strict=True)]


def canonical_uuids(values: Sequence[Any]) -> str | None:
    """The texts of ``values`` joined, when every one is a canonical (lowercase) UUID's
    text; ``None`` otherwise. Checked in bulk, at C speed."""
    n = len(values)
    if list(map(type, values)).count(str) != n or list(map(len, values)).count(36) != n:
        return None
    joined = "".join(values)
    if not joined.isascii():
        return None
    raw = joined.encode("ascii")
    if raw.translate(None, _UUID_CHARS) or raw.count(b"-") != 4 * n:
        return None
    dashes = b"-" * n
    if not all(raw[i::36] == dashes for i in (8, 13, 18, 23)):
        return None
    return joined

