"""The external-commit watcher: live queries notice commits made by other processes.

On PostgreSQL, :class:`Watcher` (``db.watch_external()``) listens to the notifications that
triggers on the tracked tables send as writers commit (:mod:`.notify`) and re-runs the live
queries reading the tables other server processes than this engine's wrote. On SQLite it polls
``PRAGMA data_version`` from a daemon thread with its own connection. When the file changed, it
reads the change log (transactions that appeared, pending or folded, and transactions a sync
elsewhere stored with older ids) to find the tables other processes wrote, and asks the
database's live-query registry (:mod:`.registry`) to re-run the queries reading them.
Transactions this engine wrote are recognised as they are inserted (a local commit's pending
row, a merge's transaction rows) and left to ``changes_committed``; a change the log cannot
explain re-runs every live query.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from ..core import schema
from ..core.changelog import id_bytes
from ..core.errors import ConfigurationError, DimpleError
from ..core.rows import chunks
from .notify import LocalBackends, channel_for, install, listen

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine.interfaces import DBAPICursor

    from .registry import Registry

__all__ = ["Watcher"]

logger = logging.getLogger(__name__)

_INSERT_TX = re.compile(
    r"^\s*INSERT\s+(?:OR\s+\w+\s+)?INTO\s+[\"`\[]?(" + schema.transactions.name + "|"
    + schema.pending.name + r")[\"`\]]?\s*\(([^)]*)\)", re.IGNORECASE)
_ID_COLUMN = {schema.transactions.name: "id", schema.pending.name: "transaction_id"}
"""The column of each table an inserted transaction's id is in."""


class Watcher:
    """Polls ``PRAGMA data_version`` of a SQLite file (or listens to PostgreSQL's
    notifications) in a daemon thread (``db.watch_external``) and re-runs the live queries
    reading the tables that other processes' commits wrote.

    Transactions this engine wrote are recognised (their ids are noted as they are inserted)
    and left to ``changes_committed``, so a local commit is never delivered twice. A change
    that the log cannot explain (a write outside tracking) re-runs every live query of the
    database. Lives until :meth:`close` or until the ``DimpleDb`` is gone.
    """

    def __init__(self, registry: Registry, *, interval: float = 0.5) -> None:
        engine = registry.engine
        url = engine.url
        kind = engine.dialect.name
        if kind not in ("sqlite", "postgresql"):
            raise ConfigurationError("watch_external() needs a SQLite database file or "
                                     f"PostgreSQL, not {kind}")
        if kind == "sqlite" and (
                url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
                or str(url.database).startswith("file::memory:")):
            raise ConfigurationError(
                "watch_external() needs a SQLite database file: an in-memory database is "
                "private to its connection")
        if interval <= 0:
            raise ConfigurationError("watch_external(interval=...) must be positive")
        self.interval = interval
        self._engine = engine
        self._registry = registry
        self._lock = threading.Lock()
        self._polled = threading.Condition(self._lock)
        self._polls = 0
        self._local: set[str] = set()  # transaction ids this engine inserted
        self._commits = 0
        self._commit_marks = [0, 0]  # the commit count at the last two polls
        self._version: int | None = None
        self._watermark: str | None = None
        self._cursors: dict[str, str] = {}
        self._log_ok = True
        self._backends: LocalBackends | None = None
        ref = weakref.ref(self)
        if kind == "postgresql":
            self._start_listening(ref)
            return

        _watch_engine(engine, self)
        self._stop = threading.Event()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=_watch, args=(ref, engine, self._stop, interval, ready, failure),
            name="dimpledb-watch-external", daemon=True)
        weakref.finalize(self, self._stop.set)
        self._thread.start()
        if not ready.wait(60) or failure:
            self.close()
            if failure:
                raise failure[0]
            raise DimpleError("watch_external(): the watcher thread did not start")
        self._registry.watchers.add(self)

    def _start_listening(self, ref: weakref.ref[Watcher]) -> None:
        """PostgreSQL: install the notifying triggers and start the listening thread."""
        registry, engine = self._registry, self._engine
        channel = channel_for(registry.replica.author_id)
        with engine.begin() as conn:
            install(conn, list(registry.replica.tracked), channel)
        backends = self._backends = LocalBackends(engine)
        self._stop = threading.Event()
        ready = threading.Event()
        failure: list[BaseException] = []

        def wake(tables: frozenset[str] | None) -> bool:
            w = ref()
            if w is None:
                return False
            if tables is None or tables:
                w._registry.notify(tables)
            with w._polled:
                w._polls += 1
                w._polled.notify_all()
            return True

        self._thread = threading.Thread(
            target=listen, args=(engine, channel, self._stop, self.interval,
                                 lambda: set(backends.pids), wake, ready, failure),
            name="dimpledb-watch-external", daemon=True)
        weakref.finalize(self, _stop_listening, backends, self._stop)
        self._thread.start()
        if not ready.wait(60) or failure:
            self.close()
            if failure:
                raise failure[0]
            raise DimpleError("watch_external(): the listening thread did not start")
        self._registry.watchers.add(self)

    @property
    def polls(self) -> int:
        """How many polls have completed."""
        return self._polls

    def wait_polls(self, n: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``n`` more polls have completed; False on timeout."""
        with self._polled:
            goal = self._polls + n
            return self._polled.wait_for(lambda: self._polls >= goal or self._stop.is_set(),
                                         timeout) and self._polls >= goal

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop polling and release the connection; idempotent."""
        self._stop.set()
        with self._polled:
            self._polled.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        found = _by_engine.get(self._engine)
        if found is not None:
            found.discard(self)
        if self._backends is not None:
            self._backends.remove()
        self._registry.watchers.discard(self)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bookkeeping ------------------------------------------------------------------------
    def _note_insert(self, statement: str, parameters: Any, executemany: bool) -> None:
        m = _INSERT_TX.match(statement)
        if m is None:
            return
        key = _ID_COLUMN[m.group(1).lower()]
        names = [n.strip().strip("\"`[]").lower() for n in m.group(2).split(",")]
        at = names.index(key) if key in names else 0
        rows = parameters if executemany else [parameters]
        ids: list[str] = []
        for row in rows or ():
            value = row.get(key) if isinstance(row, Mapping) else row[at]
            if value is not None:
                ids.append(str(value))
        with self._lock:
            self._local.update(ids)

    def _baseline(self, cur: DBAPICursor) -> None:
        self._version = cur.execute("PRAGMA data_version").fetchone()[0]
        try:
            t, p = schema.transactions.name, schema.pending.name
            self._watermark = cur.execute(
                f"SELECT max(i) FROM (SELECT max(id) AS i FROM {t} "
                f"UNION ALL SELECT max(transaction_id) FROM {p})").fetchone()[0]
            self._cursors = self._read_cursors(cur)
        except sqlite3.Error:
            self._log_ok = False  # no change log: every external commit re-runs everything

    def _read_cursors(self, cur: DBAPICursor) -> dict[str, str]:
        c = schema.cursors.name
        return {r[0]: r[1] for r in cur.execute(f"SELECT author, last_transaction_id FROM {c}")}

    def _poll(self, cur: DBAPICursor) -> None:
        version = cur.execute("PRAGMA data_version").fetchone()[0]
        with self._lock:
            commits = self._commits
            local_recent = commits != self._commit_marks[0]
            self._commit_marks = [self._commit_marks[1], commits]
        if version != self._version:
            tables = self._external_tables(cur) if self._log_ok else None
            self._version = version
            if tables is None:
                if not local_recent:
                    self._registry.notify(None)
            elif tables:
                self._registry.notify(tables)
        with self._polled:
            self._polls += 1
            self._polled.notify_all()

    def _external_tables(self, cur: DBAPICursor) -> frozenset[str] | None:
        """Tables written by transactions that appeared in the log and that this engine did
        not write; ``None`` when no transaction appeared (the log cannot tell). The state
        moves on only once everything was read, so a failed poll is simply retried."""
        t, c, p = schema.transactions.name, schema.changes.name, schema.pending.name
        wm = self._watermark
        # a local transaction is pending until its process folds it, then in t: one
        # statement reads both, so a fold meanwhile cannot hide one
        new = [r[0] for r in cur.execute(
            f"SELECT id FROM {t} WHERE id > ?1 UNION "
            f"SELECT transaction_id FROM {p} WHERE transaction_id > ?1 ORDER BY 1", (wm or "",))]
        cursors = self._read_cursors(cur)
        pulled: list[str] = []  # a sync elsewhere stores pulled transactions with older ids
        for author, last in cursors.items():
            before = self._cursors.get(author)
            if before != last and wm is not None:
                q = f"SELECT id FROM {t} WHERE author = ? AND id <= ?"
                args: tuple[str, ...] = (author, wm)
                if before is not None:
                    q += " AND id > ?"
                    args = (author, wm, before)
                pulled.extend(r[0] for r in cur.execute(q, args))
        candidates = new + pulled
        with self._lock:
            external = [i for i in candidates if i not in self._local]
        tables: set[str] = set()
        for chunk in chunks(external):
            marks = ",".join("?" * len(chunk))
            # the transaction index is partial: its condition lets the query use it (new
            # transactions' rows all hold their values)
            q = (f"SELECT DISTINCT entity_type FROM {c} WHERE transaction_id IN ({marks}) "
                 "AND new_values != ''")
            stored = [id_bytes(i) for i in chunk]  # the log's ids are bytes on SQLite
            tables.update(r[0].lower() for r in cur.execute(q, stored))
            q = f"SELECT tables FROM {p} WHERE transaction_id IN ({marks})"
            for (names,) in cur.execute(q, chunk):
                tables.update(n.lower() for n in json.loads(names))
        self._cursors = cursors
        if new:
            self._watermark = new[-1]
        with self._lock:
            self._local.difference_update(candidates)
            if len(self._local) > 10_000 and self._watermark is not None:
                mark = self._watermark  # rolled-back ones never show up: forget old ids
                self._local = {i for i in self._local if i > mark}
        return frozenset(tables) if candidates else None


def _watch(ref: weakref.ref[Watcher], engine: Engine, stop: threading.Event, interval: float,
           ready: threading.Event, failure: list[BaseException]) -> None:
    """The watcher thread: one dedicated connection, a poll every ``interval``."""
    try:
        raw = engine.raw_connection()
    except BaseException as exc:
        failure.append(exc)
        ready.set()
        return
    try:
        cur = raw.cursor()
        try:
            w = ref()
            if w is None:
                return
            w._baseline(cur)
            raw.rollback()
            del w
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            ready.set()
        while not stop.wait(interval):
            w = ref()
            if w is None:
                return
            try:
                w._poll(cur)
            except Exception:
                logger.warning("watch_external: poll failed; retrying", exc_info=True)
            finally:
                try:
                    raw.rollback()
                except Exception:
                    logger.debug("watch_external: rollback failed", exc_info=True)
            del w
    finally:
        try:
            raw.close()
        except Exception:
            logger.debug("watch_external: closing the connection failed", exc_info=True)


def _stop_listening(backends: LocalBackends, stop: threading.Event) -> None:
    stop.set()
    backends.remove()


# -- the engine listeners: once per engine, never removed ------------------------------------
# An unclosed watcher is collected at any time, maybe while its engine is dispatching an
# event; removing a listener then breaks that dispatch ("deque mutated during iteration").
# So each engine gets its two listeners once, and they look up its live watchers (held in a
# WeakSet, which defers removals while it is iterated).
_by_engine: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Watcher]] = (
    weakref.WeakKeyDictionary())
_install_lock = threading.Lock()


def _watch_engine(engine: Engine, watcher: Watcher) -> None:
    """Send ``engine``'s inserts of transactions and its commits to ``watcher`` too."""
    with _install_lock:
        found = _by_engine.get(engine)
        if found is None:
            found = _by_engine[engine] = weakref.WeakSet()
            _install(engine, found)
        found.add(watcher)


def _install(engine: Engine, watchers: weakref.WeakSet[Watcher]) -> None:
    names = (schema.transactions.name, schema.pending.name)

    def on_cursor(conn: Any, cursor: Any, statement: str, parameters: Any,
                  context: Any, executemany: bool) -> None:
        if watchers and (names[0] in statement or names[1] in statement):
            for w in list(watchers):
                w._note_insert(statement, parameters, executemany)

    def on_commit(conn: Any) -> None:
        for w in list(watchers):
            with w._lock:
                w._commits += 1

    event.listen(engine, "before_cursor_execute", on_cursor)
    event.listen(engine, "commit", on_commit)
