"""Local history retention: :func:`prune_history` drops superseded changes older than a cutoff.

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
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from . import changelog, meta, schema
from .changes import ROW_ATTRIBUTE, ROW_ENTITY_ID, ROW_ENTITY_TYPE, ROW_ID, ROW_TRANSACTION

if TYPE_CHECKING:
    from .replica import Replica

__all__ = ["cutoff_id", "prune_history", "prune_in"]


def cutoff_id(when: datetime) -> str:
    """The smallest id of the millisecond ``when`` (every id issued before sorts below it)."""
    ms = max(0, int(when.timestamp() * 1000))
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:12]}-7000-8000-000000000000"


def prune_history(replica: Replica, older_than: timedelta) -> int:
    """Drop superseded changes older than ``older_than``; returns how many were dropped."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = cutoff_id(datetime.now(UTC) - older_than)
    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        return prune_in(conn, replica.author_on(conn), cutoff)


def _winners(conn: Connection, me: str, unpushed_after: str | None
             ) -> tuple[set[str], set[str]]:
    """Per (entity_type, entity_id, attribute): the ids to keep (latest overall and latest
    outside our unpushed transactions); and the ids of our unpushed transactions."""
    t = schema.transactions
    stmt = select(t.c.id).where(t.c.author == me)
    if unpushed_after is not None:
        stmt = stmt.where(t.c.id > unpushed_after)
    unpushed = set(conn.execute(stmt).scalars())
    best: dict[tuple[str, str, str], str] = {}
    best_pushed: dict[tuple[str, str, str], str] = {}
    for row in (r for batch in changelog.iter_rows(conn) for r in batch):
        mine = row[ROW_TRANSACTION] in unpushed
        for ch in changelog.expand(row):
            key = (ch[ROW_ENTITY_TYPE], ch[ROW_ENTITY_ID], ch[ROW_ATTRIBUTE])
            cid = ch[ROW_ID]
            if cid > best.get(key, ""):
                best[key] = cid
            if not mine and cid > best_pushed.get(key, ""):
                best_pushed[key] = cid
    return set(best.values()) | set(best_pushed.values()), unpushed


def prune_in(conn: Connection, me: str, cutoff: str) -> int:
    """:func:`prune_history` on ``conn`` (a write transaction): drop superseded changes with
    an id below ``cutoff``; returns how many changes were dropped."""
    changelog.fold(conn)
    pushed = meta.get(conn, meta.PUSHED_THROUGH)
    if pushed is None:  # nothing pushed: every own transaction is unpushed
        pushed = ""
    keep, unpushed = _winners(conn, me, pushed or None)
    dropped = 0
    gone: list[changelog.PackedRow] = []
    repacked: list[changelog.PackedRow] = []
    for row in (r for batch in changelog.iter_rows(conn, below=cutoff) for r in batch):
        if row[ROW_TRANSACTION] in unpushed:
            continue
        changes = changelog.expand(row)
        left = [ch for ch in changes if ch[ROW_ID] >= cutoff or ch[ROW_ID] in keep]
        if len(left) == len(changes):
            continue
        dropped += len(changes) - len(left)
        gone.append(row)
        repacked.extend(changelog.pack(left))
    changelog.delete_rows(conn, gone)
    changelog.store(conn, repacked)
    old = meta.get(conn, meta.PRUNED_BEFORE)
    if old is None or cutoff > old:
        meta.put(conn, meta.PRUNED_BEFORE, cutoff)
    return dropped
