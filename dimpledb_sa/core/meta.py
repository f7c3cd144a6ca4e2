"""``dimple_meta``, the replica's key/value settings: the only module that reads or writes it.

Keys: ``author_id`` (this database's author, created once; changed only by
:func:`set_author_id`, for ``dimpledb reauthor``), ``clock`` (the clock floor: every id the
database holds is at or below it, see :mod:`.changelog`), ``pushed_through`` (the last local
transaction a push uploaded and saw listed in its manifest), ``push_lease`` (which push may
talk to the remote now, and until when: see :mod:`dimpledb_sa.sync.lease`),
``settled_through`` (the last local transaction whose entities the merge's rules have looked
at, see :mod:`..sync.merge`) and ``history_pruned_before`` (an id: ``prune_history`` may
have dropped superseded changes older than it, so history before it can no longer be viewed
or reverted). Every function works on the caller's connection, inside the caller's
transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, delete, select, update

from .clock import new_id
from .rows import insert_many
from .schema import meta

__all__ = [
    "AUTHOR_ID",
    "CLOCK",
    "PRUNED_BEFORE",
    "PUSHED_THROUGH",
    "PUSH_LEASE",
    "SETTLED_THROUGH",
    "author_id",
    "floor_and_author",
    "get",
    "put",
    "raise_floor",
    "read_author_id",
    "remove",
    "set_author_id",
    "take_write_lock",
]

AUTHOR_ID = "author_id"
CLOCK = "clock"
PUSHED_THROUGH = "pushed_through"
PRUNED_BEFORE = "history_pruned_before"
SETTLED_THROUGH = "settled_through"
PUSH_LEASE = "push_lease"


def get(conn: Connection, key: str) -> str | None:
    """The value of ``key``, or ``None``."""
    value: str | None = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return value


def put(conn: Connection, key: str, value: str) -> None:
    """Set ``key`` to ``value``."""
    if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
        insert_many(conn, meta, [(key, value)])


def remove(conn: Connection, key: str) -> None:
    """Remove ``key`` (nothing happens when it is not set)."""
    conn.execute(delete(meta).where(meta.c.key == key))


def floor_and_author(conn: Connection) -> tuple[str | None, str | None]:
    """The clock floor and the author id, in one query (each ``None`` when not set): what
    every local commit reads, so that a commit never records a stale author id."""
    found = dict(conn.execute(select(meta.c.key, meta.c.value)
                              .where(meta.c.key.in_((CLOCK, AUTHOR_ID)))).all())
    return found.get(CLOCK), found.get(AUTHOR_ID)


def set_author_id(conn: Connection, value: str) -> None:
    """Give the database a new author id (``dimpledb reauthor``; see
    :mod:`dimpledb_sa.sync.reauthor`)."""
    put(conn, AUTHOR_ID, value)


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
