"""Adoption: record the rows a database held before tracking began, so that they sync.

:func:`adopt` (``db.adopt()``) walks every tracked table in key order, a batch at a time,
and for each row whose key has no change in the log records an insert (the key column
first, then every other column, old values all null) exactly as capture would have, with
:func:`..core.changelog.write_local`. Tables go parents first; each batch is one log
transaction, and the whole adoption one database transaction (started by taking the write
lock, so no concurrent writer slips a row between the check and the write). A row that has
any history, including rows adopted before, is left alone: a second call records nothing.
``changes_committed`` (origin ``"local"``) is sent once after the commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, inspect, select

from ..core import changelog, meta
from ..core.changelog import Group, PackedRow, fold, write_local
from ..core.signals import changes_committed
from ..core.tracking import parents_first

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.tracking import TrackedTable

__all__ = ["adopt"]


def _batches(conn: Connection, tt: TrackedTable, size: int) -> Iterator[Sequence[Row[Any]]]:
    """The table's rows in key order, ``size`` at a time (keyset pagination)."""
    stmt = select(tt.table).order_by(tt.pk).limit(size)
    last: Any = None
    while True:
        batch = conn.execute(stmt if last is None else stmt.where(tt.pk > last)).all()
        if not batch:
            return
        yield batch
        if len(batch) < size:
            return
        last = batch[-1]._mapping[tt.pk]


def _logged(conn: Connection, name: str, entity_ids: Sequence[str]) -> set[str]:
    """The ids among ``entity_ids`` that have at least one change in the log."""
    return changelog.logged_entities(conn, name, entity_ids)


def _groups(tt: TrackedTable, rows: Sequence[Row[Any]], logged: set[str]) -> list[Group]:
    """Insert groups (key column first, old values all null) for the rows not in ``logged``."""
    columns = [tt.pk, *(c for c in tt.table.columns if c is not tt.pk)]
    names = [c.name for c in columns]
    encoders = [(c, tt.codecs[c.name].encode) for c in columns]
    olds: list[str | None] = [None] * len(names)
    groups: list[Group] = []
    for row in rows:
        values = row._mapping
        eid = str(values[tt.pk])
        if eid in logged:
            continue
        groups.append([tt.name, eid, names, olds, [enc(values[c]) for c, enc in encoders]])
    return groups


def adopt(replica: Replica, *, batch_size: int = 2000) -> int:
    """Record every tracked row that has no history yet; returns how many rows.

    ``batch_size`` rows are read, checked and written at a time (one log transaction per
    batch), so memory stays flat on large tables. Tables missing from the database are
    skipped.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    keep = any(True for _ in changes_committed.receivers_for(replica.sender))
    written: list[PackedRow] = []
    adopted = 0
    _ = replica.author_id  # created (in its own transaction) before the lock is taken
    with replica.sync_lock, replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        present = set(inspect(conn).get_table_names())
        fold(conn)  # pending local transactions count as logged
        for tt in parents_first(replica.tracked):
            if tt.name not in present:
                continue
            for rows in _batches(conn, tt, batch_size):
                ids = [str(r._mapping[tt.pk]) for r in rows]
                groups = _groups(tt, rows, _logged(conn, tt.name, ids))
                if not groups:
                    continue
                packed = write_local(replica, conn, groups)
                adopted += len(groups)
                if keep:
                    written.extend(packed)
    if adopted:
        replica.committed_local(written)
    return adopted
