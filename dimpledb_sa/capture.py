"""Change capture: ORM session events -> attribute-level change rows in the same transaction.

One :class:`Capture` per ``DimpleDb`` listens on the ``Session`` class itself, so every ORM
session that writes a tracked table through the database's engine is captured (the
application's own sessionmakers, ``scoped_session`` and ``AsyncSession`` included).

- ``before_flush``: for dirty objects whose previous value of a changed attribute was never
  loaded (expired or deferred), fetch the old values with one ``SELECT`` per table.
- ``after_flush``: history still shows the pre-flush state; turn the flushed inserts,
  updates and deletes (ORM cascades and orphans included, via the flush's own state list)
  into change rows, issue their ids from the clock in one batch and write them with one
  ``executemany`` on the flush's connection. The rows live and die with the transaction.
- ``do_orm_execute``: ORM-enabled ``insert``/``update``/``delete`` statements: the rows
  they touch are read before and after and recorded the same way.
- ``after_soft_rollback``: a rolled-back SAVEPOINT forgets the rows it wrote (the database
  drops them itself); ``after_commit``: the committed rows go to ``changes_committed``.

Per-session state lives in ``session.info``; listeners hold the ``Capture`` weakly.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.attributes import NO_VALUE, instance_state
from sqlalchemy.orm.state import InstanceState

from .errors import DimpleError
from .log import Group, PackedRow, expand_all, json_array, write_local
from .tracking import MapperPlan, TrackedTable, mapper_plan

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Mapper

    from .db import DimpleDb

__all__ = ["Capture", "fetch_rows"]

_MISSING: Any = object()  # a new value the flush expired: read back from the database

_CHUNK = 500


class _Pending:
    """Per session (and per DimpleDb): change rows of the open transaction, not yet written.

    ``entries`` pairs each flush's rows with the session transaction (savepoint) it ran in,
    so that rolling back a savepoint forgets exactly its rows. ``old`` carries old values
    fetched in ``before_flush`` to ``after_flush``; ``rows`` the rows written at commit.
    """

    __slots__ = ("entries", "mapper", "old", "rows")

    def __init__(self) -> None:
        self.entries: list[tuple[SessionTransaction, list[Group]]] = []
        self.old: dict[InstanceState[Any], dict[str, Any]] = {}
        self.mapper: Mapper[Any] | None = None
        self.rows: list[PackedRow] = []


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def fetch_rows(conn: Connection, tt: TrackedTable, keys: Iterable[Any],
               columns: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Current values of ``columns`` (default: all) for the rows whose key is in ``keys``."""
    cols = [tt.table.c[c] for c in (columns or tt.table.c.keys())]
    out: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(list(keys)):
        stmt = select(tt.pk, *cols).where(tt.pk.in_(chunk))
        for row in conn.execute(stmt):
            out[str(row[0])] = {c.name: row[i + 1] for i, c in enumerate(cols)}
    return out


class Capture:
    """Session listeners recording the changes of one ``DimpleDb``'s tracked tables."""

    def __init__(self, db: DimpleDb) -> None:
        self._db = weakref.ref(db)
        self.engine = db.engine
        self.tracked = db.tracked
        self._plans: dict[Mapper[Any], MapperPlan | None] = {}
        self._listeners: list[tuple[str, Callable[..., Any]]] = []
        self._key = f"dimpledb_sa.capture.{id(self)}"

    # -- registration ----------------------------------------------------------------------
    def install(self) -> None:
        if self._listeners:
            return
        ref = weakref.ref(self)

        def bound(name: str) -> Callable[..., Any]:
            def listener(*args: Any, **kw: Any) -> Any:
                cap = ref()
                if cap is None:
                    return None
                return getattr(cap, "_on_" + name)(*args, **kw)

            return listener

        for name in ("before_flush", "after_flush", "before_commit", "after_commit",
                     "after_soft_rollback", "do_orm_execute"):
            fn = bound(name)
            event.listen(Session, name, fn)
            self._listeners.append((name, fn))
        weakref.finalize(self, _remove_all, list(self._listeners))

    def remove(self) -> None:
        _remove_all(self._listeners)
        self._listeners.clear()

    # -- helpers ---------------------------------------------------------------------------
    def plan(self, mapper: Mapper[Any]) -> MapperPlan | None:
        try:
            return self._plans[mapper]
        except KeyError:
            p = self._plans[mapper] = mapper_plan(mapper, self.tracked)
            return p

    def _ours(self, session: Session, mapper: Mapper[Any]) -> bool:
        bind = session.get_bind(mapper)
        return getattr(bind, "engine", bind) is self.engine

    def _pending(self, session: Session, create: bool = True) -> _Pending | None:
        p: _Pending | None = session.info.get(self._key)
        if p is None and create:
            p = session.info[self._key] = _Pending()
        return p

    # -- flush -----------------------------------------------------------------------------
    def _on_before_flush(self, session: Session, flush_context: UOWTransaction,
                         instances: Any) -> None:
        missing: dict[MapperPlan, dict[str, InstanceState[Any]]] = defaultdict(dict)
        for obj in session.dirty:
            state = instance_state(obj)
            if not state.committed_state:
                continue
            plan = self.plan(state.mapper)
            if plan is None:
                continue
            keys = {k for k, _, _ in plan.attrs}
            if any(v is NO_VALUE and k in keys for k, v in state.committed_state.items()):
                pk = state.dict.get(plan.pk_key, NO_VALUE)
                if pk is NO_VALUE and state.key is not None:
                    pk = state.key[1][0]
                if pk is not NO_VALUE and self._ours(session, state.mapper):
                    missing[plan][str(pk)] = state
        if not missing:
            return
        pending = self._pending(session)
        assert pending is not None
        for plan, states in missing.items():
            conn = session.connection(bind_arguments={"mapper": next(iter(states.values()))
                                                      .mapper})
            found = fetch_rows(conn, plan.tracked, states.keys())
            for pk, state in states.items():
                row = found.get(pk)
                if row is not None:
                    pending.old[state] = {k: row[c] for k, c, _ in plan.attrs}

    def _on_after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        groups: list[Group] = []
        append = groups.append
        pending = self._pending(session, create=False)
        old_loaded = pending.old if pending is not None else {}
        refetch: dict[MapperPlan, dict[str, Group]] = defaultdict(dict)
        conn_mapper: Mapper[Any] | None = None
        plans: dict[Mapper[Any], MapperPlan | None] = {}
        for state, (isdelete, listonly) in flush_context.states.items():
            if listonly:
                continue
            mapper = state.mapper
            try:
                plan = plans[mapper]
            except KeyError:
                plan = self.plan(mapper)
                if plan is not None and not self._ours(session, mapper):
                    plan = None
                plans[mapper] = plan
            if plan is None:
                continue
            conn_mapper = mapper
            dict_ = state.dict
            pk = dict_.get(plan.pk_key, NO_VALUE)
            if pk is NO_VALUE:
                if state.key is None:
                    raise DimpleError(f"a new {plan.name!r} row has no key after flush")
                pk = state.key[1][0]
            eid = str(pk)
            if isdelete:
                append([plan.name, eid, plan.pk_names_json, json_array([plan.pk_encode(pk)]),
                        [None]])
            elif state.key is None:  # an insert: every column, the key first
                news = [plan.pk_encode(pk)]
                missing = False
                for key, enc in plan.value_encoders:
                    v = dict_.get(key, NO_VALUE)
                    if v is NO_VALUE:
                        news.append(_MISSING)
                        missing = True
                    else:
                        news.append(enc(v))
                group = [plan.name, eid, plan.insert_names_json, plan.insert_olds_json, news]
                if missing:
                    refetch[plan][eid] = group
                append(group)
            else:
                committed = state.committed_state
                if not committed:
                    continue
                old_row = old_loaded.get(state)
                names: list[str] = []
                olds: list[str | None] = []
                news = []
                expired = False
                for key, col, codec in plan.attrs:
                    if key not in committed:
                        continue
                    if key == plan.pk_key:
                        raise DimpleError(
                            f"changing the primary key of a tracked {plan.name!r} row is not "
                            "supported: delete it and insert a new row instead"
                        )
                    old = committed[key]
                    if old is NO_VALUE:
                        old = old_row.get(key) if old_row is not None else None
                    new = dict_.get(key, NO_VALUE)
                    enc_old = codec.encode(old)
                    if new is NO_VALUE:  # expired by the flush (a SQL expression was set)
                        enc_new = _MISSING
                        expired = True
                    else:
                        enc_new = codec.encode(new)
                        if enc_new == enc_old:
                            continue
                    names.append(col)
                    olds.append(enc_old)
                    news.append(enc_new)
                if names:
                    group = [plan.name, eid, names, olds, news]
                    if expired:
                        refetch[plan][eid] = group
                    append(group)
        if pending is not None:
            pending.old.clear()
        if not groups or conn_mapper is None:
            return
        if refetch:
            conn = session.connection(bind_arguments={"mapper": conn_mapper})
            _fill(conn, refetch)
            groups = [g for g in groups if g[4]]
        self._record(session, conn_mapper, groups)

    def _record(self, session: Session, mapper: Mapper[Any], groups: list[Group]) -> None:
        pending = self._pending(session)
        assert pending is not None
        current = session.get_nested_transaction() or session.get_transaction()
        assert current is not None
        pending.mapper = mapper
        pending.entries.append((current, groups))

    # -- transaction end -------------------------------------------------------------------
    def _on_before_commit(self, session: Session) -> None:
        if session.get_nested_transaction() is not None:
            return  # a savepoint is being released: rows stay buffered with the outer one
        pending: _Pending | None = session.info.get(self._key)
        if pending is None and session._is_clean():
            return
        session.flush()  # the commit's own flush comes after this hook: do it now
        pending = session.info.get(self._key)
        if pending is None or not pending.entries or pending.mapper is None:
            return
        db = self._db()
        if db is None:
            return
        groups = [g for _, batch in pending.entries for g in batch]
        pending.entries.clear()
        conn = session.connection(bind_arguments={"mapper": pending.mapper})
        pending.rows = write_local(db, conn, groups)

    def _on_after_commit(self, session: Session) -> None:
        pending: _Pending | None = session.info.pop(self._key, None)
        if pending is None or not pending.rows:
            return
        db = self._db()
        if db is not None:
            rows = pending.rows
            db.committed(frozenset(r[2] for r in rows), lambda: db.to_changes(expand_all(rows)),
                         "local")

    def _on_after_soft_rollback(self, session: Session,
                                previous_transaction: SessionTransaction) -> None:
        pending: _Pending | None = session.info.get(self._key)
        if pending is None:
            return
        if previous_transaction.parent is None:
            session.info.pop(self._key, None)
        elif previous_transaction.nested:
            pending.entries = [e for e in pending.entries
                               if not _within(e[0], previous_transaction)]

    # -- ORM-enabled INSERT / UPDATE / DELETE statements ------------------------------------
    def _on_do_orm_execute(self, state: ORMExecuteState) -> Any:
        if not (state.is_insert or state.is_update or state.is_delete):
            return None
        mapper = state.bind_mapper
        if mapper is None:
            return None
        plan = self.plan(mapper)
        if plan is None or not self._ours(state.session, mapper):
            return None
        from .bulk import run_bulk

        return run_bulk(self, state, plan)


def _fill(conn: Connection, refetch: dict[MapperPlan, dict[str, Group]]) -> None:
    """Replace ``_MISSING`` new values with the values read back after the flush; drop
    update entries whose read-back value equals the old one."""
    for plan, by_id in refetch.items():
        found = fetch_rows(conn, plan.tracked, by_id.keys())
        codecs = plan.tracked.codecs
        for eid, group in by_id.items():
            row = found.get(eid, {})
            is_insert = isinstance(group[2], str)
            names: list[str] = (
                [plan.tracked.pk_name] + [c for _, c in plan.value_columns]
                if is_insert else group[2]
            )
            news = group[4]
            keep: list[int] = []
            for k, col in enumerate(names):
                if news[k] is _MISSING:
                    news[k] = codecs[col].encode(row.get(col))
                    if not is_insert and news[k] == group[3][k]:
                        continue
                keep.append(k)
            if not is_insert and len(keep) < len(names):
                group[2] = [names[k] for k in keep]
                group[3] = [group[3][k] for k in keep]
                group[4] = [news[k] for k in keep]


def _remove_all(listeners: list[tuple[str, Callable[..., Any]]]) -> None:
    for name, fn in listeners:
        if event.contains(Session, name, fn):
            event.remove(Session, name, fn)
