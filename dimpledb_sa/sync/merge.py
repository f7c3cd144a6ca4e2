"""Merge: pulled transactions -> change log -> local rows, last write wins per attribute.

:func:`merge` runs inside one database transaction that the caller commits. It stores the
transactions it has not seen (so applying a bundle twice changes nothing), moves the clock
past every pulled id, and re-derives each touched entity from the log: the latest change
(by id) on the primary-key attribute decides whether the row exists (a delete is that
attribute going to ``null``, an insert going to the id), and every other column takes the
new value of its latest change. The result is compared with the row as it is and only the
differences are written: inserts parents-first, deletes children-first, and on SQLite with
``PRAGMA foreign_keys=ON`` foreign keys are checked at commit (``defer_foreign_keys``); a
row whose parent has not arrived is kept out of the table and held until it has. Databases
that check foreign keys statement by statement (PostgreSQL) find those rows before writing
(:mod:`.orphans`).

Changes for a table or column this schema lacks stay in the log and are listed in
``dimple_held``; :func:`replay_held` re-derives those entities once the schema has them.
This module never imports fsspec: it sees transactions, not files.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, delete, select, text, update
from sqlalchemy.exc import StatementError

from ..core import changelog, schema
from ..core.changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_TRANSACTION,
    ChangeRow,
    TxRecord,
)
from ..core.errors import DimpleError, RemoteFormatError
from ..core.rows import chunks, fetch_rows, insert_many, insert_values
from ..core.tracking import parents_first
from .orphans import hold_orphans_first

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.tracking import TrackedTable

__all__ = ["APPLY_ERRORS", "MergeResult", "announce", "describe", "merge", "replay_held",
           "replay_held_in"]

logger = logging.getLogger(__name__)

APPLY_ERRORS = (StatementError, DimpleError, ValueError, TypeError, ArithmeticError,
                LookupError)
"""What applying well-formed but unusable changes raises (a key that is not the entity's,
a value no column of this type can hold, a constraint the rows break): callers undo that
merge to a savepoint and keep the rest."""


@dataclass
class MergeResult:
    """What a merge did: counts for the report, and what to announce after commit."""

    stored: int = 0
    applied: int = 0
    held: int = 0
    tables: set[str] = field(default_factory=set)
    applied_changes: list[ChangeRow] = field(default_factory=list)
    authors: dict[str, str] = field(default_factory=dict)  # transaction id -> author

    def add(self, other: MergeResult) -> None:
        """Count ``other`` (a later merge in the same database transaction) in this one."""
        self.stored += other.stored
        self.held += other.held
        self.tables |= other.tables
        self.applied_changes.extend(other.applied_changes)
        self.applied = len(self.applied_changes)
        self.authors.update(other.authors)


def describe(exc: BaseException) -> str:
    """A short message for ``exc``: a database error without its SQL and parameters."""
    orig = getattr(exc, "orig", None)
    if isinstance(exc, StatementError) and orig is not None:
        return f"{type(orig).__name__}: {orig}"
    return f"{type(exc).__name__}: {exc}"


def _fresh(conn: Connection, transactions: Sequence[TxRecord]) -> list[TxRecord]:
    t = schema.transactions
    ids = [tx_id for tx_id, _, _ in transactions]
    known: set[str] = set()
    for chunk in chunks(ids):
        known.update(conn.execute(select(t.c.id).where(t.c.id.in_(chunk))).scalars())
    seen: set[str] = set()
    out: list[TxRecord] = []
    for tx in transactions:
        tx_id = tx[0]
        if tx_id not in known and tx_id not in seen:
            seen.add(tx_id)
            out.append(tx)
    return out


def merge(replica: Replica, conn: Connection, transactions: Sequence[TxRecord]) -> MergeResult:
    """Store and apply pulled ``transactions`` on ``conn`` (inside the caller's transaction)."""
    result = MergeResult()
    fresh = _fresh(conn, transactions)
    if not fresh:
        return result
    incoming: dict[tuple[str, str], list[ChangeRow]] = {}
    rows: list[changelog.PackedRow] = []
    newest = ""
    for tx_id, author, changes in fresh:
        result.authors[tx_id] = author
        rows.extend(changelog.pack(changes, incoming))
        newest = max(newest, tx_id, max(c[ROW_ID] for c in changes) if changes else "")
    replica.clock.observe(newest)
    changelog.raise_clock_floor(conn, newest)
    before = changelog.entity_changes(conn, incoming)
    insert_many(conn, schema.transactions, [(tx_id, author) for tx_id, author, _ in fresh],
                       ignore_existing=True)
    insert_many(conn, schema.changes, rows, ignore_existing=True)
    result.stored = len(fresh)
    _apply(replica, conn, incoming, before, result)
    return result


def _winners(changes: Iterable[ChangeRow]) -> dict[str, ChangeRow]:
    win: dict[str, ChangeRow] = {}
    for c in changes:
        w = win.get(c[ROW_ATTRIBUTE])
        if w is None or c[ROW_ID] > w[ROW_ID]:
            win[c[ROW_ATTRIBUTE]] = c
    return win


def _apply(replica: Replica, conn: Connection,
           incoming: dict[tuple[str, str], list[ChangeRow]],
           before: dict[tuple[str, str], list[ChangeRow]], result: MergeResult) -> None:
    """Derive each entity in ``incoming`` from ``before`` + ``incoming`` and write the rows."""
    by_table: dict[str, list[str]] = defaultdict(list)
    for etype, eid in incoming:
        by_table[etype].append(eid)
    held: list[tuple[str, str, str, str]] = []
    plans: list[_TablePlan] = []
    for etype, eids in by_table.items():
        tt = replica.tracked.get(etype)
        if tt is None:
            for eid in eids:
                inc = incoming[(etype, eid)]
                result.held += len(inc)
                held.extend((etype, eid, a, "unknown table")
                            for a in {c[ROW_ATTRIBUTE] for c in inc})
            continue
        current = fetch_rows(conn, tt, eids)
        plan = _TablePlan(tt, held, result)
        for eid in eids:
            key = (etype, eid)
            prior = before.get(key)
            row = current.get(eid)
            if prior is None and row is None:
                plan.new_entity(eid, incoming[key])
            else:
                plan.entity(eid, incoming[key], prior, row)
        plans.append(plan)
    _write(replica, conn, plans, result)
    if held:
        insert_many(conn, schema.held, held, ignore_existing=True)


class _TablePlan:
    """What one merge writes to one table: rows to insert, update and delete.

    Built entity by entity from the winning change of each attribute (see :func:`_apply`);
    changes it cannot apply here are appended to ``held``, those it applies to
    ``result.applied_changes``.
    """

    def __init__(self, tt: TrackedTable, held: list[tuple[str, str, str, str]],
                 result: MergeResult) -> None:
        self.tt = tt
        self.held = held
        self.result = result
        self.inserts: list[dict[str, Any]] = []
        self.updates: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        self.deletes: list[Any] = []
        columns = tt.table.columns
        self.notnull = {c.name for c in columns if not c.nullable and not c.primary_key}
        self.required = [c.name for c in columns if c.name in self.notnull
                         and c.default is None and c.server_default is None]
        self.decoders = {a: c.decode for a, c in tt.codecs.items()}

    def _hold(self, eid: str, attr: str, reason: str, count: int = 1) -> None:
        self.result.held += count
        self.held.append((self.tt.name, eid, attr, reason))

    def _hold_unknown(self, eid: str, inc: list[ChangeRow], attrs: Iterable[str]) -> None:
        for a in attrs:
            self._hold(eid, a, "unknown column", sum(1 for c in inc if c[ROW_ATTRIBUTE] == a))

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
        win: dict[str, ChangeRow] = {}
        for c in inc:
            w = win.get(c[ROW_ATTRIBUTE])
            if w is None or c[ROW_ID] > w[ROW_ID]:
                win[c[ROW_ATTRIBUTE]] = c
        decoders = self.decoders
        self._hold_unknown(eid, inc, [a for a in win if a not in decoders])
        pkw = win.get(self.tt.pk_name)
        if pkw is None or pkw[ROW_NEW] is None:
            return
        values = {a: decoders[a](w[ROW_NEW]) for a, w in win.items() if a in decoders}
        if self._insert(eid, pkw, values):
            self.result.applied_changes.extend(w for w in win.values()
                                               if w[ROW_ATTRIBUTE] in decoders)

    def entity(self, eid: str, inc: list[ChangeRow], prior: list[ChangeRow] | None,
               row: dict[str, Any] | None) -> None:
        """An entity with history or a row here: re-derive it from ``prior`` + ``inc``."""
        win = _winners(prior) if prior else {}
        won: set[str] | None = set() if prior else None  # attributes incoming won
        for c in inc:
            attr = c[ROW_ATTRIBUTE]
            w = win.get(attr)
            if w is None or c[ROW_ID] > w[ROW_ID]:
                win[attr] = c
                if won is not None:
                    won.add(attr)
        codecs = self.tt.codecs
        self._hold_unknown(eid, inc, [a for a in win if a not in codecs])
        inc_ids = {w[ROW_ID] for a, w in win.items() if won is None or a in won}
        pkn = self.tt.pk_name
        pkw = win.get(pkn)
        applied = self.result.applied_changes
        if pkw is None or pkw[ROW_NEW] is None:  # no insert known, or deleted
            if row is not None and pkw is not None:
                self.deletes.append(row[pkn])
                if pkw[ROW_ID] in inc_ids:
                    applied.append(pkw)
            return
        if row is None:
            values = {a: codecs[a].decode(w[ROW_NEW]) for a, w in win.items() if a in codecs}
            if self._insert(eid, pkw, values):
                applied.extend(w for w in win.values()
                               if w[ROW_ID] in inc_ids and w[ROW_ATTRIBUTE] in codecs)
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
                if w[ROW_ID] in inc_ids:
                    applied.append(w)
        if changed:
            changed["_dimple_pk"] = row[pkn]
            self.updates[tuple(sorted(changed))].append(changed)


def _write(replica: Replica, conn: Connection, plans: list[_TablePlan],
           result: MergeResult) -> None:
    if not plans:
        return
    order = _table_order(replica)
    plans.sort(key=lambda p: order.get(p.tt.name, len(order)))
    sqlite = conn.dialect.name == "sqlite"
    fk_check = sqlite and bool(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
    if fk_check:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
    elif not sqlite:  # foreign keys checked statement by statement: find the orphans first
        hold_orphans_first(replica, conn, plans, result,  # type: ignore[arg-type]
                           lambda tt: _TablePlan(tt, [], result))
        plans.sort(key=lambda p: order.get(p.tt.name, len(order)))
    for plan in reversed(plans):  # children first
        tt = plan.tt
        for chunk in chunks(plan.deletes):
            conn.execute(delete(tt.table).where(tt.pk.in_(chunk)))
        if plan.deletes:
            result.tables.add(tt.name)
    for plan in plans:  # parents first
        tt = plan.tt
        if plan.inserts:
            insert_values(conn, tt.table, plan.inserts)
            result.tables.add(tt.name)
        for cols, batch in plan.updates.items():
            stmt = (
                update(tt.table)
                .where(tt.pk == bindparam("_dimple_pk"))
                .values({c: bindparam(c) for c in cols if c != "_dimple_pk"})
            )
            conn.execute(stmt, batch)
            result.tables.add(tt.name)
    if fk_check:
        tables = [p.tt for p in plans]
        for plan in plans:
            if plan.deletes:
                _add_dependents(replica, plan.tt, tables)
        _hold_orphans(replica, conn, tables, result)
    result.applied = len(result.applied_changes)


def _table_order(replica: Replica) -> dict[str, int]:
    return {tt.name: i for i, tt in enumerate(parents_first(replica.tracked))}


def announce(replica: Replica, result: MergeResult) -> None:
    """Send ``changes_committed`` (origin ``"sync"``) for a committed merge's changes."""
    if result.applied_changes:
        replica.committed_rows(sorted(result.applied_changes), "sync", result.authors)


def _add_dependents(replica: Replica, parent: TrackedTable, tables: list[TrackedTable]) -> None:
    """Add to ``tables`` the tracked tables with a foreign key to ``parent``."""
    for tt in replica.tracked.values():
        if tt not in tables and any(fk.references(parent.table)
                                    for fk in tt.table.foreign_keys):
            tables.append(tt)


def _hold_orphans(replica: Replica, conn: Connection, tables: list[TrackedTable],
                  result: MergeResult) -> None:
    """Take rows whose parent is missing back out of their table and hold them.

    ``tables`` are checked, and grow by the dependents of every table rows leave: a local
    child of a parent deleted remotely is held too, as is its own child, and so on.
    """
    while True:
        bad: dict[str, set[int]] = defaultdict(set)
        for tt in tables:
            q = f"PRAGMA foreign_key_check({conn.dialect.identifier_preparer.quote(tt.name)})"
            for child_table, rowid, _parent, _fk in conn.exec_driver_sql(q):
                if rowid is not None:
                    bad[child_table].add(rowid)
        if not bad:
            return
        handled = False
        for name, rowids in bad.items():
            child = replica.tracked.get(name)
            if child is None:
                continue  # an untracked table: the commit will report it
            handled = True
            marks = ",".join(str(int(r)) for r in rowids)
            ids = list(conn.execute(select(child.pk).where(text(f"rowid IN ({marks})")))
                       .scalars())
            conn.execute(delete(child.table).where(child.pk.in_(ids)))
            _add_dependents(replica, child, tables)
            insert_many(conn, schema.held,
                               [(name, str(i), child.pk_name, "missing parent row")
                                for i in ids], ignore_existing=True)
            result.held += len(ids)
            dropped = {str(i) for i in ids}
            result.applied_changes[:] = [c for c in result.applied_changes
                                         if not (c[ROW_ENTITY_TYPE] == name
                                                 and c[ROW_ENTITY_ID] in dropped)]
        if not handled:
            return


def replay_held(replica: Replica, conn: Connection) -> int:
    """Re-derive held entities whose table and columns now exist; returns changes applied.

    Runs in its own transaction on ``conn`` unless one is open. Held entries that still
    cannot apply stay held.
    """
    own = not conn.in_transaction()
    if own:
        conn.begin()
    try:
        result = replay_held_in(replica, conn)
        if own:
            conn.commit()
    except BaseException:
        if own:
            conn.rollback()
        raise
    if result.applied_changes:
        announce(replica, result)
    return result.applied


def replay_held_in(replica: Replica, conn: Connection) -> MergeResult:
    """:func:`replay_held` inside the caller's transaction."""
    h = schema.held
    result = MergeResult()
    entries = list(conn.execute(select(h.c.entity_type, h.c.entity_id, h.c.attribute,
                                       h.c.reason)))
    ready: set[tuple[str, str]] = set()
    for etype, eid, attr, reason in entries:
        tt = replica.tracked.get(etype)
        if tt is None:
            continue
        if attr in tt.codecs or reason == "missing parent row":
            ready.add((etype, eid))
    if not ready:
        return result
    for etype, eid in ready:
        conn.execute(delete(h).where(h.c.entity_type == etype, h.c.entity_id == eid))
    everything = changelog.entity_changes(conn, ready)
    # re-derive from the whole log: every logged change counts as "incoming" over nothing
    try:
        with conn.begin_nested():
            _apply(replica, conn, {k: everything.get(k, []) for k in ready}, {}, result)
    except APPLY_ERRORS:
        result = _replay_each(replica, conn, ready, everything,
                              [tuple(e) for e in entries])
    authors = _authors(conn, {c[ROW_TRANSACTION] for c in result.applied_changes})
    result.authors = authors
    return result


def _replay_each(replica: Replica, conn: Connection, ready: set[tuple[str, str]],
                 everything: dict[tuple[str, str], list[ChangeRow]],
                 entries: list[tuple[Any, ...]]) -> MergeResult:
    """Replay entity by entity (parents first), so that one that cannot apply stays held
    alone."""
    order = _table_order(replica)
    result = MergeResult()
    for key in sorted(ready, key=lambda k: (order.get(k[0], len(order)), k[1])):
        part = MergeResult()
        try:
            with conn.begin_nested():
                _apply(replica, conn, {key: everything.get(key, [])}, {}, part)
        except APPLY_ERRORS as exc:
            logger.warning("held %s %s still cannot apply: %s", key[0], key[1], describe(exc))
            insert_many(conn, schema.held, [e for e in entries if e[:2] == key],
                               ignore_existing=True)
            continue
        result.add(part)
    return result


def _authors(conn: Connection, tx_ids: set[str]) -> dict[str, str]:
    t = schema.transactions
    out: dict[str, str] = {}
    for chunk in chunks(list(tx_ids)):
        for tid, author in conn.execute(select(t.c.id, t.c.author).where(t.c.id.in_(chunk))):
            out[tid] = author
    return out
