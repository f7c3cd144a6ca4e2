"""Undo: ``db.revert(transaction_id)`` records a new local transaction that undoes one.

:func:`plan_entity` decides, from the log alone, what undoing transaction ``T`` does to one
entity ``T`` touched (values stay JSON text, compared as the log spells them):

- ``T`` inserted it (its key attribute went ``null`` -> id) and it exists now: delete it.
- ``T`` deleted it (key attribute id -> ``null``) and it is still deleted: restore it, each
  column with its latest logged value (the value just before the delete, unless a later
  change set it since), except the attributes ``T`` itself set on the way (see below).
- ``T`` updated it and it exists now: every attribute ``T`` changed that still holds the
  value ``T`` gave it goes back to the value it had just before ``T``: the new value of
  the attribute's latest change before ``T``'s first change of it (any author), or, when
  the log has none, the old value ``T`` recorded. An attribute whose value a later change
  made different is left as it is. The test is by value, not by change id: a later change
  that set the attribute back to ``T``'s value (an undo and redo of a later transaction)
  leaves it as ``T`` left it, which is what makes undoing the last transactions one by
  one, newest first, give back exactly the earlier rows.
- Anything else (created and deleted within ``T``, deleted or re-created since): nothing.

:func:`revert` applies the plan to the rows and records it with
:func:`..core.changelog.write_local` in one database transaction, holding
``replica.sync_lock`` and the database's write lock (as :mod:`.adopt` does), so no other
writer changes the log in between: deletes children first, restores parents first (each
recorded as an insert: the key, then every column as read back, old values null), then
updates. Foreign keys are checked by the revert itself (no row left pointing at a deleted
one, no restored or updated row pointing at a missing one), and on SQLite deferred to the
commit; a broken constraint, a column this schema lacks or an untracked table raises
:class:`..core.errors.RevertError` and nothing is written. ``changes_committed`` (origin
``"local"``) follows the commit.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, ForeignKey, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..core import meta
from ..core.changelog import (
    Group,
    entity_changes,
    expand_all,
    fold,
    valueless_of,
    write_local,
)
from ..core.changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_OLD,
    ROW_TRANSACTION,
    ChangeRow,
    changes_from_rows,
)
from ..core.errors import HistoryError, RevertError
from ..core.rows import chunks, fetch_rows, insert_values
from ..core.timeline import check_not_pruned, transaction_authors, transaction_changes, winners
from ..core.tracking import parents_first

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.tracking import TrackedTable

__all__ = ["DELETE", "RESTORE", "UPDATE", "Undo", "plan_entity", "revert"]

logger = logging.getLogger(__name__)

DELETE: Final = "delete"
RESTORE: Final = "restore"
UPDATE: Final = "update"


@dataclass(frozen=True)
class Undo:
    """What undoing a transaction does to one entity, as JSON text.

    ``kind`` is :data:`DELETE`, :data:`RESTORE` or :data:`UPDATE`; ``values`` maps each
    attribute the undo sets to ``(value now, value after the undo)`` (for a restore: every
    logged attribute, the key included, with ``None`` as the value now).
    """

    kind: str
    entity_type: str
    entity_id: str
    values: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


def _value_before(history: Sequence[ChangeRow], attr: str, first: ChangeRow) -> str | None:
    """``attr``'s value just before the change ``first``: the new value of its latest
    earlier change in ``history`` (in id order), else the old value ``first`` recorded."""
    found: ChangeRow | None = None
    for c in history:
        if c[ROW_ID] >= first[ROW_ID]:
            break
        if c[ROW_ATTRIBUTE] == attr:
            found = c
    return found[ROW_NEW] if found is not None else first[ROW_OLD]


def _targets(pk_name: str, ours: Sequence[ChangeRow], history: Sequence[ChangeRow],
             win: dict[str, ChangeRow]) -> dict[str, tuple[str | None, str | None]]:
    """Attribute -> (value now, value before ``ours``) for each attribute ``ours`` changed
    (the key aside) that still holds the value ``ours`` gave it."""
    first: dict[str, ChangeRow] = {}
    last: dict[str, ChangeRow] = {}
    for c in ours:
        attr = c[ROW_ATTRIBUTE]
        if attr != pk_name:
            first.setdefault(attr, c)
            last[attr] = c
    out: dict[str, tuple[str | None, str | None]] = {}
    for attr, c in last.items():
        now = win[attr][ROW_NEW]
        if now == c[ROW_NEW]:
            out[attr] = (now, _value_before(history, attr, first[attr]))
    return out


def plan_entity(pk_name: str, ours: Sequence[ChangeRow], history: Sequence[ChangeRow],
                row_exists: bool = True) -> Undo | None:
    """The undo of the changes ``ours`` (one transaction's, to one entity, in id order)
    given the entity's whole ``history`` (in id order, ``ours`` included); ``None`` when
    nothing needs undoing. ``row_exists`` is only read when the history has no change of
    the key attribute (a row written before tracking began)."""
    etype, eid = ours[0][ROW_ENTITY_TYPE], ours[0][ROW_ENTITY_ID]
    win = winners(history)
    keys = [c for c in ours if c[ROW_ATTRIBUTE] == pk_name]
    before = keys[0][ROW_OLD] is not None if keys else True
    after = keys[-1][ROW_NEW] is not None if keys else True
    pkw = win.get(pk_name)
    exists = pkw[ROW_NEW] is not None if pkw is not None else row_exists
    if before and not after:  # a delete
        if exists:
            return None
        values: dict[str, tuple[str | None, str | None]] = {
            a: (None, w[ROW_NEW]) for a, w in win.items() if a != pk_name}
        values.update((a, (None, old)) for a, (_, old) in
                      _targets(pk_name, ours, history, win).items())
        values[pk_name] = (None, keys[0][ROW_OLD])
        return Undo(RESTORE, etype, eid, values)
    if not exists:
        return None
    if after and not before:  # an insert
        assert pkw is not None
        return Undo(DELETE, etype, eid, {pk_name: (pkw[ROW_NEW], None)})
    if not before:
        return None
    changed = {a: v for a, v in _targets(pk_name, ours, history, win).items() if v[0] != v[1]}
    return Undo(UPDATE, etype, eid, changed) if changed else None


def _canonical(transaction_id: Any) -> str:
    try:
        return str(uuid.UUID(str(transaction_id)))
    except ValueError:
        raise ValueError(f"{transaction_id!r} is not a transaction id (a UUID, as in "
                         "Change.transaction_id)") from None


def _plan(conn: Connection, replica: Replica, tx: str) -> list[Undo]:
    """The undo of transaction ``tx``, entity by entity (``[]``: nothing to undo)."""
    fold(conn)
    ours = transaction_changes(conn, [tx]).get(tx, [])
    if tx not in transaction_authors(conn, [tx]):
        check_not_pruned(conn, tx, f"reverting transaction {tx}")
        raise HistoryError(f"transaction {tx} is not in this database's change log: it was "
                           "not made here and has not been pulled (sync first), or "
                           "prune_history dropped it")
    check_not_pruned(conn, tx, f"reverting transaction {tx}")
    by_entity: dict[tuple[str, str], list[ChangeRow]] = defaultdict(list)
    for c in ours:
        by_entity[(c[ROW_ENTITY_TYPE], c[ROW_ENTITY_ID])].append(c)
    untracked = sorted({etype for etype, _ in by_entity if etype not in replica.tracked})
    if untracked:
        raise RevertError(f"cannot revert transaction {tx}: it changed table(s) "
                          f"{', '.join(untracked)}, which this DimpleDb does not track; "
                          "revert it where the schema has them. Nothing was written.", tx)
    by_type: dict[str, list[str]] = defaultdict(list)
    for etype, eid in by_entity:
        by_type[etype].append(eid)
    for etype, eids in sorted(by_type.items()):
        tt = replica.tracked[etype]
        valueless = sorted({r[ROW_ENTITY_ID] for r in valueless_of(conn, etype, eids)})
        if not valueless:
            continue
        gone = set(valueless) - set(fetch_rows(conn, tt, valueless, [tt.pk_name]))
        if gone:
            raise RevertError(
                f"cannot revert transaction {tx}: the values of {etype} {min(gone)} it "
                "would restore are unknown (prune_history dropped them from the log, and "
                "the row was deleted by a write capture did not see, so they could not be "
                "stored back first); nothing was written", tx)
    histories = entity_changes(conn, by_entity)  # (stores value-less rows' values back)
    out: list[Undo] = []
    for (etype, eid), changes in sorted(by_entity.items()):
        tt = replica.tracked[etype]
        history = histories.get((etype, eid), changes)
        exists = True
        if not any(c[ROW_ATTRIBUTE] == tt.pk_name for c in history):
            exists = bool(fetch_rows(conn, tt, [eid], [tt.pk_name]))
        undo = plan_entity(tt.pk_name, changes, history, exists)
        if undo is not None:
            out.append(undo)
    return out


def _target(fk: ForeignKey) -> Any:
    """The table ``fk`` refers to, or ``None`` when it cannot be resolved here."""
    try:
        return fk.column.table
    except SQLAlchemyError:
        return None


def _message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]


def revert(replica: Replica, transaction_id: Any) -> str | None:
    """Undo transaction ``transaction_id`` (any author's) as a new local transaction;
    returns its id, or ``None`` when nothing needed undoing. See the module docs."""
    tx = _canonical(transaction_id)
    _ = replica.author_id  # created (in its own transaction) before the lock is taken
    try:
        with replica.sync_lock, replica.engine.connect() as conn, conn.begin():
            meta.take_write_lock(conn)
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            undos = _plan(conn, replica, tx)
            if not undos:
                logger.info("revert %s: nothing to undo", tx)
                return None
            groups = _Writer(conn, replica, tx).write(undos)
            packed = write_local(replica, conn, groups)
    except IntegrityError as exc:
        raise RevertError(f"cannot revert transaction {tx}: the undo breaks a constraint of "
                          f"the rows as they are now ({_message(exc)}); nothing was written. "
                          "Change or delete the rows it collides with, then revert again.",
                          tx) from exc
    new_tx = packed[0][ROW_TRANSACTION]
    logger.info("reverted %s as %s (%d entities)", tx, new_tx, len(groups))
    tables = {g[0] for g in groups}
    replica.committed(tables, lambda: changes_from_rows(expand_all(packed), replica.author_id),
                      "local")
    return new_tx


class _Writer:
    """Applies the undos of one revert to the rows and builds their log groups."""

    def __init__(self, conn: Connection, replica: Replica, tx: str) -> None:
        self.conn = conn
        self.replica = replica
        self.tx = tx
        self.deleted: dict[str, dict[str, dict[str, Any]]] = {}  # table -> id -> old row
        self.written: dict[str, set[str]] = defaultdict(set)  # table -> ids restored/updated

    def _fail(self, what: str) -> RevertError:
        return RevertError(f"cannot revert transaction {self.tx}: {what}; nothing was "
                           "written", self.tx)

    def write(self, undos: list[Undo]) -> list[Group]:
        """Deletes (children first), restores (parents first), then updates."""
        by_table: dict[str, dict[str, list[Undo]]] = defaultdict(lambda: defaultdict(list))
        for u in undos:
            by_table[u.entity_type][u.kind].append(u)
        order = [tt for tt in parents_first(self.replica.tracked) if tt.name in by_table]
        groups: list[Group] = []
        for tt in reversed(order):
            groups.extend(self._delete(tt, by_table[tt.name][DELETE]))
        for tt in order:
            groups.extend(self._restore(tt, by_table[tt.name][RESTORE]))
        for tt in order:
            groups.extend(self._update(tt, by_table[tt.name][UPDATE]))
        self._check_references()
        return groups

    def _delete(self, tt: TrackedTable, undos: list[Undo]) -> list[Group]:
        if not undos:
            return []
        ids = [u.entity_id for u in undos]
        self.deleted[tt.name] = fetch_rows(self.conn, tt, ids)
        to_key = tt.codecs[tt.pk_name].from_json
        for chunk in chunks(ids):
            self.conn.execute(delete(tt.table).where(tt.pk.in_([to_key(i) for i in chunk])))
        return [[tt.name, u.entity_id, [tt.pk_name], [u.values[tt.pk_name][0]], [None]]
                for u in undos]

    def _restore(self, tt: TrackedTable, undos: list[Undo]) -> list[Group]:
        """Insert the rows back; columns this schema lacks keep their logged (held) values."""
        if not undos:
            return []
        codecs = tt.codecs
        insert_values(self.conn, tt.table, [
            {a: codecs[a].decode(v) for a, (_, v) in u.values.items() if a in codecs}
            for u in undos])
        ids = [u.entity_id for u in undos]
        found = fetch_rows(self.conn, tt, ids)
        names = [tt.pk_name, *(c.name for c in tt.table.columns if c is not tt.pk)]
        encoders = [codecs[n].encode for n in names]
        olds: list[str | None] = [None] * len(names)
        self.written[tt.name].update(ids)
        return [[tt.name, eid, names, olds,
                 [enc(found[eid][n]) for n, enc in zip(names, encoders, strict=True)]]
                for eid in ids]

    def _update(self, tt: TrackedTable, undos: list[Undo]) -> list[Group]:
        if not undos:
            return []
        codecs = tt.codecs
        batches: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        groups: list[Group] = []
        for u in undos:
            unknown = sorted(a for a in u.values if a not in codecs)
            if unknown:
                raise self._fail(f"{tt.name} has no column {', '.join(unknown)} here, which "
                                 f"the undo of {u.entity_id} changes; revert it where the "
                                 "schema has it")
            names = sorted(u.values)
            params = {a: codecs[a].decode(u.values[a][1]) for a in names}
            params["_dimple_pk"] = codecs[tt.pk_name].from_json(u.entity_id)
            batches[tuple(names)].append(params)
            groups.append([tt.name, u.entity_id, names, [u.values[a][0] for a in names],
                           [u.values[a][1] for a in names]])
            self.written[tt.name].add(u.entity_id)
        for cols, batch in batches.items():
            stmt = (update(tt.table).where(tt.pk == bindparam("_dimple_pk"))
                    .values({c: bindparam(c) for c in cols}))
            self.conn.execute(stmt, batch)
        return groups

    def _check_references(self) -> None:
        """No row may point at a row the revert deleted, nor a restored or updated row at
        a row that is not there (checked here, whatever the database enforces)."""
        tracked = self.replica.tracked
        for parent_name, old_rows in self.deleted.items():
            parent = tracked[parent_name]
            for child in tracked.values():
                for fk in child.table.foreign_keys:
                    if _target(fk) is not parent.table:
                        continue
                    values = [r[fk.column.name] for r in old_rows.values()]
                    for chunk in chunks(values):
                        hit = self.conn.execute(select(child.pk, fk.parent).where(
                            fk.parent.in_(chunk)).limit(1)).first()
                        if hit is not None:
                            raise self._fail(
                                f"it created {parent_name} {hit[1]}, which {child.name} "
                                f"{hit[0]} refers to now ({child.name}.{fk.parent.name}); "
                                "delete or change that row first")
        for name, ids in self.written.items():
            self._check_parents(tracked[name], sorted(ids))

    def _check_parents(self, child: TrackedTable, ids: list[str]) -> None:
        tracked = self.replica.tracked
        tables = {id(tt.table) for tt in tracked.values()}
        fks = [fk for fk in child.table.foreign_keys if id(_target(fk)) in tables]
        if not fks:
            return
        rows = fetch_rows(self.conn, child, ids, [fk.parent.name for fk in fks])
        for fk in fks:
            wanted = {r[fk.parent.name] for r in rows.values()} - {None}
            there: set[Any] = set()
            for chunk in chunks(list(wanted)):
                there.update(self.conn.execute(select(fk.column).where(
                    fk.column.in_(chunk))).scalars())
            missing = wanted - there
            if missing:
                eid = next(i for i, r in rows.items() if r[fk.parent.name] in missing)
                raise self._fail(
                    f"{child.name} {eid} would refer to {fk.column.table.name} "
                    f"{rows[eid][fk.parent.name]} ({child.name}.{fk.parent.name}), which "
                    "does not exist now; restore that row first")
