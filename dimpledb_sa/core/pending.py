"""The body of a ``dimple_pending`` row: one local transaction's packed rows as one JSON text.

A local commit (:func:`.changelog.write_local`) issues its ids as one run of consecutive
clock steps: the transaction id first, then each packed row's changes in order, so the
first id of the ``k``-th row is the transaction id offset by one plus the number of changes
of the rows before it (see :func:`.clock.offset_id`). The body written now (:func:`build`)
therefore spells no change id, and names each entity type and list of attribute names once::

    {"t": [entity types], "n": [attribute name lists],
     "r": [[type index, entity_id, names index, old_values, new_values], ...]}

(old and new values are JSON arrays of the values, ``null`` for SQL NULL). Bodies written by
earlier versions list every row with its first id,
``[[first_id, entity_type, entity_id, attributes, old_values, new_values], ...]``; both are
read (:func:`rows`, :func:`last_id`). The entity id stays a JSON string in both, so a body
that holds an entity's changes contains its id's JSON text (what
:func:`.changelog.pending_rows` searches for).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii as _esc
from typing import Any

from .clock import offset_id, run_ids

__all__ = ["build", "json_array", "last_id", "rows", "run_last"]

BodyRow = tuple[str, str, str, list[str], list[Any], list[Any]]
"""(first_id, entity_type, entity_id, attributes, old values, new values), the arrays as
JSON-decoded lists."""

_dumps = json.dumps
_loads = json.loads
_ROW = "[%d,%s,%d,%s,%s]"


def json_array(texts: Sequence[str | None]) -> str:
    """A JSON array from the JSON texts of its items (``None`` is ``null``)."""
    if len(texts) == 1:  # most updates change one attribute
        t = texts[0]
        return "[null]" if t is None else "[" + t + "]"
    return "[" + ",".join(["null" if t is None else t for t in texts]) + "]"


def build(groups: Iterable[Sequence[Any]]) -> tuple[str, int, list[str]]:
    """The body of one local transaction's groups (see :data:`.changelog.Group`: entity
    type, entity id, attribute names as a list or its JSON text, old values as a list of
    JSON texts or the array's text, new values as a list of JSON texts), in id order; with
    the number of changes (ids after the transaction's own) and the sorted entity types."""
    types: dict[str, int] = {}
    lists: dict[str, int] = {}
    parts: list[str] = []
    append = parts.append
    changes = 0
    for etype, eid, names, olds, news in groups:
        ti = types.get(etype)
        if ti is None:
            ti = types[etype] = len(types)
        if type(names) is not str:
            names = _dumps(names)
        ni = lists.get(names)
        if ni is None:
            ni = lists[names] = len(lists)
        count = len(news)
        changes += count
        # json_array, inlined for most updates
        news_json = ("[" + news[0] + "]" if count == 1 and news[0] is not None
                     else json_array(news))
        append(_ROW % (ti, _esc(eid), ni, olds if type(olds) is str else json_array(olds),
                       news_json))
    body = ('{"t":[' + ",".join([_esc(t) for t in types]) + '],"n":[' + ",".join(lists)
            + '],"r":[' + ",".join(parts) + "]}")
    return body, changes, sorted(types)


def rows(tx_id: str, body: str) -> list[BodyRow]:
    """The rows of a body (either layout), each with its first id."""
    data = _loads(body)
    if type(data) is list:  # the earlier layout: each row spells its first id
        return [(first, etype, eid, attrs, olds, news)
                for first, etype, eid, attrs, olds, news in data]
    types: list[str] = data["t"]
    lists: list[list[str]] = data["n"]
    found: list[list[Any]] = data["r"]
    counts = [len(lists[r[2]]) for r in found]
    ids = run_ids(tx_id, 1 + sum(counts))
    out: list[BodyRow] = []
    at = 1
    for (ti, eid, ni, olds, news), count in zip(found, counts, strict=True):
        out.append((ids[at] if at < len(ids) else offset_id(tx_id, at), types[ti], eid,
                    lists[ni], olds, news))
        at += count
    return out


def last_id(tx_id: str, body: str) -> str | None:
    """The last id the transaction of a body issued (``None``: an earlier-layout body with
    no row)."""
    data = _loads(body)
    if type(data) is list:
        return run_last(data[-1][0], data[-1][3]) if data else None
    lists: list[list[str]] = data["n"]
    return offset_id(tx_id, sum(len(lists[r[2]]) for r in data["r"]))


def run_last(first: str, names: list[str]) -> str:
    """The last id of a packed run (see :mod:`.changelog`): one per attribute."""
    return offset_id(first, max(len(names) - 1, 0))
