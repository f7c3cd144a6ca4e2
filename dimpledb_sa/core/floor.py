"""The clock floor and the author id a local commit starts from, and how they are kept.

Every id the database holds is at or below its *clock floor*: the higher of
``dimple_meta.clock`` (see :mod:`.meta`; every fold, merge and upgrade of the indexed log
raises it to the newest id it stored) and the last id of the newest pending transaction. A
local commit (:func:`.changelog.write_local`) reads the floor and the author id with
:func:`start`, observes the floor before it issues ids, records the author id as stored now
(``dimpledb reauthor`` may have changed it), and tells :func:`issued` the last id it issued.

On PostgreSQL (and any database but SQLite) both are read on every commit ``FOR UPDATE`` and
``dimple_meta.clock`` is raised to the last id issued: two workers then never issue ids below
each other's floor. On SQLite the database's write lock, held from the flush's first write
to the commit, already serialises commits, and a commit's pending row holds the ids it
issued, so ``dimple_meta.clock`` is not written per commit (merges still raise it). The floor
and the author are read once per DBAPI connection and kept in ``Connection.info`` (which
follows the DBAPI connection through the pool) with ``PRAGMA data_version``, which changes
when another connection, of any process, commits: only then are they read again (a reauthor
made elsewhere is seen at the next commit). :mod:`.meta` drops what a connection kept when
it writes ``clock`` or ``author_id`` on it. A transaction that rolls back after
:func:`issued` raised the kept floor leaves it above the stored one, which only keeps the
clock where it already is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from . import meta, schema
from .pending import last_id

__all__ = ["issued", "start"]

_KEY = meta.KEPT_KEY


def start(conn: Connection) -> tuple[str | None, str | None]:
    """The clock floor and the author id (each ``None`` when there is none yet) as ``conn``'s
    transaction sees them; on PostgreSQL their rows stay locked until the transaction ends."""
    if conn.dialect.name != "sqlite":
        return meta.floor_and_author(conn)
    dbapi = conn.connection.dbapi_connection
    version = _data_version(dbapi)
    kept: list[Any] | None = conn.info.get(_KEY)
    if kept is not None and kept[0] is dbapi and kept[1] == version:
        return kept[2], kept[3]
    floor, author = meta.floor_and_author(conn)
    last = _newest_pending(conn)
    if last is not None and (floor is None or last > floor):
        floor = last
    conn.info[_KEY] = [dbapi, version, floor, author]
    return floor, author


def issued(conn: Connection, floor: str | None, last: str, author: str) -> None:
    """Note that ``conn``'s transaction issued ids up to ``last`` for ``author``, after
    :func:`start` gave ``floor``."""
    if conn.dialect.name != "sqlite":
        meta.raise_floor(conn, floor, last)
        return
    kept: list[Any] | None = conn.info.get(_KEY)
    if kept is not None and kept[0] is conn.connection.dbapi_connection:
        if kept[2] is None or last > kept[2]:
            kept[2] = last
        kept[3] = author


def _data_version(dbapi: Any) -> int:
    """SQLite's ``PRAGMA data_version``, read on the DBAPI connection (a counter of the
    connection, not a statement of the application's)."""
    cur = dbapi.cursor()
    try:
        cur.execute("PRAGMA data_version")
        version: int = cur.fetchone()[0]
    finally:
        cur.close()
    return version


def _newest_pending(conn: Connection) -> str | None:
    """The last id the newest pending transaction issued."""
    p = schema.pending
    found = conn.execute(select(p.c.transaction_id, p.c.body).order_by(p.c.seq.desc())
                         .limit(1)).first()
    if found is None or not found[1]:
        return None
    return last_id(found[0], found[1])
