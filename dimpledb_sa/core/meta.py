"""``dimple_meta``, the replica's key/value settings: the only module that reads or writes it.

Keys: ``author_id`` (this database's author, created once; changed only by
:func:`set_author_id`, for ``dimpledb reauthor``), ``clock`` (raised by merges to the newest
id pulled, and on databases other than SQLite by every local commit: with the newest log rows
it makes the clock floor, see :mod:`.floor`), ``pushed_through`` (the last local
transaction a push uploaded and saw listed in its manifest), ``push_lease`` (which push may
talk to the remote now, and until when: see :mod:`dimpledb_sa.sync.lease`),
``settled_through`` (the last local transaction whose entities the merge's rules have looked
at, see :mod:`..sync.merge`) and ``history_pruned_before`` (an id: ``prune_history`` may
have dropped superseded changes older than it, so history before it can no longer be viewed
or reverted), ``values_dropped_before`` (an id: ``prune_history`` may have stored winning
changes older than it without their values, see :mod:`.restore`) and ``layout_version``
(the layout of the bookkeeping tables, see :data:`.changelog.LAYOUT_VERSION`). Every
function works on the caller's connection, inside the caller's transaction; writing
``clock`` or ``author_id`` also drops what :mod:`.floor` kept for the connection (:data:`KEPT_KEY`).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, delete, select, update

from .clock import new_id
from .rows import insert_many
from .schema import meta

__all__ = [
    "AUTHOR_ID",
    "CLOCK",
    "KEPT_KEY",
    "LAYOUT_VERSION",
    "PRUNED_BEFORE",
    "PUSHED_THROUGH",
    "PUSH_LEASE",
    "SETTLED_THROUGH",
    "VALUES_DROPPED_BEFORE",
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
VALUES_DROPPED_BEFORE = "values_dropped_before"
LAYOUT_VERSION = "layout_version"

KEPT_KEY = "dimpledb_sa.floor"
"""The ``Connection.info`` key under which :mod:`.floor` keeps the clock floor and author id
it read on a SQLite connection."""


def _changed(conn: Connection, key: str) -> None:
    if key in (CLOCK, AUTHOR_ID):
        conn.info.pop(KEPT_KEY, None)


def get(conn: Connection, key: str, *, for_update: bool = False) -> str | None:
    """The value of ``key``, or ``None``; ``for_update`` locks its row until the end of the
    transaction where the database has row locks (PostgreSQL; SQLite's write lock already
    covers the whole database)."""
    stmt = select(meta.c.value).where(meta.c.key == key)
    if for_update:
        stmt = stmt.with_for_update()
    value: str | None = conn.execute(stmt).scalar()
    return value


def put(conn: Connection, key: str, value: str) -> None:
    """Set ``key`` to ``value``."""
    _changed(conn, key)
    if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
        insert_many(conn, meta, [(key, value)])


def remove(conn: Connection, key: str) -> None:
    """Remove ``key`` (nothing happens when it is not set)."""
    _changed(conn, key)
    conn.execute(delete(meta).where(meta.c.key == key))


def floor_and_author(conn: Connection) -> tuple[str | None, str | None]:
    """``clock`` and the author id, in one query (each ``None`` when not set), their rows
    locked until the transaction ends (PostgreSQL): what :func:`.floor.start` reads."""
    found = dict(conn.execute(select(meta.c.key, meta.c.value)
                              .where(meta.c.key.in_((CLOCK, AUTHOR_ID)))
                              .with_for_update()).all())
    return found.get(CLOCK), found.get(AUTHOR_ID)


def set_author_id(conn: Connection, value: str) -> None:
    """Give the database a new author id (``dimpledb reauthor``; see
    :mod:`dimpledb_sa.sync.reauthor`)."""
    put(conn, AUTHOR_ID, value)


def author_id(conn: Connection) -> str:
    """This database's author id, created (a new UUIDv7) on first use in ``conn``'s
    transaction."""
    found = get(conn, AUTHOR_ID)
    if found is None:  # another connection may be creating it too (PostgreSQL): its wins
        _changed(conn, AUTHOR_ID)
        insert_many(conn, meta, [(AUTHOR_ID, new_id())], ignore_existing=True)
        found = get(conn, AUTHOR_ID)
        assert found is not None
    return found


def read_author_id(engine: Engine) -> str:
    """``author_id`` in a transaction of its own."""
    with engine.begin() as conn:
        return author_id(conn)


def raise_floor(conn: Connection, floor: str | None, newest: str) -> None:
    """Raise the clock floor from ``floor`` (as read in this transaction with
    ``get(conn, CLOCK)``) to ``newest`` when that is higher.

    Never lowers it, even when another transaction raised it since ``floor`` was read
    (PostgreSQL lets commits run side by side; SQLite's write lock serialises them)."""
    _changed(conn, CLOCK)
    if floor is None:
        insert_many(conn, meta, [(CLOCK, newest)], ignore_existing=True)
        floor = ""
    if newest > floor:
        conn.execute(update(meta).where(meta.c.key == CLOCK, meta.c.value < newest)
                     .values(value=newest))


def take_write_lock(conn: Connection) -> None:
    """Take the database's write lock now (SQLite: RESERVED) with a write that changes
    nothing, so that what the transaction reads next no other writer can change.

    On PostgreSQL the write locks the ``author_id`` and ``clock`` rows: other pushes and
    merges wait for it, and so does the log write of every local commit (it reads the clock
    floor ``for_update``), so that no transaction commits with an id below what a push reads
    and no change enters the log while a merge derives rows from it. (A local transaction
    that wrote a row the merge then writes too ends in a deadlock PostgreSQL breaks by
    aborting one of them, never in rows that disagree with the log.)"""
    conn.execute(update(meta).where(meta.c.key.in_([AUTHOR_ID, CLOCK]))
                 .values(value=meta.c.value))
