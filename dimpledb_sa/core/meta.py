"""``dimple_meta``, the replica's key/value settings: the only module that reads or writes it.

Keys: ``author_id`` (this database's author, created once), ``clock`` (the clock floor:
every id the database holds is at or below it, see :mod:`.changelog`),
``pushed_through`` (the last local transaction a push uploaded), ``settled_through`` (the
last local transaction whose entities the merge's rules have looked at, see
:mod:`..sync.merge`) and ``history_pruned_before`` (an id: ``prune_history`` may have
dropped superseded changes older than it, so history before it can no longer be viewed or
reverted). Every function works on
the caller's connection, inside the caller's transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, select, update

from .clock import new_id
from .rows import insert_many
from .schema import meta

__all__ = [
    "AUTHOR_ID",
    "CLOCK",
    "PRUNED_BEFORE",
    "PUSHED_THROUGH",
    "SETTLED_THROUGH",
    "author_id",
    "get",
    "put",
    "raise_floor",
    "read_author_id",
    "take_write_lock",
]

AUTHOR_ID = "author_id"
CLOCK = "clock"
PUSHED_THROUGH = "pushed_through"
PRUNED_BEFORE = "history_pruned_before"
SETTLED_THROUGH = "settled_through"


def get(conn: Connection, key: str) -> str | None:
    """The value of ``key``, or ``None``."""
    value: str | None = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return value


def put(conn: Connection, key: str, value: str) -> None:
    """Set ``key`` to ``value``."""
    if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
        insert_many(conn, meta, [(key, value)])


def author_id(conn: Connection) -> str:
    """This database's author id, created (a new UUIDv7) on first use in ``conn``'s
    transaction."""
    found = get(conn, AUTHOR_ID)
    if found is None:
        found = new_id()
        insert_many(conn, meta, [(AUTHOR_ID, found)])
    return found


def read_author_id(engine: Engine) -> str:
    """``author_id`` in a transaction of its own."""
    with engine.begin() as conn:
        return author_id(conn)


def raise_floor(conn: Connection, floor: str | None, newest: str) -> None:
    """Raise the clock floor from ``floor`` (as read in this transaction with
    ``get(conn, CLOCK)``) to ``newest`` when that is higher."""
    if floor is None:
        insert_many(conn, meta, [(CLOCK, newest)])
    elif newest > floor:
        conn.execute(update(meta).where(meta.c.key == CLOCK).values(value=newest))


def take_write_lock(conn: Connection) -> None:
    """Take the database's write lock now (SQLite: RESERVED) with a write that changes
    nothing, so that what the transaction reads next no other writer can change."""
    conn.execute(update(meta).where(meta.c.key == AUTHOR_ID).values(value=meta.c.value))
