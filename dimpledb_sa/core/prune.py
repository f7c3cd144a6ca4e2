"""Local history retention: :func:`prune_history` drops superseded changes older than a
cutoff, and the stored values of old winning changes that the live rows hold.

A change is *superseded* when another change of the same (entity, attribute) has a higher
id: last write wins per attribute, so the merge result depends only on each attribute's
latest change (the primary key's latest change is the entity's insert or delete marker).
Pruning keeps, for every (entity, attribute):

- its latest change overall, and
- its latest change outside this device's unpushed transactions (what a snapshot of the
  pushed state needs, see :mod:`..sync.snapshot`),

and never touches a change of an unpushed local transaction (push sends them whole).
Transactions whose changes are all dropped keep their ``dimple_transactions`` row, so a
bundle that holds them again is still recognised as merged. The cutoff is written to
``dimple_meta`` (:data:`.meta.PRUNED_BEFORE`) in the same database transaction; undo's
``as_of``/``revert`` refuse to reach behind it (:mod:`.timeline`).

**Values.** A kept change older than the cutoff that is its attribute's latest change
overall, of an entity whose live row exists and holds exactly that value (re-encoded from
the row as the database reflects it, compared as JSON text), needs only its ids for
last-write-wins: its value is the live row's. A packed row of such changes is stored
without its new values (:data:`.changelog.DROPPED`), when every one of its attributes is
a plain column (:func:`.restore.plain_column`) or the key. Never for a change of our own
transactions that are not pushed or not settled yet (:data:`.meta.SETTLED_THROUGH`), of an
entity that is held or named by a conflict, of a deleted entity, of a table the database
itself may change (a foreign key with an action). :mod:`.restore` says how every reader
reads such values back and every writer stores them again before it changes the row;
:func:`.restore.restore_all` stores them all back. The prune writes
:data:`.meta.VALUES_DROPPED_BEFORE` and makes the transaction index partial
(:func:`.changelog.ensure_partial_index`).
"""


from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from . import changelog, meta, schema
from .changelog import DROPPED, PackedRow
from .changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_TRANSACTION,
    ChangeRow,
)
from .restore import LiveTable, encoded, live_table

if TYPE_CHECKING:
    from .replica import Replica

__all__ = ["cutoff_id", "prune_history", "prune_in", "restore_pruned_values"]

logger = logging.getLogger(__name__)

_BATCH = 5_000
"""Entities whose live rows :func:`prune_in` reads at a time."""

Entity = tuple[str, str, list[PackedRow]]


def cutoff_id(when: datetime) -> str:
    """The smallest id of the millisecond ``when`` (every id issued before sorts below it)."""
    ms = max(0, int(when.timestamp() * 1000))
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:12]}-7000-8000-000000000000"


def prune_history(replica: Replica, older_than: timedelta) -> int:
    """Drop superseded changes older than ``older_than`` (and the stored values of older
    winners that the live rows hold); returns how many changes were dropped."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = cutoff_id(datetime.now(UTC) - older_than)
    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        return prune_in(conn, replica.author_on(conn), cutoff)


def restore_pruned_values(replica: Replica) -> int:
    """Store back into the log every value ``prune_history`` dropped (read from the live
    rows); returns how many log rows got their values back. Run it before a migration
    drops or changes a column, or drops a table, of a pruned database."""
    from .restore import restore_all

    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        changelog.fold(conn)
        return restore_all(conn)


def _entities(conn: Connection) -> Iterator[Entity]:
    """Every entity of the indexed log with its packed rows (as stored), in key order."""
    key: tuple[str, str] | None = None
    rows: list[PackedRow] = []
    for batch in changelog.iter_rows(conn, raw=True):
        for row in batch:
            k = (row[ROW_ENTITY_TYPE], row[ROW_ENTITY_ID])
            if k != key:
                if key is not None:
                    yield key[0], key[1], rows
                key, rows = k, []
            rows.append(row)
    if key is not None:
        yield key[0], key[1], rows


def _own_after(conn: Connection, me: str, after: str | None) -> set[str]:
    t = schema.transactions
    stmt = select(t.c.id).where(t.c.author == me)
    if after:
        stmt = stmt.where(t.c.id > after)
    return set(conn.execute(stmt).scalars())


def _untouchable(conn: Connection) -> set[tuple[str, str]]:
    """Entities whose values are never dropped: held ones, and those a conflict names."""
    h, c = schema.held, schema.conflicts
    out = {(a, b) for a, b in conn.execute(select(h.c.entity_type, h.c.entity_id))}
    for a, b, x, y in conn.execute(select(c.c.entity_type, c.c.entity_id,
                                          c.c.other_entity_type, c.c.other_entity_id)):
        out.add((a, b))
        if x is not None and y is not None:
            out.add((x, y))
    return out


class _Pruner:
    """One prune: what to drop, decided entity by entity, written at the end."""

    def __init__(self, conn: Connection, me: str, cutoff: str) -> None:
        self.conn = conn
        self.cutoff = cutoff
        self.unpushed = _own_after(conn, me, meta.get(conn, meta.PUSHED_THROUGH))
        self.fresh = self.unpushed | _own_after(conn, me, meta.get(conn,
                                                                    meta.SETTLED_THROUGH))
        self.untouchable = _untouchable(conn)
        self.tables: dict[str, LiveTable | None] = {}
        self.dropped = 0
        self.emptied = 0
        self.gone: list[PackedRow] = []
        self.repacked: list[PackedRow] = []

    def run(self) -> int:
        buffer: list[Entity] = []
        for entity in _entities(self.conn):
            if any(r[ROW_ID] < self.cutoff for r in entity[2]):
                buffer.append(entity)
            if len(buffer) >= _BATCH:
                self._decide(buffer)
                buffer = []
        self._decide(buffer)
        changelog.delete_rows(self.conn, self.gone)
        changelog.store(self.conn, self.repacked)
        if self.emptied:
            logger.info("prune_history: dropped the stored values of %d winning changes "
                        "(the live rows hold them)", self.emptied)
        return self.dropped

    def _table(self, etype: str) -> LiveTable | None:
        if etype not in self.tables:
            lt = live_table(self.conn, etype)
            self.tables[etype] = None if lt is None or lt.pk is None or lt.cascaded else lt
        return self.tables[etype]

    def _decide(self, entities: Sequence[Entity]) -> None:
        by_type: dict[str, list[str]] = {}
        for etype, eid, _ in entities:
            if (etype, eid) not in self.untouchable and self._table(etype) is not None:
                by_type.setdefault(etype, []).append(eid)
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for etype, eids in by_type.items():
            lt = self.tables[etype]
            assert lt is not None
            for eid, row in lt.rows(self.conn, eids).items():
                live[(etype, eid)] = row
        for etype, eid, rows in entities:
            self._entity(etype, eid, rows, live.get((etype, eid)))

    def _entity(self, etype: str, eid: str, rows: list[PackedRow],
                live: dict[str, Any] | None) -> None:
        best: dict[str, ChangeRow] = {}
        best_pushed: dict[str, ChangeRow] = {}
        expanded = [(row, changelog.expand(row)) for row in rows]
        for row, changes in expanded:
            mine = row[ROW_TRANSACTION] in self.unpushed
            for ch in changes:
                a = ch[ROW_ATTRIBUTE]
                if a not in best or ch[ROW_ID] > best[a][ROW_ID]:
                    best[a] = ch
                if not mine and (a not in best_pushed or ch[ROW_ID] > best_pushed[a][ROW_ID]):
                    best_pushed[a] = ch
        keep = {c[ROW_ID] for c in best.values()} | {c[ROW_ID] for c in best_pushed.values()}
        empty = self._emptiable(etype, eid, best, live)
        for row, changes in expanded:
            if row[ROW_ID] >= self.cutoff or row[ROW_TRANSACTION] in self.unpushed:
                continue
            left = [ch for ch in changes if ch[ROW_ID] in keep]
            valueless = row[changelog.PACKED_NEWS] == DROPPED
            if valueless:  # as it is: its changes are all winners (the invariant)
                continue
            emptied = [] if row[ROW_TRANSACTION] in self.fresh else [
                ch for ch in left if ch[ROW_ID] in empty]
            if len(left) == len(changes) and not emptied:
                continue
            out = {ch[ROW_ID] for ch in emptied}
            valued = [ch for ch in left if ch[ROW_ID] not in out]
            self.dropped += len(changes) - len(left)
            self.emptied += len(emptied)
            self.gone.append(row)
            self.repacked.extend(changelog.pack(valued))
            self.repacked.extend((*r[:6], DROPPED) for r in changelog.pack(emptied))

    def _emptiable(self, etype: str, eid: str, best: dict[str, ChangeRow],
                   live: dict[str, Any] | None) -> set[str]:
        """The ids of the winners in ``best`` whose value the ``live`` row holds."""
        lt = self.tables.get(etype)
        if live is None or lt is None or lt.pk is None:
            return set()
        pkw = best.get(lt.pk.name)
        if pkw is None or pkw[ROW_NEW] is None:
            return set()  # a deleted entity, or one whose key column is not its id
        out: set[str] = set()
        for a, ch in best.items():
            if ch[ROW_ID] < self.cutoff and encoded(lt, a, live, eid) == ch[ROW_NEW]:
                out.add(ch[ROW_ID])
        return out


def prune_in(conn: Connection, me: str, cutoff: str) -> int:
    """:func:`prune_history` on ``conn`` (a write transaction): drop superseded changes with
    an id below ``cutoff``, and the stored values of the older winners the live rows hold;
    returns how many changes were dropped."""
    changelog.fold(conn)
    pruner = _Pruner(conn, me, cutoff)
    dropped = pruner.run()
    if pruner.emptied:
        changelog.forget_dropped_gate(conn)
        changelog.ensure_partial_index(conn)
        old = meta.get(conn, meta.VALUES_DROPPED_BEFORE)
        if old is None or cutoff > old:
            meta.put(conn, meta.VALUES_DROPPED_BEFORE, cutoff)
    old = meta.get(conn, meta.PRUNED_BEFORE)
    if old is None or cutoff > old:
        meta.put(conn, meta.PRUNED_BEFORE, cutoff)
    return dropped
