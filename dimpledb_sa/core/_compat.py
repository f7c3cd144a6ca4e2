"""Every use of SQLAlchemy's and fsspec's private API, in one place.

Each helper says why the public API does not serve. A SQLAlchemy or fsspec upgrade that
renames one of these breaks this module only (the approach of Alembic's
``util/sqla_compat.py``). Nothing else in the package reaches into ``_``-prefixed names of
those libraries.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import Connection, CursorResult, Engine, NestedTransaction, Table
    from sqlalchemy.orm import Session, SessionTransaction
    from sqlalchemy.orm.state import InstanceState
    from sqlalchemy.sql.dml import ValuesBase

__all__ = [
    "call_in_worker_greenlet",
    "compiled_cache",
    "deleted_states",
    "forget_type_impls",
    "has_sql_expression",
    "has_unflushed_changes",
    "loop_safe_pool",
    "mapped_classes",
    "modified_states",
    "owns_lock",
    "result_returns_rows",
    "root_engine",
    "savepoint_name",
    "session_binds",
    "session_connections",
    "statement_multi_values",
    "statement_values",
    "strip_protocol",
    "surrounding_savepoint",
]


def modified_states(session: Session) -> Iterable[InstanceState[Any]]:
    """The states the identity map marked modified.

    ``session.dirty`` builds a set of *objects* and re-checks each for net changes; capture's
    ``before_flush`` only needs the modified states, as the flush itself reads them.
    """
    return session.identity_map._modified


def deleted_states(session: Session) -> Iterable[InstanceState[Any]]:
    """The states marked for deletion (``session.deleted`` gives objects, not states)."""
    return session._deleted


def has_unflushed_changes(session: Session) -> bool:
    """Whether a flush would do anything: ``Session._is_clean()`` is what ``commit`` asks;
    the public ``new``/``dirty``/``deleted`` build collections and miss nothing it sees."""
    return not session._is_clean()


def statement_multi_values(stmt: ValuesBase) -> list[Any] | None:
    """The rows of a multi-row ``.values([...])`` (no public accessor either)."""
    return getattr(stmt, "_multi_values", None)


def statement_values(stmt: ValuesBase) -> dict[Any, Any] | None:
    """The ``.values(...)`` of an insert/update as given (columns or names -> values).

    There is no public accessor for the values clause of a DML construct.
    """
    values: dict[Any, Any] | None = stmt._values
    return values


def result_returns_rows(result: CursorResult[Any]) -> bool:
    """Whether a result carries rows, without raising on a closed one (``returns_rows``
    raises ``ResourceClosedError`` on results the ORM already consumed)."""
    return bool(getattr(result._metadata, "returns_rows", True))


def compiled_cache(engine: Engine) -> Any:
    """The engine's own statement cache: the ORM's flush compiles into its mappers' caches,
    which is how Core capture tells a flush's statements from the application's."""
    return engine._compiled_cache


def root_engine(bind: Any) -> Any:
    """The ``Engine`` an engine, connection or ``engine.execution_options(...)`` copy (an
    ``OptionEngine``) works through: the copy has no public link to the engine it was made
    from, and capture must treat a session bound to such a copy as bound to the engine (the
    copy shares its pool, dialect and database)."""
    engine = getattr(bind, "engine", bind)
    while True:
        parent = getattr(engine, "_proxied", None)
        if parent is None:
            return engine
        engine = parent


def savepoint_name(tx: NestedTransaction) -> str:
    """The SAVEPOINT name a ``NestedTransaction`` emitted (``rollback_savepoint`` events give
    only the name)."""
    return tx._savepoint


def surrounding_savepoint(tx: NestedTransaction) -> NestedTransaction | None:
    """The savepoint ``tx`` was begun inside (there is no public ``parent`` on Core's
    ``NestedTransaction``)."""
    return tx._previous_nested


def session_connections(tx: SessionTransaction) -> dict[Any, tuple[Connection, Any, Any, Any]]:
    """A session transaction's connections by bind (``SessionTransaction.connection()`` would
    open one; we only look at those it has)."""
    return tx._connections


def owns_lock(lock: threading.RLock) -> bool:
    """Whether the calling thread holds ``lock`` (``RLock`` has no public test for it)."""
    owned = getattr(lock, "_is_owned", None)
    return bool(owned is not None and owned())


def strip_protocol(fs: Any, path: str) -> str:
    """``path`` as ``fs`` names it internally: fsspec's public ``url_to_fs`` strips it only
    for URLs, not for a filesystem object plus a path."""
    return str(fs._strip_protocol(path))


def session_binds(session: Session) -> dict[Any, Any]:
    """The ``binds={...}`` a session was made with: the public ``Session.binds`` of
    SQLAlchemy 2.1, the name-mangled ``__binds`` of 2.0."""
    found = getattr(session, "binds", None)
    if found is None:
        found = session.__dict__.get("_Session__binds")
    return dict(found) if found else {}


def forget_type_impls(dialect: Any) -> None:
    """Drop the dialect's cache of per-type implementations (``dialect._type_memos``), so
    that a changed ``dialect.colspecs`` applies to types it adapted before. There is no
    public way to reset it."""
    memos = getattr(dialect, "_type_memos", None)
    if memos is not None:
        memos.clear()


def has_sql_expression(t: Any, *, bind: bool) -> bool:
    """Whether type ``t`` wraps its SQL: a ``bind_expression`` (``bind``) or a
    ``column_expression``. SQLAlchemy asks ``_has_bind_expression`` /
    ``_has_column_expression`` itself; the public names are the methods, which return
    ``None`` for a column of the base implementation but cannot be called without one."""
    return bool(t._has_bind_expression if bind else t._has_column_expression)


def mapped_classes(table: Table) -> list[type[Any]]:
    """The classes mapped to ``table`` in any registry (for error messages in the user's own
    style). SQLAlchemy lists its registries only privately (``mapperlib._all_registries``);
    a ``MetaData`` does not know the classes mapped to its tables."""
    from sqlalchemy.orm.mapper import _all_registries

    found: list[type[Any]] = []
    for registry in _all_registries():
        found.extend(m.class_ for m in list(registry.mappers) if m.local_table is table)
    return found


# -- running sync SQLAlchemy code on an async engine, off the event loop -----------------------
_T = TypeVar("_T")
_bridge_greenlet: Any = None


def _greenlet_class() -> Any:
    """A greenlet class SQLAlchemy's ``await_()`` accepts: it checks for the marker
    attribute ``__sqlalchemy_greenlet_provider__`` (its own ``_AsyncIoGreenlet`` is private
    and made lazily), then switches to the greenlet's parent with the awaitable."""
    global _bridge_greenlet
    if _bridge_greenlet is None:
        from greenlet import greenlet

        class _Bridge(greenlet):  # type: ignore[misc]
            __sqlalchemy_greenlet_provider__ = True

        _bridge_greenlet = _Bridge
    return _bridge_greenlet


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _run_on(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` on ``loop`` from another thread and wait for its result; raises
    ``RuntimeError`` if the loop is closed or stops running meanwhile (a worker must never
    wait forever for a loop that is gone)."""
    if loop.is_closed():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise RuntimeError("the event loop of this async engine is closed")
    future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), loop)
    idle = 0
    while True:
        try:
            return future.result(timeout=0.5)
        except TimeoutError:
            idle = 0 if loop.is_running() else idle + 1
            if loop.is_closed() or idle >= 2:
                future.cancel()
                raise RuntimeError("the event loop of this async engine stopped while a "
                                   "database call was waiting for it") from None


def call_in_worker_greenlet(loop: asyncio.AbstractEventLoop, fn: Callable[..., _T],
                            *args: Any, **kw: Any) -> _T:
    """Call ``fn`` (sync code using an async engine's ``sync_engine``) in *this* thread,
    which must not be ``loop``'s, and return its result.

    SQLAlchemy's ``greenlet_spawn`` runs such code in a greenlet on the event loop itself,
    so everything it does besides waiting for the driver (file and network I/O, encryption,
    decoding) blocks the loop. This is the same protocol run from a worker thread: ``fn``
    runs in a greenlet marked as SQLAlchemy's, each awaitable its driver hands back through
    ``await_()`` runs on ``loop``, and this thread waits for it, then resumes ``fn`` with its
    result or exception. The driver's connections are thus only ever used on their own
    loop, one awaitable at a time.
    """
    from greenlet import getcurrent

    driver = getcurrent()
    context = _greenlet_class()(fn, driver)
    context.gr_context = driver.gr_context  # fn sees this thread's contextvars (as SQLAlchemy)
    result = context.switch(*args, **kw)
    while not context.dead:
        try:
            value = _run_on(loop, result)
        except BaseException:
            result = context.throw(*sys.exc_info())
        else:
            result = context.switch(value)
    out: _T = result
    return out


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


_loop_safe: dict[type[Any], type[Any]] = {}


def _in_bridge() -> bool:
    from greenlet import getcurrent

    return isinstance(getcurrent(), _greenlet_class())


def _loop_safe_queue() -> type[Any]:
    """SQLAlchemy's ``AsyncAdaptedQueue`` whose non-blocking ``put_nowait``/``get_nowait``,
    called from a worker's bridge greenlet, run on the event loop (through ``await_``)."""
    from sqlalchemy.util import await_only
    from sqlalchemy.util.queue import AsyncAdaptedQueue

    found = _loop_safe.get(AsyncAdaptedQueue)
    if found is None:
        class LoopSafeQueue(AsyncAdaptedQueue):  # type: ignore[type-arg]
            def put_nowait(self, item: Any) -> None:
                if _in_bridge():
                    await_only(_call(super().put_nowait, item))
                else:
                    super().put_nowait(item)

            def get_nowait(self) -> Any:
                if _in_bridge():
                    return await_only(_call(super().get_nowait))
                return super().get_nowait()

        found = _loop_safe[AsyncAdaptedQueue] = LoopSafeQueue
    return found


def loop_safe_pool(engine: Engine) -> None:
    """Make ``engine``'s asyncio connection pool safe to check connections in and out from
    :func:`call_in_worker_greenlet` workers.

    ``AsyncAdaptedQueuePool`` keeps its connections in an ``asyncio.Queue`` and calls its
    non-blocking ``put_nowait``/``get_nowait`` in the caller's thread (blocking waits go
    through ``await_``): on the loop that is SQLAlchemy's design, but from a worker thread a
    task waiting for a connection could be woken late or never (and asyncio's debug mode
    raises). The pool and its queue become subclasses whose non-blocking calls from a
    worker run on the loop; SQLAlchemy has no hook for the queue, and ``Pool.recreate()``
    (``engine.dispose()``) keeps the pool's class, so the change survives it. Other pools
    (``StaticPool``, ``NullPool``) keep no asyncio state and are left alone.
    """
    from sqlalchemy.util.queue import AsyncAdaptedQueue

    pool: Any = engine.pool
    queue = getattr(pool, "_pool", None)
    if not isinstance(queue, AsyncAdaptedQueue):
        return
    safe_queue = _loop_safe_queue()
    if not isinstance(queue, safe_queue):
        queue.__class__ = safe_queue
    cls = type(pool)
    if getattr(cls, "_queue_class", None) is not safe_queue:
        safe_pool = _loop_safe.get(cls)
        if safe_pool is None:
            safe_pool = _loop_safe[cls] = type(f"LoopSafe{cls.__name__}", (cls,),
                                               {"_queue_class": safe_queue})
        pool.__class__ = safe_pool
