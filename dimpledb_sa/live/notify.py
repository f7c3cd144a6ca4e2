"""PostgreSQL's side of ``watch_external()``: a trigger that notifies, and a listener.

:func:`install` creates (once per database schema) the function ``dimple_notify()`` and, on
every tracked table that lacks it, a statement-level trigger ``dimple_notify`` that calls
``pg_notify(channel, table name)`` after each ``INSERT``, ``UPDATE``, ``DELETE`` or
``TRUNCATE``. PostgreSQL delivers a notification when (and only if) the writing transaction
commits, once per table per transaction, and tells which server process sent it: every
writer (a tracked session, a merge, raw SQL, another program) announces what it changed,
with no change to the writers. The channel is ``dimpledb_`` and the database's author id
(:func:`channel_for`), so each tracked database (or schema) has its own.

:func:`listen` is the watcher thread's loop: one connection of its own, outside the pool, in
autocommit mode, ``LISTEN``; each wake-up hands the tables named by notifications from
other server processes than this engine's (:class:`LocalBackends`) to the watcher. It
reconnects after a lost connection and then re-runs everything (notifications sent meanwhile
are lost).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["FUNCTION", "TRIGGER", "LocalBackends", "channel_for", "install", "listen"]

logger = logging.getLogger(__name__)

FUNCTION = "dimple_notify"
TRIGGER = "dimple_notify"

_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], TG_TABLE_NAME);
    RETURN NULL;
END
$$"""


def channel_for(author_id: str) -> str:
    """The notification channel of the database whose author id is ``author_id``."""
    return "dimpledb_" + author_id.replace("-", "")


def install(conn: Connection, tables: Iterable[str], channel: str) -> list[str]:
    """Create the function and the missing triggers (in the caller's transaction); returns
    the tables that got a trigger now. Tables that do not exist are skipped."""
    have = set(conn.execute(text(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = :name AND pg_catalog.pg_table_is_visible(c.oid)"),
        {"name": TRIGGER}).scalars())
    present = set(conn.execute(text(
        "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p') "
        "AND pg_catalog.pg_table_is_visible(c.oid)")).scalars())
    wanted = [t for t in tables if t in present and t not in have]
    if not wanted:
        return []
    conn.exec_driver_sql(_FUNCTION_SQL)
    quote = conn.dialect.identifier_preparer.quote
    for table in wanted:
        conn.exec_driver_sql(
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {quote(table)} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}('{channel}')")
    return wanted


class LocalBackends:
    """The server process ids of an engine's connections (noted at checkout, forgotten when
    they close): notifications they send are this engine's own commits.

    The pool's two listeners are installed once per pool and never removed (a
    ``LocalBackends`` collected while the pool dispatches an event would otherwise break
    that dispatch); they note pids in every live ``LocalBackends`` of the pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pids: set[int] = set()
        _watch_pool(engine, self)

    def remove(self) -> None:
        """Stop noting pids."""
        found = _by_engine.get(self.engine)
        if found is not None:
            found.discard(self)


# keyed by engine: ``engine.dispose()`` makes a new pool, which keeps the old one's listeners
_by_engine: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[LocalBackends]] = (
    weakref.WeakKeyDictionary())
_install_lock = threading.Lock()


def _watch_pool(engine: Engine, backends: LocalBackends) -> None:
    with _install_lock:
        found = _by_engine.get(engine)
        if found is None:
            found = _by_engine[engine] = weakref.WeakSet()
            _install_pool_listeners(engine.pool, found)
        found.add(backends)


def _install_pool_listeners(pool: Any, live: weakref.WeakSet[LocalBackends]) -> None:
    def on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        pid = _pid(dbapi_conn)
        if pid is not None:
            for b in list(live):
                b.pids.add(pid)

    def on_close(dbapi_conn: Any, record: Any) -> None:
        pid = _pid(dbapi_conn)
        if pid is not None:
            for b in list(live):
                b.pids.discard(pid)

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "close", on_close)


def _pid(dbapi_conn: Any) -> int | None:
    info = getattr(dbapi_conn, "info", None)
    pid = getattr(info, "backend_pid", None)
    return pid if isinstance(pid, int) else None


def _connect(engine: Engine, channel: str) -> Any:
    raw = engine.raw_connection()
    conn = raw.driver_connection
    assert conn is not None
    raw.detach()  # ours alone, never back to the pool (it is switched to autocommit)
    conn.rollback()
    conn.autocommit = True
    conn.execute(f'LISTEN "{channel}"')
    return conn


def listen(engine: Engine, channel: str, stop: threading.Event, interval: float,
           local: Callable[[], set[int]], wake: Callable[[frozenset[str] | None], bool],
           ready: threading.Event, failure: list[BaseException]) -> None:
    """The listening loop (see the module docstring). ``wake(tables)`` gets the tables other
    processes committed to (``None``: anything may have changed), after every wait of at
    most ``interval`` seconds (an empty set when nothing came); it returns ``False`` when
    the watcher is gone."""
    try:
        conn = _connect(engine, channel)
    except BaseException as exc:
        failure.append(exc)
        ready.set()
        return
    ready.set()
    try:
        while not stop.is_set():
            try:
                got = list(conn.notifies(timeout=interval, stop_after=1))
                if got:
                    got.extend(conn.notifies(timeout=0))
            except Exception:
                logger.warning("watch_external: the notification connection failed; "
                               "reconnecting", exc_info=True)
                _close(conn)
                conn = _reconnect(engine, channel, stop, interval)
                if conn is None or not wake(None):
                    return
                continue
            mine = local()
            tables = frozenset(n.payload.lower() for n in got if n.pid not in mine)
            if not wake(tables):
                return
    finally:
        _close(conn)


def _reconnect(engine: Engine, channel: str, stop: threading.Event, interval: float) -> Any:
    while not stop.wait(max(interval, 0.5)):
        try:
            return _connect(engine, channel)
        except Exception:
            logger.warning("watch_external: cannot reconnect yet", exc_info=True)
    return None


def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:
        logger.debug("watch_external: closing the connection failed", exc_info=True)
