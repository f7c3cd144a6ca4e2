"""Every use of SQLAlchemy's and fsspec's private API, in one place.

Each helper says why the public API does not serve. A SQLAlchemy or fsspec upgrade that
renames one of these breaks this module only (the approach of Alembic's
``util/sqla_compat.py``). Nothing else in the package reaches into ``_``-prefixed names of
those libraries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection, CursorResult, Engine, NestedTransaction
    from sqlalchemy.orm import Session, SessionTransaction
    from sqlalchemy.orm.state import InstanceState
    from sqlalchemy.sql.dml import ValuesBase

__all__ = [
    "compiled_cache",
    "deleted_states",
    "forget_type_impls",
    "has_unflushed_changes",
    "modified_states",
    "owns_lock",
    "result_returns_rows",
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
