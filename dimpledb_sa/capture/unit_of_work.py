"""Change capture: ORM session events -> attribute-level change rows in the same transaction.

One :class:`Capture` per ``DimpleDb`` receives the ``Session`` class events of every ORM
session that reaches the database's engine (the application's own sessionmakers,
``scoped_session`` and ``AsyncSession`` included), through the process-wide listeners of
:mod:`.listeners`. Its handlers are named after the events they handle:

- ``before_flush``: old values a flush would lose are saved: those never loaded (the object
  was expired, the column deferred) are read with one ``SELECT`` per table, and those of
  attributes set to a SQL expression (which the flush expires) are kept. Child rows the
  database will delete or null by itself (``ON DELETE CASCADE`` / ``SET NULL``) when a
  deleted tracked row goes are found now (see :mod:`.cascades`).
- ``after_flush``: history still shows the pre-flush state; the flushed inserts, updates and
  deletes (ORM cascades and orphans included, via the flush's own state list) become one
  *group* per entity (see :mod:`..core.changelog`), buffered per session with the savepoint
  they ran in. Values the database computed (server defaults, SQL expressions) are read back,
  and the children's cascaded deletes and nulls are recorded (and made, where the database
  did not enforce its foreign keys).
- ``do_orm_execute``: ORM-enabled ``insert``/``update``/``delete`` statements, see
  :mod:`.statements`.
- ``before_commit`` (root transaction only): flush, then write every buffered group as one
  log transaction, on the session's connection, so data and log commit or roll back
  together; ``after_soft_rollback`` of a savepoint forgets its groups; the end of the root
  transaction (rollback or ``close()``) forgets everything; ``after_commit`` sends
  ``changes_committed``.

Core statements (``connection.execute(insert(table))``) are captured only on an engine that
opts in (:mod:`.core_dml`). Never captured: raw SQL and in-place mutations of JSON values
the ORM does not see (use ``MutableDict``).

Per-session state lives in ``session.info``; the listeners' registry holds the ``Capture``
weakly.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.elements import ClauseElement

from ..core._compat import (
    deleted_states,
    has_unflushed_changes,
    modified_states,
    root_engine,
)
from ..core.changelog import (
    GROUP_NAMES,
    GROUP_NEWS,
    GROUP_OLDS,
    Group,
    LocalWrite,
    json_array,
    write_pending,
)
from ..core.errors import DimpleError
from ..core.restore import materialize
from ..core.rows import fetch_rows, gc_paused
from ..core.tracking import MapperPlan, mapper_plans
from . import listeners
from .cascades import Cascades, Effect

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Mapper

    from ..core.replica import Replica
    from .core_dml import CoreCapture

__all__ = ["Capture"]

_MISSING: Any = object()  # a new value the flush expired: read back from the database

_serials = itertools.count(1)

_GC_PAUSE = 256  # flushes and commits this large run with the garbage collector paused

# types of attribute values that are never SQL expressions (the common case, checked first)
_PLAIN = frozenset({str, int, float, bool, type(None), bytes, decimal.Decimal, dt.date,
                    dt.datetime, dt.time, uuid.UUID, dict, list})


def _is_sql(value: Any) -> bool:
    """Whether an attribute was set to a SQL expression (as the ORM's flush decides it)."""
    return type(value) not in _PLAIN and (
        isinstance(value, ClauseElement) or hasattr(value, "__clause_element__"))


class _Pending:
    """Per session (and per DimpleDb): what the open root transaction captured.

    ``entries`` pairs the groups of each flush with the savepoint it ran in (``None``: none),
    so that rolling back a savepoint forgets exactly its groups; ``old`` carries old values
    saved in ``before_flush`` to ``after_flush``; ``plans`` caches, per mapped class, the
    plans of its tracked tables when bound to our engine (``bind``: that bind);
    ``written``: the log transactions written at commit; ``committing``: the log was
    written, so a later flush (another ``before_commit`` listener's) writes its groups
    straight away; ``owner`` keeps the capture alive until the transaction ends (the
    listeners hold it weakly).
    """

    __slots__ = ("bind", "cascades", "committing", "entries", "old", "owner", "plans", "probed",
                 "written")

    def __init__(self, owner: Capture) -> None:
        self.owner = owner
        self.entries: list[tuple[SessionTransaction | None, list[Group]]] = []
        self.old: dict[InstanceState[Any], dict[str, Any]] = {}
        self.plans: dict[type[Any], tuple[MapperPlan, ...]] = {}
        self.bind: Any = None
        self.written: list[LocalWrite] = []
        self.committing = False
        self.cascades: list[Effect] = []  # what the database will do to children
        self.probed: set[InstanceState[Any]] = set()  # this flush's states before_flush probed


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


class Capture:
    """Session listeners recording the changes of one ``DimpleDb``'s tracked tables."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.engine = replica.engine
        self.root = root_engine(replica.engine)  # what sessions bound to a copy reach too
        self.tracked = replica.tracked
        self._plans: dict[Mapper[Any], tuple[MapperPlan, ...]] = {}
        self._class_plans: dict[type[Any], tuple[MapperPlan, ...]] = {}
        self._key = f"dimpledb_sa.capture.{next(_serials)}"  # never reused, unlike id()
        self.core: CoreCapture | None = None
        self.cascades = Cascades(self.tracked)
        self._installed = False

    # -- registration ----------------------------------------------------------------------
    def install(self) -> None:
        """Start receiving the engine's events (see :mod:`.listeners`); idempotent."""
        if self._installed:
            return
        from .core_dml import OPTION, CoreCapture

        if self.engine.get_execution_options().get(OPTION) is True:
            self.core = CoreCapture(self)
        listeners.register(self, core=self.core is not None)
        self._installed = True

    def remove(self) -> None:
        """Stop receiving events."""
        listeners.unregister(self)
        self.core = None
        self._installed = False

    # -- helpers ---------------------------------------------------------------------------
    def plans(self, mapper: Mapper[Any]) -> tuple[MapperPlan, ...]:
        """The plans of ``mapper``'s tracked tables (none: it writes no tracked table)."""
        try:
            return self._plans[mapper]
        except KeyError:
            p = self._plans[mapper] = mapper_plans(mapper, self.tracked)
            return p

    def _class_plans_of(self, state: InstanceState[Any]) -> tuple[MapperPlan, ...]:
        try:
            return self._class_plans[state.class_]
        except KeyError:
            p = self._class_plans[state.class_] = self.plans(state.mapper)
            return p

    def bind_for(self, session: Session, mapper: Mapper[Any]) -> Any:
        """The session's bind for ``mapper`` when it reaches our engine, else ``None``."""
        bind = session.get_bind(mapper)
        return bind if root_engine(bind) is self.root else None

    def _pending(self, session: Session) -> _Pending:
        p: _Pending | None = session.info.get(self._key)
        if p is None:
            p = session.info[self._key] = _Pending(self)
        return p

    def _session_plans(self, session: Session, pending: _Pending,
                       state: InstanceState[Any]) -> tuple[MapperPlan, ...]:
        plans = self._class_plans_of(state)
        if plans:
            bind = self.bind_for(session, state.mapper)
            if bind is None:
                plans = ()
            elif pending.bind is None:
                pending.bind = bind
        pending.plans[state.class_] = plans
        return plans

    def _connection(self, session: Session, pending: _Pending) -> Connection:
        return session.connection(bind_arguments={"bind": pending.bind})

    # -- flush -----------------------------------------------------------------------------
    def before_flush(self, session: Session) -> None:
        pending: _Pending | None = session.info.get(self._key)
        if pending is not None:
            if pending.old:
                pending.old = {}
            pending.cascades = []
        if pending is not None and pending.probed:
            pending.probed = set()
        deleted = deleted_states(session)
        if self.cascades and deleted:
            self._find_cascades(session, deleted)
        modified = modified_states(session)
        if deleted:
            self._materialize(session, itertools.chain(modified, deleted))
        elif modified:
            self._materialize(session, modified)
        if not modified:
            return
        saved: dict[InstanceState[Any], dict[str, Any]] = {}
        unloaded: dict[MapperPlan, list[tuple[InstanceState[Any], list[str]]]] = {}
        plain = _PLAIN
        for state in modified:
            committed = state.committed_state
            if not committed:
                continue
            dict_: dict[str, Any] | None = None
            for key, old in committed.items():
                if old is not NO_VALUE:  # loaded: only a SQL expression set loses it
                    if dict_ is None:
                        dict_ = state.dict
                    new = dict_.get(key)
                    if type(new) in plain or not _is_sql(new):
                        continue  # the common case: the flush keeps the old value
                for plan in self._class_plans_of(state):
                    if key not in plan.by_key:
                        continue  # not a tracked column (a relationship, the key)
                    if old is NO_VALUE:
                        entry = unloaded.setdefault(plan, [])
                        if entry and entry[-1][0] is state:
                            entry[-1][1].append(key)
                        else:
                            entry.append((state, [key]))
                    else:
                        saved.setdefault(state, {})[key] = old
        if unloaded:
            self._fetch_unloaded(session, unloaded, saved)
        if saved:
            self._pending(session).old = saved

    def _materialize(self, session: Session, states: Iterable[InstanceState[Any]]) -> None:
        """Before the flush changes or deletes rows: store into the log the values of
        their value-less rows (``prune_history``'s), read from the database rows in the
        flush's transaction (:func:`..core.restore.materialize`; one probe per table)."""
        by_plan: dict[MapperPlan, tuple[Any, list[str]]] = {}
        probed = self._pending(session).probed
        for state in states:
            probed.add(state)
            key = state.key
            if key is None:
                continue
            for plan in self._class_plans_of(state):
                entry = by_plan.get(plan)
                if entry is None:
                    bind = self.bind_for(session, state.mapper)
                    if bind is None:
                        continue
                    entry = by_plan[plan] = (bind, [])
                entry[1].append(str(key[1][0]))
        for plan, (bind, eids) in by_plan.items():
            materialize(session.connection(bind_arguments={"bind": bind}), plan.name, eids)

    def catch_up(self, session: Session, connection: Connection,
                 state: InstanceState[Any]) -> None:
        """Before the flush UPDATEs or DELETEs ``state``'s row (a mapper event): when
        ``before_flush`` did not probe it (the flush itself chose to write it: a
        delete-orphan, a foreign key the ORM nulls, a moved child), store the values of its
        value-less log rows first, on the flush's connection (:func:`_materialize`'s work
        for one state; nothing but a set lookup for the states already probed)."""
        pending = session.info.get(self._key)
        if pending is not None and state in pending.probed:
            return
        key = state.key
        if key is None:
            return
        plans = self._class_plans_of(state)
        if not plans or self.bind_for(session, state.mapper) is None:
            return
        self._pending(session).probed.add(state)
        eid = str(key[1][0])
        for plan in plans:
            materialize(connection, plan.name, [eid])

    def _find_cascades(self, session: Session, deleted: Iterable[InstanceState[Any]]) -> None:
        """Find the children the database will delete or null with the deleted rows."""
        by_table: dict[str, list[Any]] = {}
        bind: Any = None
        for state in deleted:
            if state.key is None:
                continue
            for plan in self._class_plans_of(state):
                if plan.name in self.cascades.by_parent:
                    found = self.bind_for(session, state.mapper)
                    if found is not None:
                        bind = found
                        by_table.setdefault(plan.name, []).append(state.key[1][0])
        if not by_table:
            return
        effects = self.cascades.find(session.connection(bind_arguments={"bind": bind}),
                                     by_table)
        if effects:
            pending = self._pending(session)
            if pending.bind is None:
                pending.bind = bind
            pending.cascades = effects

    def _fetch_unloaded(self, session: Session,
                        unloaded: dict[MapperPlan, list[tuple[InstanceState[Any], list[str]]]],
                        saved: dict[InstanceState[Any], dict[str, Any]]) -> None:
        """Read the old values of attributes that were never loaded."""
        deleted = deleted_states(session)
        for plan, entries in unloaded.items():
            mapper = entries[0][0].mapper
            bind = self.bind_for(session, mapper)
            if bind is None:
                continue
            by_id: dict[str, tuple[InstanceState[Any], list[str]]] = {}
            for state, keys in entries:
                if state in deleted or state.key is None:
                    continue
                by_id[str(state.key[1][0])] = (state, keys)
            if not by_id:
                continue
            conn = session.connection(bind_arguments={"bind": bind})
            found = fetch_rows(conn, plan.tracked, by_id.keys())
            by_key = plan.by_key
            for eid, (state, keys) in by_id.items():
                row = found.get(eid)
                olds = saved.setdefault(state, {})
                for key in keys:
                    olds[key] = None if row is None else row[by_key[key][2]]

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        pending: _Pending | None = session.info.get(self._key)
        if pending is not None and pending.probed:
            pending.probed = set()
        states = flush_context.states
        if not states:
            return
        if len(states) < _GC_PAUSE:
            self._after_flush(session, states)
            return
        with gc_paused():
            self._after_flush(session, states)

    def _after_flush(self, session: Session,
                     states: dict[InstanceState[Any], tuple[bool, bool]]) -> None:
        pending = self._pending(session)
        plans = pending.plans
        old_map = pending.old
        groups: list[Group] = []
        append = groups.append
        refetch: dict[MapperPlan, dict[str, tuple[Group, bool]]] | None = None
        for state, (isdelete, listonly) in states.items():
            if listonly:
                continue
            try:
                plan_list = plans[state.class_]
            except KeyError:
                plan_list = self._session_plans(session, pending, state)
            if not plan_list:
                continue
            dict_ = state.dict
            for plan in plan_list:  # one per table (joined inheritance: several)
                pk = dict_.get(plan.pk_key, NO_VALUE)
                if pk is NO_VALUE:
                    if state.key is None:
                        raise DimpleError(f"a new {plan.name!r} row has no key after flush")
                    pk = state.key[1][0]
                eid = str(pk)
                if isdelete:
                    append(_delete_group(plan, state, pk))
                elif state.key is None:  # an insert: every column, the key first
                    group, missing = _insert_group(plan, dict_, pk, eid)
                    if missing:
                        if refetch is None:
                            refetch = {}
                        refetch.setdefault(plan, {})[eid] = (group, True)
                    append(group)
                else:
                    committed = state.committed_state
                    extra = old_map.get(state) if old_map else None
                    if not committed and extra is None:
                        continue
                    if extra is None and len(committed) == 1:  # the common case, made short
                        [(key, old)] = committed.items()
                        one = plan.single.get(key)
                        if one is None:
                            if key != plan.pk_key:
                                continue  # a relationship, not a column
                        else:
                            new = dict_.get(key, NO_VALUE)
                            if old is not NO_VALUE and new is not NO_VALUE:
                                exact = one[2]  # str for a String column, int for Integer
                                if type(old) is exact and type(new) is exact:
                                    spell = one[3]  # the C function its encoder ends in
                                    enc_old = spell(old)
                                    enc_new = spell(new)
                                else:
                                    enc = one[1]
                                    enc_old = enc(old)
                                    enc_new = enc(new)
                                if enc_new != enc_old:
                                    append([plan.name, eid, one[0], "[null]" if enc_old is None
                                            else "[" + enc_old + "]", [enc_new]])
                                continue
                    if plan.pk_key in committed and (
                            plan.pk_encode(pk) != plan.pk_encode(state.key[1][0])):
                        raise DimpleError(
                            f"changing the primary key of a tracked {plan.name!r} row is not "
                            "supported: delete it and insert a new row instead"
                        )
                    found = _update_group(plan, dict_, eid, committed, extra)
                    if found is not None:
                        group, expired = found
                        if expired:
                            if refetch is None:
                                refetch = {}
                            refetch.setdefault(plan, {})[eid] = (group, False)
                        append(group)
        if old_map:
            pending.old = {}
        if not groups:
            return
        if refetch:
            _fill(self._connection(session, pending), refetch)
            groups = [g for g in groups if g[GROUP_NEWS]]
        if pending.cascades:
            groups = self._with_cascades(session, pending, groups)
        self._record(session, pending, groups)

    def _with_cascades(self, session: Session, pending: _Pending, groups: list[Group]
                       ) -> list[Group]:
        """``groups`` plus what the database did to the children of the deleted rows."""
        effects, pending.cascades = pending.cascades, []
        return groups + self.cascades.record(self._connection(session, pending), effects,
                                             groups)

    def _record(self, session: Session, pending: _Pending, groups: list[Group]) -> None:
        """Buffer one flush's (or statement's) groups with its savepoint."""
        if not groups:
            return
        if pending.committing:
            self._write(session, pending, groups)
            return
        tx = session.get_nested_transaction()
        entries = pending.entries
        if entries and entries[-1][0] is tx:
            entries[-1][1].extend(groups)
        else:
            entries.append((tx, groups))

    def record(self, session: Session, bind: Any, groups: list[Group]) -> None:
        """Buffer groups captured outside a flush (``bulk``) in ``session``'s transaction."""
        pending = self._pending(session)
        if pending.bind is None:
            pending.bind = bind
        self._record(session, pending, groups)

    def _write(self, session: Session, pending: _Pending, groups: list[Group]) -> None:
        pending.written.append(write_pending(self.replica, self._connection(session, pending),
                                             groups))

    # -- transaction end -------------------------------------------------------------------
    def before_commit(self, session: Session) -> None:
        if session.get_nested_transaction() is not None:
            return  # a savepoint is being released: its groups stay buffered
        if session.info.get(self._key) is not None or has_unflushed_changes(session):
            session.flush()  # the commit's own flush comes after this hook: do it now
        pending = self._pending(session)
        pending.committing = True
        if pending.entries:
            groups = [g for _, batch in pending.entries for g in batch]
            pending.entries.clear()
            if len(groups) < _GC_PAUSE:
                self._write(session, pending, groups)
                return
            with gc_paused():
                self._write(session, pending, groups)

    def after_commit(self, session: Session) -> None:
        if session.get_nested_transaction() is not None:
            return  # a savepoint was released
        pending: _Pending | None = session.info.pop(self._key, None)
        if pending is None or not pending.written:
            return
        self.replica.committed_writes(pending.written)

    def after_soft_rollback(self, session: Session,
                            previous_transaction: SessionTransaction) -> None:
        pending: _Pending | None = session.info.get(self._key)
        if pending is None:
            return
        if previous_transaction.parent is None:
            session.info.pop(self._key, None)
        elif previous_transaction.nested:
            pending.entries = [e for e in pending.entries
                               if not _within(e[0], previous_transaction)]

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # committed, rolled back or closed: start afresh
            session.info.pop(self._key, None)

    # -- ORM-enabled INSERT / UPDATE / DELETE statements ------------------------------------
    def do_orm_execute(self, state: ORMExecuteState) -> Any:
        """An ORM-enabled INSERT/UPDATE/DELETE (the listener already checked the kind)."""
        mapper = state.bind_mapper
        if mapper is None:
            return None
        plans = self.plans(mapper)
        if not plans:
            return None
        bind = self.bind_for(state.session, mapper)
        if bind is None:
            return None
        from .statements import run_bulk

        return run_bulk(self, state, plans, bind)


def _position(hit: tuple[int, str, str, Any]) -> int:
    return hit[0]


def _delete_group(plan: MapperPlan, state: InstanceState[Any], pk: Any) -> Group:
    """The group of a deleted row: its key attribute going to null."""
    if state.key is not None:
        pk = state.key[1][0]
    return [plan.name, str(pk), plan.pk_names_json, json_array([plan.pk_encode(pk)]), [None]]


def _insert_group(plan: MapperPlan, dict_: dict[str, Any], pk: Any, eid: str
                  ) -> tuple[Group, bool]:
    """The group of an inserted row (every column, the key first), and whether some new
    value was not loaded (``_MISSING``: the database computed it; read back later)."""
    news = [plan.pk_encode(pk)]
    missing = False
    get = dict_.get
    plain = _PLAIN
    for key, enc in plan.value_encoders:
        v = get(key, NO_VALUE)
        if v is NO_VALUE or (type(v) not in plain and _is_sql(v)):
            news.append(_MISSING)
            missing = True
        else:
            news.append(enc(v))
    return [plan.name, eid, plan.insert_names_json, plan.insert_olds_json, news], missing


def _update_group(plan: MapperPlan, dict_: dict[str, Any], eid: str,
                  committed: dict[str, Any], extra: dict[str, Any] | None
                  ) -> tuple[Group, bool] | None:
    """The group of an updated row's changed columns (``None``: nothing changed), and
    whether some new value was expired by the flush (set to a SQL expression)."""
    by_key = plan.by_key
    if extra is None:
        hits = [by_key[k] for k in committed if k in by_key]
    else:
        hits = [by_key[k] for k in {**committed, **extra} if k in by_key]
    if not hits:
        return None
    if len(hits) > 1:
        hits.sort(key=_position)
    names: list[str] = []
    olds: list[str | None] = []
    news: list[str | None] = []
    expired = False
    for _, key, col, codec in hits:
        old = committed.get(key, NO_VALUE)
        if old is NO_VALUE:
            old = extra.get(key) if extra is not None else None
        new = dict_.get(key, NO_VALUE)
        enc_old = codec.encode(old)
        if new is NO_VALUE or _is_sql(new):
            # expired by the flush (a SQL expression was set), or still the expression
            # (the flush leaves it on an attribute that was expired before it was set)
            enc_new = _MISSING
            expired = True
        else:
            enc_new = codec.encode(new)
            if enc_new == enc_old:
                continue
        names.append(col)
        olds.append(enc_old)
        news.append(enc_new)
    if not names:
        return None
    if expired:  # the names stay a list: the read-back may drop some
        return [plan.name, eid, names, olds, news], True
    return [plan.name, eid, plan.names_json(tuple(names)), olds, news], False


def _fill(conn: Connection, refetch: dict[MapperPlan, dict[str, tuple[Group, bool]]]) -> None:
    """Replace ``_MISSING`` new values with the values read back after the flush; drop
    update entries whose read-back value equals the old one."""
    for plan, by_id in refetch.items():
        found = fetch_rows(conn, plan.tracked, by_id.keys())
        codecs = plan.tracked.codecs
        for eid, (group, is_insert) in by_id.items():
            row = found.get(eid, {})
            names: list[str] = plan.insert_names if is_insert else group[GROUP_NAMES]
            olds = group[GROUP_OLDS]
            news = group[GROUP_NEWS]
            keep: list[int] = []
            for k, col in enumerate(names):
                if news[k] is _MISSING:
                    news[k] = codecs[col].encode(row.get(col))
                    if not is_insert and news[k] == olds[k]:
                        continue
                keep.append(k)
            if not is_insert:
                group[GROUP_NAMES] = plan.names_json(tuple(names[k] for k in keep))
                group[GROUP_OLDS] = [olds[k] for k in keep]
                group[GROUP_NEWS] = [news[k] for k in keep]
