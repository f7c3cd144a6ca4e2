"""Capture of Core DML on tracked tables: ``connection.execute(insert/update/delete(table))``.

Opt-in, per engine: ``DimpleDb(create_engine(url).execution_options(dimpledb_sa_capture=True),
Base)``. Without it only ORM writes are captured (:mod:`.unit_of_work`), and Core
statements and raw SQL write tracked tables without history (``db.adopt()`` records such rows
later). With it, engine events see every statement; an ``Insert``, ``Update`` or ``Delete``
whose table is tracked is recorded like :mod:`.statements` records ORM-enabled ones: the
keys and old values are read before it, the new values after it, on the same connection and
in the same transaction. Still not captured: raw SQL (``text()``, ``exec_driver_sql``),
statements the ORM runs itself (a flush, an ORM-enabled statement: :mod:`.unit_of_work`
records those; the ORM compiles its flush into a cache of its own, so a statement run with a
``compiled_cache`` other than the engine's is taken for one), writes made with
``dimpledb_sa_capture=False`` on the statement or the connection, and writes made while the
thread holds ``db.sync_lock`` (dimpledb_sa's own sync, merge, held-change replay, adoption).

Where the changes go: a statement on a connection an ORM session is using joins that
session's transaction (and its savepoints, commit and signal). Otherwise its changes are
written to the log at once, on the statement's connection, as a log transaction of their
own: they commit or roll back with the data. ``changes_committed`` for those is sent after
the connection's transaction committed, when the connection goes back to the pool or begins
its next transaction (the engine has no after-commit event); a rolled-back savepoint takes
its changes out of the signal, as the database takes them out of the log. The engine's
listeners are registered in :mod:`.listeners`, which calls the handlers here by the name
of the event they handle.
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, NestedTransaction, select
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.dml import Delete, Insert, Update

from ..core._compat import (
    compiled_cache,
    owns_lock,
    savepoint_name,
    session_connections,
    statement_multi_values,
    statement_values,
    surrounding_savepoint,
)
from ..core.changelog import Group, PackedRow, write_local
from ..core.errors import DimpleError
from ..core.restore import materialize
from ..core.rows import fetch_rows
from ..core.tracking import TrackedTable
from .statements import UNKNOWN, literal_value, row_groups, unique_keys

if TYPE_CHECKING:
    from .unit_of_work import Capture

__all__ = ["OPTION", "CoreCapture"]

_serials = itertools.count(1)

OPTION = "dimpledb_sa_capture"
"""Execution option: ``True`` on the engine captures its Core DML; ``False`` on a statement or
connection leaves its writes uncaptured."""


class _Statement:
    """What ``before_execute`` learnt about one tracked statement, for ``after_execute``."""

    __slots__ = ("before", "elem", "keys", "kind", "tt")

    def __init__(self, elem: Any, tt: TrackedTable, kind: str, keys: list[str] | None,
                 before: dict[str, dict[str, Any]]) -> None:
        self.elem = elem
        self.tt = tt
        self.kind = kind
        self.keys = keys
        self.before = before


class _ConnState:
    """Per connection: statements in flight, rows written in the open transaction (with the
    savepoint they were written in), committed rows awaiting the signal."""

    __slots__ = ("committed", "inflight", "written")

    def __init__(self) -> None:
        self.inflight: list[_Statement] = []
        self.written: list[tuple[NestedTransaction | None, list[PackedRow]]] = []
        self.committed: list[PackedRow] = []


class CoreCapture:
    """Engine listeners recording Core DML on one ``DimpleDb``'s tracked tables."""

    def __init__(self, capture: Capture) -> None:
        self._capture = weakref.ref(capture)
        self.replica = capture.replica
        self.engine = capture.engine
        self.tracked = capture.tracked
        self._key = f"dimpledb_sa.core_capture.{next(_serials)}"  # never reused, unlike id()
        self._sessions: weakref.WeakKeyDictionary[Connection, weakref.ref[Session]] = (
            weakref.WeakKeyDictionary())

    # -- helpers ---------------------------------------------------------------------------
    def _state(self, conn: Connection, create: bool = True) -> _ConnState | None:
        info = conn.info
        st: _ConnState | None = info.get(self._key)
        if st is None and create:
            st = info[self._key] = _ConnState()
        return st

    def _tracked(self, elem: Any) -> tuple[TrackedTable, str] | None:
        if isinstance(elem, Insert):
            kind = "insert"
        elif isinstance(elem, Update):
            kind = "update"
        elif isinstance(elem, Delete):
            kind = "delete"
        else:
            return None
        table = elem.table
        tt = self.tracked.get(getattr(table, "name", ""))
        if tt is None or tt.table is not table:
            return None
        return tt, kind

    def _skipped(self, conn: Connection, elem: Any, opts: Any) -> bool:
        if opts.get(OPTION) is not True or elem.get_execution_options().get(OPTION) is False:
            return True  # not opted in, or opted out (the statement's own option first)
        if any(k.startswith("_sa_orm_") for k in opts):
            return True  # an ORM-enabled statement run by a session: bulk.py records it
        cache = opts.get("compiled_cache")
        if cache is not None and cache is not compiled_cache(conn.engine):
            return True  # the ORM's flush (it compiles into its mapper's own cache)
        return owns_lock(self.replica.sync_lock)

    # -- statements ------------------------------------------------------------------------
    def before_execute(self, conn: Connection, elem: Any, multiparams: Any, params: Any,
                       opts: Any) -> None:
        found = self._tracked(elem)
        if found is None or self._skipped(conn, elem, opts):
            return
        tt, kind = found
        rows: list[dict[str, Any]] = list(multiparams) if multiparams else (
            [params] if params else [])
        keys = (_insert_keys(elem, tt, rows) if kind == "insert"
                else _targets(conn, elem, tt, rows))
        if keys and (kind != "insert" or getattr(elem, "_post_values_clause", None)
                     is not None):  # before it changes rows (an upsert may): core.restore
            materialize(conn, tt.name, keys)
        before = fetch_rows(conn, tt, keys) if keys else {}
        st = self._state(conn)
        assert st is not None
        st.inflight.append(_Statement(elem, tt, kind, keys, before))

    def after_execute(self, conn: Connection, elem: Any, result: Any) -> None:
        st = self._state(conn, create=False)
        if st is None:
            return
        for i in range(len(st.inflight) - 1, -1, -1):
            if st.inflight[i].elem is elem:
                s = st.inflight[i]
                del st.inflight[i:]  # and any left behind by statements that failed
                break
        else:
            return
        keys = s.keys
        if s.kind == "insert":
            try:
                keys = unique_keys(r[0] for r in result.inserted_primary_key_rows)
            except Exception:
                keys = s.keys
            if not keys:
                return
        assert keys is not None
        if s.kind == "delete":
            after = fetch_rows(conn, s.tt, keys, [s.tt.pk_name]) if keys else {}
        else:
            after = fetch_rows(conn, s.tt, keys)
        groups = row_groups(s.tt, keys, s.before, after, s.kind == "delete")
        if groups:
            self._record(conn, st, groups)

    def _record(self, conn: Connection, st: _ConnState, groups: list[Group]) -> None:
        cap = self._capture()
        if cap is None:
            return
        session_ref = self._sessions.get(conn)
        session = session_ref() if session_ref is not None else None
        if session is not None:
            bind = _session_bind(session.get_transaction(), conn)
            if bind is not None:
                cap.record(session, bind, groups)
                return
        st.written.append((conn.get_nested_transaction(), write_local(self.replica, conn, groups)))

    # -- transactions ----------------------------------------------------------------------
    def after_begin(self, session: Session, connection: Connection) -> None:
        """A session began using ``connection`` (of our engine)."""
        self._sessions[connection] = weakref.ref(session)

    def rollback_savepoint(self, conn: Connection, name: str) -> None:
        st = self._state(conn, create=False)
        if st is None or not st.written:
            return
        target = conn.get_nested_transaction()
        while target is not None and savepoint_name(target) != name:
            target = surrounding_savepoint(target)
        if target is not None:
            st.written = [w for w in st.written if not _within(w[0], target)]

    def commit(self, conn: Connection) -> None:
        st = self._state(conn, create=False)
        if st is not None:
            for _, rows in st.written:
                st.committed.extend(rows)
            st.written.clear()
            st.inflight.clear()

    def rollback(self, conn: Connection) -> None:
        st = self._state(conn, create=False)
        if st is not None:
            st.written.clear()
            st.inflight.clear()

    def announce(self, info: dict[Any, Any]) -> None:
        """Send the signal for what committed on a connection (``info``: its ``info`` dict)
        since; called when it begins again and when it goes back to the pool."""
        st: _ConnState | None = info.get(self._key)
        if st is None or not st.committed:
            return
        rows, st.committed = st.committed, []
        self.replica.committed_local(rows)


def _within(tx: NestedTransaction | None, ancestor: NestedTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = surrounding_savepoint(tx)
    return False


def _session_bind(tx: SessionTransaction | None, conn: Connection) -> Any:
    """The bind under which the session's transaction uses ``conn``, if it does."""
    if tx is None:
        return None
    for bind, entry in session_connections(tx).items():
        if entry[0] is conn:
            return bind
    return None


def _insert_keys(elem: Any, tt: TrackedTable, rows: list[dict[str, Any]]) -> list[str] | None:
    """The keys an insert writes when they are known beforehand (``None``: read them from
    the result); raises when they cannot be known at all."""
    pk = tt.pk
    hint = (f"cannot record this INSERT into tracked table {tt.name!r}: give every row its "
            f"key (or a Python-side default for {pk.name!r}), or execute it with "
            f"execution_options(dimpledb_sa_capture=False)")
    default = pk.default
    has_default = default is not None and callable(getattr(default, "arg", None))
    if getattr(elem, "select", None) is not None:
        raise DimpleError(hint)
    multi = statement_multi_values(elem)
    if multi:
        keys: list[Any] = []
        for row in (r for group in multi for r in group):
            v = UNKNOWN
            for col, val in (row.items() if isinstance(row, dict) else ()):
                if getattr(col, "name", col) == pk.name:
                    v = literal_value(val)
            if v is UNKNOWN or v is None:
                raise DimpleError(hint)
            keys.append(v)
        return unique_keys(keys)
    values = statement_values(elem) or {}
    fixed = UNKNOWN
    for col, val in values.items():
        if getattr(col, "name", col) == pk.name:
            fixed = literal_value(val)
            if fixed is UNKNOWN:
                raise DimpleError(hint)
    if fixed is not UNKNOWN and fixed is not None:
        return [str(fixed)]
    keys = [r.get(pk.key, r.get(pk.name)) for r in rows] if rows else [None]
    if any(k is None for k in keys):
        if not has_default:
            raise DimpleError(hint)
        known = [k for k in keys if k is not None]
        return unique_keys(known) or None
    return unique_keys(keys)


def _targets(conn: Connection, elem: Any, tt: TrackedTable,
             rows: list[dict[str, Any]]) -> list[str]:
    """The keys of the rows an UPDATE or DELETE may touch."""
    where = elem.whereclause
    q = select(tt.pk) if where is None else select(tt.pk).where(where)
    if not rows:
        return unique_keys(conn.execute(q).scalars())
    keys: list[Any] = []
    for p in rows:
        keys.extend(conn.execute(q, p).scalars())
    return unique_keys(keys)


