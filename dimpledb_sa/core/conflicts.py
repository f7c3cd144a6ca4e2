"""Conflicts as data: the :class:`Conflict` record and the ``dimple_conflicts`` table.

A conflict is a change the merge keeps out of the tables because applying it as written
would break a constraint: a unique value another row holds (kind ``"unique"``), a parent row
that is not there (``"foreign_key"``), or anything else the database refused (``"check"``).
The rules that decide them live in :mod:`..sync.resolve`; this module stores what they
decided, finds entities again by what they collided on (a unique key's hash, a parent row),
and reads the listed conflicts back as :class:`Conflict` records (``db.conflicts()``).
Nothing here decides anything: every row is derived state, rewritten whenever the merge
decides its entity again. :func:`discard` (``db.discard(conflict)``) records the ordinary
changes that give a kept-out change up, for rows the application cannot reach.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, delete, func, inspect, select

from . import schema
from .changelog import Group, PackedRow, write_local
from .changes import Change, ChangeRow, change_from_row
from .rows import chunks, fetch_rows

if TYPE_CHECKING:
    from .replica import Replica

__all__ = [
    "CHECK",
    "FOREIGN_KEY",
    "UNIQUE",
    "Conflict",
    "count",
    "discard",
    "ensure_table",
    "entities_of_kind",
    "entities_with_keys",
    "entities_with_parents",
    "key_hash",
    "read",
    "replace",
]

UNIQUE: Final = "unique"
FOREIGN_KEY: Final = "foreign_key"
CHECK: Final = "check"


@dataclass(frozen=True, slots=True)
class Conflict:
    """A change the merge keeps out of the tables, until the data lets it apply.

    ``kind``: ``"unique"``, ``"foreign_key"`` or ``"check"``; ``entity_type`` and
    ``entity_id``: the row the change belongs to; ``attribute``: the column in conflict
    (``None``: the row as a whole); ``change``: the change kept out (it stays in the
    history); ``other_entity_id`` (in ``other_entity_type``): the row it collided with, or
    the missing parent; ``detail``: a sentence for people.
    """

    kind: str
    entity_type: str
    entity_id: str
    attribute: str | None
    change: Change
    other_entity_id: str | None
    detail: str
    other_entity_type: str | None = None


def key_hash(label: str, texts: Sequence[str | None]) -> str:
    """The stored form of a unique key: a hash of its columns and their values' JSON texts
    (short and of fixed length, whatever the values)."""
    raw = json.dumps([label, list(texts)], ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def ensure_table(conn: Connection) -> None:
    """Create ``dimple_conflicts`` when a database made by an older version lacks it."""
    if not inspect(conn).has_table(schema.conflicts.name):
        schema.conflicts.create(conn)


def replace(conn: Connection, entities: Iterable[tuple[str, str]],
            rows: Sequence[dict[str, Any]]) -> None:
    """Forget every conflict of ``entities``, then store ``rows`` (dicts of the columns)."""
    c = schema.conflicts
    by_type: dict[str, list[str]] = {}
    for etype, eid in entities:
        by_type.setdefault(etype, []).append(eid)
    for etype, eids in by_type.items():
        for chunk in chunks(eids):
            conn.execute(delete(c).where(c.c.entity_type == etype, c.c.entity_id.in_(chunk)))
    if rows:
        conn.execute(c.insert(), list(rows))


def entities_with_keys(conn: Connection, entity_type: str, hashes: Sequence[str]) -> set[str]:
    """Entities of ``entity_type`` with a conflict on one of these unique-key hashes."""
    c = schema.conflicts
    out: set[str] = set()
    for chunk in chunks(hashes):
        out.update(conn.execute(select(c.c.entity_id).where(
            c.c.entity_type == entity_type, c.c.key.in_(chunk))).scalars())
    return out


def entities_with_parents(conn: Connection, child_type: str, parent_type: str,
                          parent_ids: Sequence[str]) -> set[str]:
    """Entities of ``child_type`` kept out (or nulled) for one of these missing parents."""
    c = schema.conflicts
    out: set[str] = set()
    for chunk in chunks(parent_ids):
        out.update(conn.execute(select(c.c.entity_id).where(
            c.c.other_entity_type == parent_type, c.c.other_entity_id.in_(chunk),
            c.c.entity_type == child_type, c.c.kind == FOREIGN_KEY)).scalars())
    return out


def entities_of_kind(conn: Connection, kind: str) -> set[tuple[str, str]]:
    """Every entity with a conflict of ``kind``."""
    c = schema.conflicts
    return {(t, e) for t, e in conn.execute(
        select(c.c.entity_type, c.c.entity_id).where(c.c.kind == kind).distinct())}


def count(conn: Connection) -> int:
    """How many conflicts :func:`read` lists."""
    if not inspect(conn).has_table(schema.conflicts.name):
        return 0
    c = schema.conflicts
    return int(conn.execute(select(func.count()).select_from(c).where(c.c.listed)).scalar_one())


def read(conn: Connection) -> list[Conflict]:
    """Every listed conflict, by entity type, entity id, kind and attribute."""
    if not inspect(conn).has_table(schema.conflicts.name):
        return []
    c, t = schema.conflicts, schema.transactions
    stmt = (select(c, t.c.author).outerjoin(t, t.c.id == c.c.transaction_id)
            .where(c.c.listed).order_by(c.c.entity_type, c.c.entity_id, c.c.kind,
                                        c.c.attribute, c.c.change_id))
    out: list[Conflict] = []
    for r in conn.execute(stmt).mappings():
        row: ChangeRow = (r["change_id"], r["transaction_id"], r["entity_type"],
                          r["entity_id"], r["change_attribute"], r["old_value"], r["new_value"])
        out.append(Conflict(r["kind"], r["entity_type"], r["entity_id"], r["attribute"],
                            change_from_row(row, r["author"] or ""), r["other_entity_id"],
                            r["detail"], r["other_entity_type"]))
    return out



def discard(replica: Replica, conn: Connection, conflict: Conflict) -> list[PackedRow]:
    """Record, as a new local transaction, the changes that give up ``conflict``'s kept-out
    change: a delete of an entity kept out of its table, or, for a row that stays with a
    value the rules chose (its previous unique value, a null for a missing parent), that
    value. Returns the packed rows written (none when the conflict is resolved already).
    """
    tt = replica.tracked.get(conflict.entity_type)
    c = schema.conflicts
    if tt is None or conn.execute(select(c.c.id).where(
            c.c.entity_type == conflict.entity_type, c.c.entity_id == conflict.entity_id,
            c.c.change_id == conflict.change.id, c.c.listed).limit(1)).first() is None:
        return []
    key = tt.codecs[tt.pk_name]
    row = fetch_rows(conn, tt, [conflict.entity_id]).get(conflict.entity_id)
    eid = conflict.entity_id
    if row is None:
        group: Group = [tt.name, eid, [tt.pk_name], [key.encode(key.from_json(eid))], [None]]
    elif conflict.attribute is not None and conflict.attribute in tt.codecs:
        attr = conflict.attribute
        current = tt.codecs[attr].encode(row[attr])
        if current == _text(conflict.change.new_value):
            return []
        group = [tt.name, eid, [attr], [_text(conflict.change.new_value)], [current]]
    else:
        return []
    return write_local(replica, conn, [group])
