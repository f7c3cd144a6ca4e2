"""What one merge writes to the tracked tables, and in which order.

A :class:`TablePlan` turns each entity's winning changes (one per attribute, see
:func:`winners`) into the difference with its row as it is: a row to insert, attributes to
update, a row to delete (a delete, or a row the rules keep out: an *eviction*, which
records no change). Changes it cannot apply here (a column this schema lacks, a required
column missing or null) are held; those that change rows are the merge's *applied*
changes. :func:`write` runs the plans: deletes children-first; then the unique values of
*late* deletes (rows that rows the merge keeps still name through a foreign key) are freed
with placeholders; then per table parents-first the updates that move unique values (one
at a time, each after the row that gives the value up), the inserts (parents before
children within a self-referencing table) and the other updates; last the late deletes,
children-first, once nothing names them (so no database ``ON DELETE`` action fires on a row
the merge keeps). The rules that decide which rows may exist are in :mod:`.resolve`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, String, bindparam, delete, update

from ..core.changelog import PACKED_ATTRIBUTES, PackedRow
from ..core.changes import ROW_ATTRIBUTE, ROW_ID, ROW_NEW, ChangeRow
from ..core.errors import RemoteFormatError
from ..core.rows import chunks, insert_values
from ..core.values import decode_column, passes_through

if TYPE_CHECKING:
    from ..core.constraints import Constraints
    from ..core.tracking import TrackedTable
    from .merge import MergeResult

__all__ = ["PK", "Held", "TablePlan", "required_columns", "steps", "winners", "write",
           "write_one"]

logger = logging.getLogger(__name__)

PK = "_dimple_pk"
"""The bind name of the key in an update's parameters."""

Held = tuple[str, str, str, str]
"""(entity_type, entity_id, attribute, reason): a row of ``dimple_held``."""

_DECODE_ERRORS = (ValueError, TypeError, LookupError, ArithmeticError, AttributeError)
"""What a column's decoder raises for a value it cannot take."""


def winners(changes: Iterable[ChangeRow], into: dict[str, ChangeRow] | None = None
            ) -> dict[str, ChangeRow]:
    """The latest change (by id) of each attribute among ``changes`` (added to ``into``)."""
    win: dict[str, ChangeRow] = {} if into is None else into
    for c in changes:
        w = win.get(c[ROW_ATTRIBUTE])
        if w is None or c[ROW_ID] > w[ROW_ID]:
            win[c[ROW_ATTRIBUTE]] = c
    return win


def required_columns(tt: TrackedTable) -> list[str]:
    """Columns a new row must have a value for (``NOT NULL``, no default, not the key)."""
    return [c.name for c in tt.table.columns if not c.nullable and not c.primary_key
            and c.default is None and c.server_default is None]


class TablePlan:
    """What one merge writes to one table: rows to insert, update and delete.

    Built entity by entity (see :meth:`emit`); changes it cannot apply here are appended to
    ``held``, those it applies to ``result.applied_changes``.
    """

    def __init__(self, tt: TrackedTable, held: list[Held], result: MergeResult) -> None:
        self.tt = tt
        self.held = held
        self.result = result
        self.inserts: list[dict[str, Any]] = []
        self.updates: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        self.moves: list[dict[str, Any]] = []  # updates that change a unique column
        self.deletes: list[Any] = []
        self.late: list[Any] = []  # deleted after the rows that still name them move away
        self.unique_columns: set[str] = set()
        columns = tt.table.columns
        self.notnull = {c.name for c in columns if not c.nullable and not c.primary_key}
        self.required = required_columns(tt)
        self.decoders = {a: c.decode for a, c in tt.codecs.items()}

    def _hold(self, eid: str, attr: str, reason: str, count: int = 1) -> None:
        self.result.held += count
        self.held.append((self.tt.name, eid, attr, reason))

    def hold_unknown(self, eid: str, inc: Sequence[ChangeRow], win: dict[str, ChangeRow]
                     ) -> None:
        """Hold the changes of ``inc`` to columns this schema lacks."""
        decoders = self.decoders
        if win.keys() <= decoders.keys():  # the common case: every attribute is known
            return
        for a in [a for a in win if a not in decoders]:
            self._hold(eid, a, "unknown column",
                       sum(1 for c in inc if c[ROW_ATTRIBUTE] == a))

    def _insert(self, eid: str, pkw: ChangeRow, values: dict[str, Any]) -> bool:
        """Queue ``values`` as a new row; ``False`` when it must wait (held)."""
        if str(values[self.tt.pk_name]) != eid:
            raise RemoteFormatError(f"change {pkw[ROW_ID]} inserts {self.tt.name} {eid} with "
                                    f"the key {pkw[ROW_NEW]:.80}")
        missing = [c for c in self.required if values.get(c) is None]
        if missing:  # e.g. a column renamed or added NOT NULL since: wait for it
            self.result.held += len(missing)
            self.held.extend((self.tt.name, eid, c, "missing required column")
                             for c in missing)
            return False
        self.inserts.append(values)
        return True

    def new_entity(self, eid: str, inc: list[ChangeRow]) -> None:
        """An entity neither logged nor stored here before (the common case, made short)."""
        win = winners(inc)
        decoders = self.decoders
        known = win.keys() <= decoders.keys()  # the common case: every attribute is known
        if not known:
            self.hold_unknown(eid, inc, win)
        pkw = win.get(self.tt.pk_name)
        if pkw is None or pkw[ROW_NEW] is None:
            return
        if known:
            values = {a: decoders[a](w[ROW_NEW]) for a, w in win.items()}
            if self._insert(eid, pkw, values):
                self.result.applied_changes.extend(win.values())
            return
        values = {a: decoders[a](w[ROW_NEW]) for a, w in win.items() if a in decoders}
        if self._insert(eid, pkw, values):
            self.result.applied_changes.extend(w for w in win.values()
                                               if w[ROW_ATTRIBUTE] in decoders)

    def new_entities(self, entities: Sequence[tuple[str, list[ChangeRow]]]) -> None:
        """:meth:`new_entity` for each (entity id, its changes), in order. The common case
        (each attribute changed once, every one known, the key set) is decoded column by
        column (:func:`~dimpledb_sa.core.values.decode_column`); the others, and rows
        that :meth:`new_entity` would refuse or hold, go through it."""
        codecs = self.tt.codecs
        known = self.decoders.keys()
        pkn = self.tt.pk_name
        wins: list[dict[str, ChangeRow] | None] = []
        same: dict[tuple[str, ...], list[int]] = {}  # entities by the attributes changed
        for k, (_, inc) in enumerate(entities):
            win = {c[ROW_ATTRIBUTE]: c for c in inc}
            pkw = win.get(pkn)
            if (len(win) != len(inc) or not win.keys() <= known or pkw is None
                    or pkw[ROW_NEW] is None):
                wins.append(None)
                continue
            wins.append(win)
            group = same.get(names := tuple(win))
            if group is None:
                same[names] = [k]
            else:
                group.append(k)
        decoded: dict[int, dict[str, Any]] = {}
        for names, members in same.items():
            columns = [decode_column(codecs[a], [wins[k][a][ROW_NEW]  # type: ignore[index]
                                                 for k in members]) for a in names]
            for k, row in zip(members, zip(*columns, strict=True), strict=True):
                decoded[k] = dict(zip(names, row, strict=True))
        required = self.required
        inserts = self.inserts.append
        applied = self.result.applied_changes.extend
        for k, (eid, inc) in enumerate(entities):
            values = decoded.get(k)
            if values is None or str(values[pkn]) != eid or (
                    required and None in map(values.get, required)):
                self.new_entity(eid, inc)  # refused or held there, as the case may be
                continue
            inserts(values)
            applied(wins[k].values())  # type: ignore[union-attr]

    def new_runs(self, runs: Sequence[tuple[str, PackedRow, Sequence[Any]]]) -> list[int]:
        """New entities each made by one packed run of the log (entity id, the row, its new
        values as parsed), planned column by column per names list: the rows and applied
        changes :meth:`new_entities` makes of the run's changes, with the run itself as
        the applied changes (``result.applied_packed``). Returns the positions of the
        entities it leaves to :meth:`new_entities` (that holds, refuses or plans them):
        those of a names list with an attribute this schema lacks or one twice, or without
        the key; whose values do not decode; whose key is not the entity's; that lack a
        required value."""
        groups: dict[str, list[int]] = {}
        for k, run in enumerate(runs):
            groups.setdefault(run[1][PACKED_ATTRIBUTES], []).append(k)
        rest: list[int] = []
        for names_json, members in groups.items():
            if not self._insert_runs(json.loads(names_json), [runs[k] for k in members]):
                rest += members
        return sorted(rest)

    def _insert_runs(self, names: list[str],
                     runs: Sequence[tuple[str, PackedRow, Sequence[Any]]]) -> bool:
        """:meth:`new_runs` for runs of the same ``names``; ``False`` (nothing planned)
        when they must go through :meth:`new_entities`."""
        codecs = self.tt.codecs
        pkn = self.tt.pk_name
        if pkn not in names or len(set(names)) != len(names) or not codecs.keys() >= set(names):
            return False
        at = names.index(pkn)
        live = [r for r in runs if r[2][at] is not None]
        if not live:
            return True  # deletes of entities never seen here: nothing (as new_entity)
        columns: list[Sequence[Any]] = []
        try:
            for name, col in zip(names, zip(*[r[2] for r in live], strict=True), strict=True):
                codec = codecs[name]
                if passes_through(codec):  # strings, integers, JSON: the value itself
                    columns.append(col)
                else:  # what decoding the value's JSON text gives (see .values)
                    decode = codec.from_json
                    columns.append([None if v is None else decode(v) for v in col])
        except _DECODE_ERRORS:
            return False  # new_entities decodes them one by one, and fails as it does
        if any(c not in names or None in columns[names.index(c)] for c in self.required):
            return False
        if list(map(str, columns[at])) != [eid for eid, _, _ in live]:
            return False
        self.inserts.extend(map(dict, map(zip, repeat(names), zip(*columns, strict=True))))
        self.result.applied_packed.extend([r for _, r, _ in live])
        self.result.packed_changes += len(names) * len(live)
        return True

    def evict(self, row: dict[str, Any]) -> None:
        """Take a row the rules keep out of the table (no change is applied)."""
        self.deletes.append(row[self.tt.pk_name])

    def emit(self, eid: str, win: dict[str, ChangeRow], row: dict[str, Any] | None,
             quiet: Iterable[str] = ()) -> None:
        """Write what ``win`` (the winning change per attribute) makes of ``row``.

        Attributes in ``quiet`` take the value of ``win`` without it counting as an applied
        change (a value the rules derived, such as a null for a missing parent).
        """
        codecs = self.tt.codecs
        pkn = self.tt.pk_name
        pkw = win.get(pkn)
        applied = self.result.applied_changes
        if pkw is None or pkw[ROW_NEW] is None:  # no insert known, or deleted
            if row is not None and pkw is not None:
                self.deletes.append(row[pkn])
                applied.append(pkw)
            return
        if row is None:
            values = {a: codecs[a].decode(w[ROW_NEW]) for a, w in win.items() if a in codecs}
            if self._insert(eid, pkw, values):
                applied.extend(w for a, w in win.items() if a in codecs and a not in quiet)
            return
        changed: dict[str, Any] = {}
        for attr, w in win.items():
            codec = codecs.get(attr)
            if codec is None or attr == pkn:
                continue
            new = w[ROW_NEW]
            if new is None and attr in self.notnull:  # this schema cannot take the null
                self._hold(eid, attr, "null for a required column")
                continue
            if codec.encode(row[attr]) != new:
                changed[attr] = codec.decode(new)
                if attr not in quiet:
                    applied.append(w)
        if changed:
            changed[PK] = row[pkn]
            if self.unique_columns & changed.keys():
                self.moves.append(changed)
            else:
                self.updates[tuple(sorted(changed))].append(changed)


def _update(conn: Connection, tt: TrackedTable, batch: list[dict[str, Any]]) -> None:
    cols = [c for c in batch[0] if c != PK]
    stmt = (update(tt.table).where(tt.pk == bindparam(PK))
            .values({c: bindparam(c) for c in cols}))
    conn.execute(stmt, batch)


def _placeholder(plan: TablePlan, move: dict[str, Any]) -> dict[str, Any] | None:
    """An update that frees the unique values ``move``'s row holds: its unique columns set
    to null (nullable) or to a text no one else holds (a string type), so that rows swapping
    values can be written one after the other; ``None`` when a column can take neither."""
    out: dict[str, Any] = {PK: move[PK]}
    for c in plan.unique_columns & move.keys():
        column = plan.tt.table.c[c]
        if column.nullable:
            out[c] = None
        elif isinstance(column.type, String):
            out[c] = f"~dimple-swap~{move[PK]}"
        else:
            return None
    return out


def _ordered_moves(plan: TablePlan, rows: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """The unique-moving updates, each after the update of the row giving its value up; rows
    swapping values first give theirs up through a placeholder (see :func:`_placeholder`)."""
    uniques = plan.unique_columns
    pending = list(plan.moves)
    holders: dict[tuple[str, Any], Any] = {}  # (column, value) -> key of the row holding it
    for change in pending:
        row = rows.get(change[PK], {})
        for c in uniques:
            if row.get(c) is not None:
                holders[(c, row[c])] = change[PK]
    out: list[dict[str, Any]] = []
    while pending:
        ready = [u for u in pending
                 if all(holders.get((c, u[c]), u[PK]) == u[PK] for c in uniques if c in u)]
        if not ready:  # a cycle: free the values of its first row, or let the database judge
            first = min(pending, key=lambda u: str(u[PK]))
            free = _placeholder(plan, first)
            if free is None:
                logger.warning("merge: rows of %s swap unique values", plan.tt.name)
                ready = [first]
            else:
                out.append(free)
                for key in [k for k, v in holders.items() if v == first[PK] and k[0] in free]:
                    del holders[key]
                continue
        for u in ready:
            pending.remove(u)
            for key in [k for k, v in holders.items() if v == u[PK] and k[0] in u]:
                del holders[key]
            for c in uniques:
                if c in u and u[c] is not None:
                    holders[(c, u[c])] = u[PK]
            out.append(u)
    return out


def _tree_order(plan: TablePlan, cons: Constraints) -> list[dict[str, Any]]:
    """Inserts of a self-referencing table, each parent before its children."""
    refs = [r for r in cons.checked(plan.tt.name) if r.parent == plan.tt.name]
    if not refs or len(plan.inserts) < 2:
        return plan.inserts
    pkn = plan.tt.pk_name
    waiting = {str(v[pkn]): v for v in plan.inserts}
    out: list[dict[str, Any]] = []
    while waiting:
        ready = [k for k, v in waiting.items()
                 if all(v.get(r.column) is None or str(v[r.column]) not in waiting
                        or str(v[r.column]) == k for r in refs)]
        if not ready:
            ready = [next(iter(waiting))]
        for k in ready:
            out.append(waiting.pop(k))
    return out


def _frees(plan: TablePlan) -> list[dict[str, Any]]:
    """Placeholder updates freeing the unique values of the rows deleted late."""
    if not plan.unique_columns:
        return []
    out = []
    for pk in plan.late:
        free = _placeholder(plan, {PK: pk, **dict.fromkeys(plan.unique_columns)})
        if free is not None:
            out.append(free)
    return out


def steps(plans: list[TablePlan], rows: dict[str, dict[Any, dict[str, Any]]],
          cons: Constraints) -> Iterator[tuple[TablePlan, str, Any]]:
    """Every write of ``plans`` (parents first), one row at a time, in :func:`write`'s
    order: (plan, ``"delete"`` | ``"insert"`` | ``"update"``, key or values)."""
    for plan in reversed(plans):
        yield from ((plan, "delete", pk) for pk in plan.deletes)
    for plan in plans:
        yield from ((plan, "update", u) for u in _frees(plan))
    for plan in plans:
        yield from ((plan, "update", m) for m in _ordered_moves(plan, rows.get(plan.tt.name,
                                                                              {})))
        yield from ((plan, "insert", v) for v in _tree_order(plan, cons))
        yield from ((plan, "update", u) for batch in plan.updates.values() for u in batch)
    for plan in reversed(plans):
        yield from ((plan, "delete", pk) for pk in plan.late)


def write(conn: Connection, plans: list[TablePlan], cons: Constraints, result: MergeResult,
          rows: dict[str, dict[Any, dict[str, Any]]]) -> None:
    """Run ``plans`` (parents first) in the order the module docstring gives; ``rows``: per
    table, the rows as they were, by key (for the order of unique moves)."""
    for plan in reversed(plans):  # children first
        _delete(conn, plan, plan.deletes)
    for plan in plans:
        for free in _frees(plan):
            _update(conn, plan.tt, [free])
    for plan in plans:  # parents first
        tt = plan.tt
        for move in _ordered_moves(plan, rows.get(tt.name, {})):
            _update(conn, tt, [move])
        if plan.inserts:
            insert_values(conn, tt.table, _tree_order(plan, cons))
        for batch in plan.updates.values():
            _update(conn, tt, batch)
        if plan.inserts or plan.updates or plan.moves:
            result.tables.add(tt.name)
    for plan in reversed(plans):
        _delete(conn, plan, plan.late)
    result.applied = len(result.applied_changes) + result.packed_changes


def _delete(conn: Connection, plan: TablePlan, keys: list[Any]) -> None:
    tt = plan.tt
    for chunk in chunks(keys):
        conn.execute(delete(tt.table).where(tt.pk.in_(chunk)))
    if keys:
        plan.result.tables.add(tt.name)


def write_one(conn: Connection, plan: TablePlan, kind: str, item: Any) -> None:
    """Write one planned row: ``kind`` is ``"delete"`` (``item``: a key), ``"insert"`` or
    ``"update"`` (``item``: its values)."""
    tt = plan.tt
    if kind == "delete":
        conn.execute(delete(tt.table).where(tt.pk == item))
    elif kind == "insert":
        insert_values(conn, tt.table, [item])
    else:
        _update(conn, tt, [item])
