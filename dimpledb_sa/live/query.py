"""Live queries: results that re-run after the commits that can change them.

:class:`LiveQuery` (``db.live(statement)``) holds the current result of a ``select()`` or
``text()`` statement and re-runs it after each committed transaction that wrote a table it
reads. The replica's :class:`~.registry.Registry` receives ``changes_committed`` and dispatches
by table name, so a commit re-runs only the queries reading what it wrote. The tables a query
reads come from the statement (every ``Table`` in its element tree, relationship joins, and the
mappers of the objects it loaded) and from the database itself: on SQLite the first run is
executed under an authorizer that collects every table read, on PostgreSQL the first run of a
``text()`` statement is followed by its ``EXPLAIN`` plan (views resolve to their base tables
either way; results for ``text()`` are cached per SQL string). A query whose tables cannot be
known re-runs after every commit. Runs of one query are serialized with a dirty flag, so
concurrent commits coalesce and the final state is always delivered; subscribers are called
only when the result changed. Commits made by other processes reach the registry through
:class:`~.watch.Watcher` (``db.watch_external()``). Finding tables and pictures of results is
:mod:`.tables`' job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from ..core.errors import DimpleError
from .tables import (
    ALL_TABLES,
    NOT_LOADED,
    authorizer,
    explain_tables,
    fingerprint,
    found_tables,
    statement_tables,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.sql import Executable

    from .registry import Registry

__all__ = ["ALL_TABLES", "LiveQuery", "Subscription"]

logger = logging.getLogger(__name__)

_END: Any = object()  # the live query was closed (async iteration)


# -- subscriptions ------------------------------------------------------------------------------
class Subscription:
    """A callback subscribed to a :class:`LiveQuery`; ``close()`` stops it."""

    def __init__(self, live: LiveQuery, callback: Callable[[list[Any]], Any],
                 on_end: Callable[[], Any] | None = None) -> None:
        self.live = live
        self.callback = callback
        self._on_end = on_end
        self._lock = threading.RLock()
        self._seen = 0
        self._last: Any = NOT_LOADED
        self.closed = False

    def _deliver(self, version: int, rows: list[Any], fingerprint: Any) -> None:
        with self._lock:
            if self.closed or version <= self._seen:
                return  # stale: a newer result was delivered already
            self._seen = version
            if self._last is not NOT_LOADED and self._last == fingerprint:
                return
            self._last = fingerprint
            try:
                self.callback(rows)
            except Exception:
                logger.exception("a live query callback raised; ignored")

    def _end(self) -> None:
        self.closed = True
        if self._on_end is not None:
            try:
                self._on_end()
            except Exception:
                logger.exception("ending a live query subscription raised; ignored")

    def close(self) -> None:
        """Stop calling back; idempotent."""
        if not self.closed:
            self.closed = True
            self.live._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncRows:
    """``async for rows in live``: the current rows, then each new result (latest only)."""

    def __init__(self, live: LiveQuery) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue

        def push(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody iterates now
                loop.call_soon_threadsafe(queue.put_nowait, item)

        self._live = live
        self._sub = live.subscribe(push, _on_end=lambda: push(_END))
        weakref.finalize(self, self._sub.close)

    def __aiter__(self) -> _AsyncRows:
        return self

    async def __anext__(self) -> list[Any]:
        item = await self._queue.get()
        while item is not _END and not self._queue.empty():
            item = self._queue.get_nowait()  # a slow consumer gets the latest result
        if item is _END:
            self._sub.close()
            if self._live.error is not None:
                raise self._live.error  # the first run failed (``defer=True``)
            raise StopAsyncIteration
        rows: list[Any] = item
        return rows

    async def aclose(self) -> None:
        self._sub.close()


# -- live queries -------------------------------------------------------------------------------
class LiveQuery:
    """The current result of ``statement``, re-run after each commit that can change it.

    ``params``: bound parameters (change them later with :meth:`params`). ``executor``: run
    re-runs and callbacks there instead of in the committing thread. ``tables``: the table
    names the statement reads, instead of finding them out, or :data:`ALL_TABLES` to re-run
    after every commit. ORM objects in ``rows`` are detached snapshots: what the statement
    loaded is there; lazy loads are not available. ``defer``: make the first run too in
    ``executor`` instead of now (async apps: the constructor runs on the event loop, where
    the async engine's SQL cannot run); until it has run, ``rows`` is empty and nothing is
    delivered; ``await live`` (or :meth:`ready`) waits for it and raises its error.
    """

    def __init__(self, registry: Registry, statement: Executable, *,
                 params: Mapping[str, Any] | None = None, executor: Executor | None = None,
                 tables: Iterable[str] | str | None = None, defer: bool = False) -> None:
        self.statement = statement
        self._engine: Engine = registry.engine
        self._params: dict[str, Any] = dict(params or {})
        self._executor = executor
        self._registry = registry
        self._lock = threading.Lock()
        self._dirty = False
        self._running = False
        self._closed = False
        self._unique = False
        self._subs: list[Subscription] = []
        self._rows: list[Any] = []
        self._fp: Any = NOT_LOADED
        self._version = 0
        self._runs = 0
        self._session: Session | None = None
        self._found: set[Any] = set()  # mappers and relationships loaded so far
        self._mapper_tables: set[str] = set()
        self._text_key: str | None = None
        self._learn = False  # ask the database on the next run
        self._static: frozenset[str] | None
        self._learned: frozenset[str] | None = None
        if tables is not None:
            names = [tables] if isinstance(tables, str) else list(tables)
            self._static = (None if names == [ALL_TABLES]
                            else frozenset(t.lower() for t in names))
            self._fixed = True
        else:
            self._fixed = False
            self._static = statement_tables(statement)
            dialect = self._engine.dialect.name
            if dialect == "sqlite" or (dialect == "postgresql"
                                       and isinstance(statement, TextClause)):
                if isinstance(statement, TextClause):
                    self._text_key = statement.text
                    self._learned = self._registry.text_tables.get(statement.text)
                self._learn = self._learned is None
        self._tables: frozenset[str] | None = None
        self.error: BaseException | None = None
        """The error of a deferred first run (the live query is then closed)."""
        self._dirty = self._running = True  # commits from now on wait for the first run
        self._serial = self._registry.add(self)  # unknown tables until the first run
        if defer and executor is not None:
            try:
                self._first = executor.submit(self._first_run)
            except BaseException:
                self.close()
                raise
            return
        self._first = Future()
        try:
            self._drain(initial=True)
        except BaseException:
            self.close()
            raise
        self._first.set_result(None)

    # -- public -----------------------------------------------------------------------------
    @property
    def rows(self) -> list[Any]:
        """The current result: scalars for one selected entity or column, else ``Row``\\ s."""
        return self._rows

    @property
    def tables(self) -> frozenset[str] | None:
        """Lower-case names of the tables the query reads; ``None`` if unknown (re-runs
        after every commit)."""
        return self._tables

    @property
    def run_count(self) -> int:
        """How many times the statement was run (the first run included)."""
        return self._runs

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, callback: Callable[[list[Any]], Any], *,
                  _on_end: Callable[[], Any] | None = None) -> Subscription:
        """Call ``callback(rows)`` now, then after each commit that changes the result."""
        sub = Subscription(self, callback, _on_end)
        with self._lock:
            if self._closed:
                if self.error is not None:
                    raise self.error
                raise DimpleError("this live query is closed")
            self._subs.append(sub)
            version, rows, fp = self._version, self._rows, self._fp
        sub._deliver(version, rows, fp)
        return sub

    def params(self, **params: Any) -> LiveQuery:
        """Change bound parameters (merged into the current ones) and re-run now; calls back
        if the result changed. Returns the live query."""
        with self._lock:
            self._params = {**self._params, **params}
        self._invalidate()
        return self

    def refresh(self) -> None:
        """Re-run now, e.g. after writes that were not tracked."""
        self._invalidate()

    def close(self) -> None:
        """Stop re-running and end every subscription (and ``async for``); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subs, self._subs = self._subs, []
        self._registry.remove(self._serial)
        for sub in subs:
            sub._end()

    def __enter__(self) -> LiveQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[list[Any]]:
        return _AsyncRows(self)

    async def ready(self) -> LiveQuery:
        """Wait until the first run has finished (it is deferred in async apps) and return
        the live query; raises the first run's error."""
        await asyncio.wrap_future(self._first)
        return self

    def __await__(self) -> Generator[Any, None, LiveQuery]:
        """``live = await adb.live(stmt)``: :meth:`ready`."""
        return self.ready().__await__()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._rows)} rows"
        return f"<LiveQuery {state} tables={sorted(self._tables or ['*'])}>"

    # -- running ----------------------------------------------------------------------------
    def _first_run(self) -> None:
        """The first run when deferred (in the executor): its error closes the query."""
        try:
            self._drain(initial=True)
        except BaseException as exc:
            logger.warning("a live query failed its first run: %s: %s", type(exc).__name__, exc)
            self.error = exc
            self.close()
            raise

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _invalidate(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._dirty = True
            if self._running:
                return  # the thread running it now runs it again afterwards
            self._running = True
        if self._executor is None:
            self._drain()
            return
        try:
            self._executor.submit(self._drain).add_done_callback(self._task_done)
        except RuntimeError:
            logger.exception("live query executor refused the re-run; running it here")
            self._drain()

    def _task_done(self, future: Future[None]) -> None:
        if future.cancelled():  # e.g. executor.shutdown(cancel_futures=True)
            with self._lock:
                self._running = False

    def _drain(self, initial: bool = False) -> None:
        """Run while dirty; only one thread at a time (``_running``) runs this query."""
        done = False
        try:
            while True:
                with self._lock:
                    if self._closed or not self._dirty:
                        self._running = False
                        done = True
                        return
                    self._dirty = False
                    params = self._params
                self._run(params, raise_errors=initial)
                initial = False
        finally:
            if not done:
                with self._lock:
                    self._running = False

    def _run(self, params: dict[str, Any], raise_errors: bool) -> None:
        self._runs += 1
        learn = self._learn
        try:
            rows, fp, reads = self._execute(params, learn)
        except Exception:
            if raise_errors:
                raise
            logger.exception("a live query failed to run; keeping its previous result")
            return
        if learn and reads is not None:
            self._learn = False
            self._learned = reads
            if self._text_key is not None:
                self._registry.text_tables[self._text_key] = reads
        self._update_tables()
        if self._version and fp == self._fp:
            return
        with self._lock:
            self._version += 1
            version = self._version
            self._rows, self._fp = rows, fp
            subs = list(self._subs)
        for sub in subs:
            sub._deliver(version, rows, fp)

    def _update_tables(self) -> None:
        if self._fixed:
            tables = self._static
        elif self._learned is not None:
            tables = self._learned | (self._static or frozenset()) | self._mapper_tables
        elif self._static is not None:
            tables = self._static | self._mapper_tables
        else:
            tables = None
        if tables != self._tables or self._version == 0:
            self._tables = tables
            self._registry.set_tables(self._serial, tables)

    def _execute(self, params: dict[str, Any], learn: bool
                 ) -> tuple[list[Any], Any, frozenset[str] | None]:
        reads: set[str] | None = None
        session = self._session
        if session is None:  # one per live query, reused: runs never overlap
            session = self._session = Session(self._engine)
        try:
            target: sqlite3.Connection | None = None
            if learn:
                dbapi = session.connection().connection.driver_connection
                if isinstance(dbapi, sqlite3.Connection):
                    target = dbapi
                    reads = set()
                    target.set_authorizer(authorizer(reads))
            try:
                rows = self._fetch(session, params)
            finally:
                if target is not None:
                    target.set_authorizer(None)
            if learn and target is None and isinstance(self.statement, TextClause):
                planned = explain_tables(session, self.statement, params)
                if planned is None:
                    self._learn = False  # the plan cannot tell: re-run after every commit
                else:
                    reads = set(planned)
            known = len(self._found)
            fp = fingerprint(session, rows, self._found)
            if len(self._found) != known:
                self._mapper_tables = found_tables(self._found)
        finally:
            session.close()  # releases the connection: none is held between runs
        return rows, fp, (frozenset(reads) if reads is not None else None)

    def _fetch(self, session: Session, params: dict[str, Any]) -> list[Any]:
        for _ in range(2):
            result = session.execute(self.statement, params or None)
            single = len(result.keys()) == 1
            if self._unique:
                result = result.unique()
            try:
                return list(result.scalars().all() if single else result.all())
            except sa_exc.InvalidRequestError as exc:
                if self._unique or "unique()" not in str(exc):
                    raise
                self._unique = True  # joined eager loads of collections need uniquing
        raise AssertionError("unreachable")


