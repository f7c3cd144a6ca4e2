"""Changes from the future: pulled transactions further ahead of local time than
``max_drift``, kept aside until local time catches up.

A transaction is *ahead* when its id or one of its change ids sorts after
:meth:`~dimpledb_sa.core.clock.HybridClock.horizon` of ``max_drift`` (its time is more than
``max_drift`` past this device's wall clock). :func:`split` keeps such transactions out of
a merge and stores them whole in ``dimple_ahead`` (their bundle JSON, their author and the
largest id they hold); they are counted as held (``report.held``, ``dimpledb status``) and
never dropped. :func:`take_due` hands back, and forgets, those whose time has come; the
merge then applies them like any pulled transaction. Since last-write-wins compares ids,
applying a transaction late gives the rows it would have given on time: replicas converge
whatever their clocks, and no pulled id moves the local clock more than ``max_drift``
ahead.

Ids that are not believable at all (not a UUIDv7, before 2020, more than a year ahead) never
get here: :mod:`.wire` refuses the bundle holding them, for that author only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete, func, inspect, select

from ..core import schema
from ..core.changes import ROW_ID, TxRecord
from ..core.errors import RemoteFormatError
from ..core.rows import chunks, insert_many
from .packed import packed_of
from .wire import decode_bundle, encode_bundle

if TYPE_CHECKING:
    from ..core.replica import Replica

__all__ = ["count", "first_due", "split", "store", "take_due"]

ahead = schema.ahead
logger = logging.getLogger(__name__)


def _ensure(conn: Connection) -> bool:
    """Whether ``dimple_ahead`` exists (it is made on first use)."""
    return bool(inspect(conn).has_table(ahead.name))


def _newest(tx: TxRecord) -> str:
    packed = packed_of(tx)
    if packed is not None:  # (without expanding its runs)
        return packed.newest
    return max(tx[0], max(map(itemgetter(ROW_ID), tx[2]), default=tx[0]))


def split(replica: Replica, conn: Connection, transactions: Sequence[TxRecord]
          ) -> tuple[list[TxRecord], int]:
    """``transactions`` less those ahead of the horizon, which are stored; returns what to
    merge now and how many changes were kept aside."""
    horizon = replica.clock.horizon(replica.max_drift)
    me = replica.author_id
    now: list[TxRecord] = []
    later: list[TxRecord] = []
    for tx in transactions:
        # our own (healing from our folder) are never held: later local ids follow them
        (now if tx[1] == me or _newest(tx) <= horizon else later).append(tx)
    store(conn, later)
    return now, sum(len(tx[2]) for tx in later)


def store(conn: Connection, transactions: Sequence[TxRecord]) -> None:
    """Keep ``transactions`` aside (again) until they are due."""
    if not transactions:
        return
    if not _ensure(conn):
        ahead.create(conn)
    insert_many(conn, ahead, [(tx[0], tx[1], _newest(tx), len(tx[2]),
                               encode_bundle([tx]).decode("utf-8")) for tx in transactions],
                ignore_existing=True)


def take_due(replica: Replica, conn: Connection) -> list[TxRecord]:
    """The stored transactions no longer ahead of the horizon, removed from the store.

    One that no longer decodes (stored by a build with looser checks) stays stored and
    counted as held, with a warning; the others are handed back."""
    if not _ensure(conn):
        return []
    horizon = replica.clock.horizon(replica.max_drift)
    rows = conn.execute(select(ahead.c.transaction_id, ahead.c.author, ahead.c.body)
                        .where(ahead.c.newest <= horizon)
                        .order_by(ahead.c.transaction_id)).all()
    out: list[TxRecord] = []
    taken: list[str] = []
    for tx_id, author, body in rows:
        try:
            out.extend(decode_bundle(body.encode("utf-8"), author))
        except RemoteFormatError as exc:
            # stored by an earlier build whose checks were looser: kept (nothing is lost,
            # it stays counted as held) and retried at each sync, the others go on
            logger.warning("held transaction %s of author %s no longer reads: %s",
                        tx_id, author, exc)
            continue
        taken.append(tx_id)
    for chunk in chunks(taken):
        conn.execute(delete(ahead).where(ahead.c.transaction_id.in_(chunk)))
    return out


def count(conn: Connection) -> int:
    """How many changes are held ahead."""
    if not _ensure(conn):
        return 0
    total = conn.execute(select(func.coalesce(func.sum(ahead.c.changes), 0))).scalar_one()
    return int(total)


def first_due(conn: Connection) -> str | None:
    """The smallest largest-id of the transactions held ahead (when the first of them will
    be applied, give or take ``max_drift``), or ``None``."""
    if not _ensure(conn):
        return None
    value: str | None = conn.execute(select(func.min(ahead.c.newest))).scalar()
    return value
