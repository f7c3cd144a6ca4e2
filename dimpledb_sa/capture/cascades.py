"""What a database does by itself when a tracked parent row is deleted, recorded as changes.

A foreign key declared ``ON DELETE CASCADE`` or ``ON DELETE SET NULL`` between tracked
tables lets the database delete (or null the key of) child rows that the ORM never loaded:
``passive_deletes=True``, or no relationship at all. Those writes reach no session event, so
:class:`Cascades` finds the children *before* the parent's delete runs (:meth:`find`, also
through the children's own cascading keys), and after it records for each one the change
the database made: a delete of the child, or its key column going to null
(:meth:`record`), unless the same flush or statement already recorded it. It then makes the
same writes itself, which change nothing where the database enforced the keys (SQLite with
``PRAGMA foreign_keys=ON``, PostgreSQL) and give the same rows where it does not (SQLite's
default), so the log always says what happened and every replica ends alike. A parent
deleted through a ``delete-orphan`` cascade the ORM decides during the flush is not seen
before it goes (see README, *Limits*).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select, update

from ..core.changelog import GROUP_ID, GROUP_NAMES, GROUP_NEWS, GROUP_TYPE, Group
from ..core.constraints import Reference, constraints_of
from ..core.rows import chunks

if TYPE_CHECKING:
    from ..core.tracking import TrackedTable

__all__ = ["Cascades", "Effect"]

Effect = tuple[str, "TrackedTable", Any, str, "str | None"]
"""(``"delete"`` or ``"null"``, child table, child key value, column, the column's old
JSON text)."""

_NO_CAPTURE = {"dimpledb_sa_capture": False}  # our own writes: Core capture skips them


class Cascades:
    """The cascading foreign keys between one ``DimpleDb``'s tracked tables."""

    def __init__(self, tracked: dict[str, TrackedTable]) -> None:
        self.tracked = tracked
        self.by_parent: dict[str, list[Reference]] = defaultdict(list)
        for refs in constraints_of(tracked).references.values():
            for r in refs:
                parent = tracked.get(r.parent)
                if (r.ondelete in ("CASCADE", "SET NULL") and parent is not None
                        and r.parent_column == parent.pk_name and r.table in tracked):
                    self.by_parent[r.parent].append(r)

    def __bool__(self) -> bool:
        return bool(self.by_parent)

    def find(self, conn: Connection, deleted: dict[str, list[Any]]) -> list[Effect]:
        """The writes the database will make when the rows ``deleted`` (table -> key
        values) go: child deletes (and theirs, in turn) and key columns set to null."""
        effects: list[Effect] = []
        seen: set[tuple[str, str]] = set()
        frontier = {t: keys for t, keys in deleted.items() if t in self.by_parent and keys}
        while frontier:
            nxt: dict[str, list[Any]] = defaultdict(list)
            for parent, keys in frontier.items():
                for r in self.by_parent.get(parent, ()):
                    child = self.tracked[r.table]
                    col = child.table.c[r.column]
                    encode = child.codecs[r.column].encode
                    for chunk in chunks(keys):
                        for cpk, value in conn.execute(select(child.pk, col)
                                                       .where(col.in_(chunk))):
                            if r.cascades:
                                if (r.table, str(cpk)) not in seen:
                                    seen.add((r.table, str(cpk)))
                                    effects.append(("delete", child, cpk, r.column, None))
                                    nxt[r.table].append(cpk)
                            else:
                                effects.append(("null", child, cpk, r.column, encode(value)))
            frontier = {t: k for t, k in nxt.items() if t in self.by_parent}
        return effects

    def record(self, conn: Connection, effects: Sequence[Effect], groups: Sequence[Group]
               ) -> list[Group]:
        """The groups of ``effects`` that ``groups`` (what the flush or statement recorded
        itself) do not cover; makes those writes too (a no-op where the database did)."""
        gone: set[tuple[str, str]] = set()
        set_cols: set[tuple[str, str, str]] = set()
        for g in groups:
            names = g[GROUP_NAMES]
            names = json.loads(names) if isinstance(names, str) else names
            key = (g[GROUP_TYPE], g[GROUP_ID])
            if len(names) == 1 and g[GROUP_NEWS] == [None] and (
                    names[0] == self.tracked[g[GROUP_TYPE]].pk_name):
                gone.add(key)
            set_cols.update((*key, n) for n in names)
        out: list[Group] = []
        deletes: dict[str, list[Any]] = defaultdict(list)
        nulls: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for kind, child, cpk, _col, _old in effects:
            if kind != "delete" or (child.name, str(cpk)) in gone:
                continue
            gone.add((child.name, str(cpk)))
            deletes[child.name].append(cpk)
            pk_text = child.codecs[child.pk_name].encode(cpk)
            out.append([child.name, str(cpk), [child.pk_name], [pk_text], [None]])
        for kind, child, cpk, col, old in effects:
            key = (child.name, str(cpk))
            if kind != "null" or key in gone or (*key, col) in set_cols:
                continue
            set_cols.add((*key, col))
            nulls[(child.name, col)].append(cpk)
            out.append([child.name, str(cpk), [col], [old], [None]])
        for name in reversed(list(deletes)):  # grandchildren first
            tt = self.tracked[name]
            for chunk in chunks(deletes[name]):
                conn.execute(delete(tt.table).where(tt.pk.in_(chunk))
                             .execution_options(**_NO_CAPTURE))
        for (name, col), keys in nulls.items():
            tt = self.tracked[name]
            for chunk in chunks(keys):
                conn.execute(update(tt.table).where(tt.pk.in_(chunk)).values({col: None})
                             .execution_options(**_NO_CAPTURE))
        return out
