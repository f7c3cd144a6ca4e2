"""``dimple.AsyncDimpleDb`` and ``dimple.AsyncSession``: dimpledb_sa for asyncio applications.

A thin async layer over the sync core, as SQLAlchemy's own asyncio extension is over the
ORM. ``AsyncDimpleDb(async_engine, models, ...)`` builds one :class:`~.db.DimpleDb` on
``async_engine.sync_engine``: capture, the change log, the clock, the author id and the
live-query registry are the ones every ``AsyncSession`` on that engine already goes
through (its ``sync_session`` is an ORM ``Session``), so there is one engine, one pool
and one set of engine events (``PRAGMA`` listeners included), and nothing is written
through a second engine that capture would not see.

How the sync core runs: each awaited method calls the ``DimpleDb`` method in a worker
thread of this object's pool, under a greenlet that SQLAlchemy's asyncio layer accepts
(:func:`~.core._compat.call_in_worker_greenlet`); every database call it makes is handed
to the event loop, which runs the driver's coroutine on the driver's own connection, while
everything else (fsspec and S3 I/O, age encryption, JSON, merge planning) stays in the
worker. That is ``AsyncConnection.run_sync`` with the sync code moved off the loop:
``greenlet_spawn`` alone would run the remote I/O on the event loop. The engine's asyncio
pool is made to hand connections to and from the workers on the loop as well
(:func:`~.core._compat.loop_safe_pool`), and its first connect is made on the loop. Live
queries re-run in the same worker threads (their first run too, so ``adb.live()`` returns
at once), and ``adb.start_sync()`` is a task of the running loop whose syncs run there.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Table, inspect
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.ext.asyncio import AsyncSession as _AsyncSession

from .core._compat import call_in_worker_greenlet, loop_safe_pool
from .core.errors import ConfigurationError, DimpleError
from .db import DimpleDb

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from sqlalchemy import MetaData
    from sqlalchemy.sql import Executable

    from .core.changes import Change
    from .core.conflicts import Conflict
    from .core.report import SyncReport
    from .core.tracking import TrackedTable
    from .live.query import LiveQuery
    from .sync.background import AsyncBackgroundSync

__all__ = ["AsyncDimpleDb", "AsyncSession"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _LoopWorkers(Executor):
    """An ``Executor`` for live queries: runs each call in ``pool`` under the greenlet
    bridge to ``loop`` (what ``LiveQuery`` needs to re-run on an async engine)."""

    def __init__(self, pool: Executor, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
               ) -> Future[_T]:
        call = functools.partial(fn, *args, **kwargs)
        return self._pool.submit(call_in_worker_greenlet, self._loop, call)


class AsyncDimpleDb:
    """Tracks the models' tables on an ``AsyncEngine``; see ``docs/API.md``.

    Takes the keywords of :class:`~.db.DimpleDb` (``exclude``, ``remote``, keys, ...), and
    ``workers``: the threads that run the sync core (syncs, history, live-query runs).
    """

    def __init__(self, engine: AsyncEngine, models: Any, *, workers: int = 4,
                 **kw: Any) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"AsyncDimpleDb needs a SQLAlchemy AsyncEngine (create_async_engine), got "
                f"{engine!r}; for an Engine use dimple.DimpleDb")
        if workers < 1:
            raise ConfigurationError(f"workers= must be at least 1: {workers!r}")
        self.engine = engine
        loop_safe_pool(engine.sync_engine)
        self.sync_db = DimpleDb(engine.sync_engine, models, **kw)
        """The :class:`~.db.DimpleDb` on ``engine.sync_engine`` that this wraps (as
        ``AsyncEngine.sync_engine`` wraps an ``Engine``); use it through :meth:`run_sync`."""
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="dimpledb-async")
        self._background: AsyncBackgroundSync | None = None
        self._closed = False
        self._connected = False

    # -- running the sync core -------------------------------------------------------------
    async def run_sync(self, fn: Callable[Concatenate[DimpleDb, _P], _T], *args: _P.args,
                       **kwargs: _P.kwargs) -> _T:
        """``fn(adb.sync_db, *args, **kwargs)`` in a worker thread, its database calls on
        this event loop (``AsyncConnection.run_sync`` for the ``DimpleDb``): e.g.
        ``await adb.run_sync(lambda db: db.history(Todo, todo_id)[-1])``."""
        return await self._offload(functools.partial(fn, self.sync_db, *args, **kwargs))

    async def _offload(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in a worker thread under the greenlet bridge, with the caller's
        contextvars (as ``asyncio.to_thread``)."""
        if self._closed:
            raise DimpleError("this AsyncDimpleDb is closed")
        if not self._connected:  # the engine's first connect (its dialect set-up, under an
            async with self.engine.connect():  # asyncio lock) is made here, on the loop
                self._connected = True
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, context.run, call_in_worker_greenlet,
                                          loop, fn)

    # -- set-up ----------------------------------------------------------------------------
    async def create_all(self, *, models: bool = True) -> None:
        """Create the bookkeeping tables and, unless ``models=False``, the tracked tables."""
        await self.run_sync(DimpleDb.create_all, models=models)

    @property
    def author_id(self) -> str:
        """This database's author id; read from the database by :meth:`create_all`,
        :meth:`sync` and the first captured commit."""
        try:
            return self.sync_db.author_id
        except MissingGreenlet:
            raise DimpleError("the author id has not been read yet: await adb.create_all() "
                              "or adb.sync() first") from None

    @property
    def metadata(self) -> MetaData:
        """The ``MetaData`` of the bookkeeping tables (for Alembic's ``target_metadata``)."""
        return self.sync_db.metadata

    @property
    def tracked(self) -> dict[str, TrackedTable]:
        return self.sync_db.tracked

    def sessionmaker(self, **kw: Any) -> async_sessionmaker[AsyncSession]:
        """An ``async_sessionmaker`` bound to the engine whose sessions are
        :class:`AsyncSession` (for SQLModel models, :class:`dimpledb_sa.sqlmodel.AsyncSession`,
        which also has ``exec()``), with ``info["dimpledb"] = adb``."""
        info = dict(kw.pop("info", None) or {})
        info["dimpledb"] = self
        kw.setdefault("class_", _default_async_session(self.sync_db))
        maker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            bind=self.engine, info=info, **kw)
        return maker

    # -- history, undo, time travel -------------------------------------------------------
    async def history(self, model: Any, entity_id: Any = None) -> list[Change]:
        """Changes of one entity, oldest first: ``history(Model, id)`` or ``history(obj)``."""
        if entity_id is None and not isinstance(model, type | str | Table):
            key = inspect(model).key  # a persistent object's id, read here: no lazy load
            if key is not None:       # in the worker, through a session the app is using
                model, entity_id = type(model), key[1][0]
        return await self.run_sync(DimpleDb.history, model, entity_id)

    async def revert(self, transaction_id: Any) -> str | None:
        """:meth:`DimpleDb.revert <.db.DimpleDb.revert>`: undo one transaction."""
        return await self.run_sync(DimpleDb.revert, transaction_id)

    async def as_of(self, model: Any, entity_id: Any, when: datetime) -> dict[str, Any] | None:
        """:meth:`DimpleDb.as_of <.db.DimpleDb.as_of>`: an entity's values at ``when``."""
        return await self.run_sync(DimpleDb.as_of, model, entity_id, when)

    # -- sync and friends ------------------------------------------------------------------
    async def sync(self, **kw: Any) -> SyncReport:
        """Push, pull and merge (:meth:`DimpleDb.sync <.db.DimpleDb.sync>`, keywords passed
        on); never blocks the event loop. Raises ``SyncError`` as the sync version does.
        Cancelling the await does not stop a sync that has started: it finishes in its
        worker (so its commits and cursors stay consistent)."""
        return await self.run_sync(DimpleDb.sync, **kw)

    async def replay_held(self) -> int:
        """Apply held changes the schema can take now; returns how many were applied."""
        return await self.run_sync(DimpleDb.replay_held)

    async def adopt(self) -> int:
        """Record tracked rows that have no history yet; returns how many rows."""
        return await self.run_sync(DimpleDb.adopt)

    async def snapshot(self) -> str:
        """:meth:`DimpleDb.snapshot <.db.DimpleDb.snapshot>`: push, then write a snapshot."""
        return await self.run_sync(DimpleDb.snapshot)

    async def compact(self) -> int:
        """:meth:`DimpleDb.compact <.db.DimpleDb.compact>`: snapshot, remove covered bundles."""
        return await self.run_sync(DimpleDb.compact)

    async def prune_history(self, older_than: timedelta) -> int:
        """:meth:`DimpleDb.prune_history <.db.DimpleDb.prune_history>`."""
        return await self.run_sync(DimpleDb.prune_history, older_than)

    async def restore_pruned_values(self) -> int:
        """:meth:`DimpleDb.restore_pruned_values <.db.DimpleDb.restore_pruned_values>`."""
        return await self.run_sync(DimpleDb.restore_pruned_values)

    async def conflicts(self) -> list[Conflict]:
        """:meth:`DimpleDb.conflicts`: changes merge could not apply, still unresolved."""
        result: list[Conflict] = await self._offload(self.sync_db.conflicts)
        return result

    def start_sync(self, interval: float = 30.0, **kw: Any) -> AsyncBackgroundSync:
        """Sync every ``interval`` seconds as a task of the running event loop (the options
        of :meth:`DimpleDb.start_sync <.db.DimpleDb.start_sync>`); returns its handle. While
        one runs it is returned and new options are ignored."""
        from .sync.background import AsyncBackgroundSync

        if self._background is None or not self._background.running:
            _ = self.sync_db.remote  # ConfigurationError now when there is no remote
            handle = AsyncBackgroundSync(self.sync_db.sync, self._offload, sender=self.sync_db,
                                         interval=interval, **kw)
            handle.start()
            self._background = handle
        return self._background

    async def stop_sync(self, timeout: float | None = 10.0) -> None:
        """Stop background sync: let a sync in progress finish, wait for the task."""
        if self._background is not None:
            handle, self._background = self._background, None
            await handle.stop(timeout)

    # -- live queries ----------------------------------------------------------------------
    def live(self, statement: Executable, **kw: Any) -> LiveQuery:
        """A live query (``rows``, ``subscribe``, ``async for``), made in the running event
        loop. Its runs happen in the worker threads, the first one too: ``rows`` is ``[]``
        until it has run; ``live = await adb.live(stmt)`` waits for it (and raises its
        error). Subscribers are called in the worker threads (``async for`` gets its rows
        on the loop). ``executor=`` runs them in another executor's threads instead."""
        from .live.query import LiveQuery

        loop = asyncio.get_running_loop()
        pool = kw.pop("executor", None) or self._pool
        return LiveQuery(self.sync_db.live_registry, statement,
                         executor=_LoopWorkers(pool, loop), defer=True, **kw)

    # -- closing ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop background sync and live queries, stop capturing, end the worker threads.
        The engine stays open (it is the application's)."""
        if self._closed:
            return
        await self.stop_sync()
        self._closed = True  # no new calls; those running finish (their database calls need
        await asyncio.to_thread(self._pool.shutdown, wait=True)  # this loop: not blocked here)
        self.sync_db.close()

    async def __aenter__(self) -> AsyncDimpleDb:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncDimpleDb {self.engine.url!r} tables={sorted(self.tracked)}>"


class AsyncSession(_AsyncSession):
    """An ``AsyncSession`` with :meth:`sync`; ``adb.sessionmaker()`` makes them."""

    @property
    def dimpledb(self) -> AsyncDimpleDb:
        adb = self.info.get("dimpledb")
        if not isinstance(adb, AsyncDimpleDb):
            raise ConfigurationError(
                "this session does not know its AsyncDimpleDb: make it with "
                "adb.sessionmaker() or pass info={'dimpledb': adb}")
        return adb

    async def sync(self, **kw: Any) -> SyncReport:
        """Commit pending work, sync (off the event loop), then expire all objects so they
        show merged state (re-select them, ``await session.refresh(obj)``, or use
        ``AsyncAttrs``: an expired attribute cannot load implicitly in asyncio). When the
        sync raises ``SyncError`` (partial success), objects are expired too."""
        adb = self.dimpledb
        await self.commit()
        try:
            return await adb.sync(**kw)
        finally:
            self.expire_all()


def _default_async_session(db: DimpleDb) -> type[_AsyncSession]:
    if db.uses_sqlmodel:
        from .sqlmodel import AsyncSession as SQLModelAsyncSession

        return SQLModelAsyncSession
    return AsyncSession
