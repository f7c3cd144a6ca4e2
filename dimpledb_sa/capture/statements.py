"""Capture of ORM-enabled ``insert()``, ``update()`` and ``delete()`` statements.

``session.execute(update(Todo).where(...).values(...))`` and its siblings skip the unit of
work, so :func:`run_bulk` (called from the ``do_orm_execute`` hook) reads the affected rows
itself: the keys and old values before the statement, the new values after it, on the same
connection and in the same transaction, then records them like a flush would. An insert
needs to know its keys beforehand: those left to a Python-side default (``default=new_id``)
are filled in first, in the parameters or in ``.values()``; an insert that also updates
(an upsert) is recorded as the update it made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import CursorResult, select
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from ..core._compat import result_returns_rows, statement_multi_values, statement_values
from ..core.changelog import Group
from ..core.errors import DimpleError
from ..core.restore import materialize
from ..core.rows import fetch_rows
from ..core.tracking import MapperPlan, TrackedTable
from .cascades import Effect

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .unit_of_work import Capture

__all__ = ["UNKNOWN", "literal_value", "row_groups", "run_bulk", "unique_keys"]

UNKNOWN: Any = object()
"""What :func:`literal_value` gives for a SQL expression."""


def literal_value(value: Any) -> Any:
    """The Python value of a ``.values()`` entry, ``UNKNOWN`` for a SQL expression."""
    if isinstance(value, BindParameter):
        return value.effective_value
    if isinstance(value, ClauseElement) or hasattr(value, "__clause_element__"):
        return UNKNOWN
    return value


def _default_key(plan: MapperPlan) -> Any:
    default = plan.tracked.pk.default
    arg = getattr(default, "arg", None)
    if default is None or not callable(arg) or getattr(default, "is_sequence", False):
        return UNKNOWN
    return arg(None)


def unique_keys(keys: Iterable[Any]) -> list[str]:
    """The string forms of ``keys``, first occurrence first, ``None`` left out."""
    return list(dict.fromkeys(str(k) for k in keys if k is not None))


def _insert(state: ORMExecuteState, plan: MapperPlan) -> tuple[list[str], dict[str, Any]]:
    """The keys an insert will write, and the ``invoke_statement`` arguments that make
    sure it writes exactly those (keys left to a Python-side default are filled in)."""
    stmt: Any = state.statement
    pk = plan.tracked.pk
    key = plan.pk_key
    name = plan.name
    hint = (f"cannot record this INSERT into tracked table {name!r}: give every row its "
            f"key, or pass the rows as parameters (session.execute(insert(Model), "
            f"[{{...}}, ...])), or use session.add()")
    multi = statement_multi_values(stmt)
    if getattr(stmt, "select", None) is not None or multi:
        if not multi or len(multi) != 1:
            raise DimpleError(hint)
        keys = []
        for row in multi[0]:
            v = UNKNOWN
            for col, val in (row.items() if isinstance(row, dict) else ()):
                if getattr(col, "name", col) == pk.name or col == key:
                    v = literal_value(val)
            if v is UNKNOWN or v is None:
                raise DimpleError(hint)
            keys.append(v)
        return unique_keys(keys), {}
    values = statement_values(stmt)
    if values:
        v = UNKNOWN
        for col, val in values.items():
            if getattr(col, "name", col) == pk.name or col == key:
                v = literal_value(val)
                break
        else:
            v = _default_key(plan)
            if v is not UNKNOWN:
                return [str(v)], {"statement": stmt.values({pk: v})}
        if v is UNKNOWN or v is None:
            raise DimpleError(hint)
        return [str(v)], {}
    params: Any = state.parameters
    rows: list[dict[str, Any]]
    if isinstance(params, list):
        rows = [dict(p) for p in params]
    elif params:
        rows = [dict(params)]
    else:
        raise DimpleError(hint)
    for r in rows:
        if r.get(key) is None and r.get(pk.name) is None:
            v = _default_key(plan)
            if v is UNKNOWN:
                raise DimpleError(hint)
            r[key] = v
    keys = unique_keys(r.get(key, r.get(pk.name)) for r in rows)
    return keys, {"params": rows if isinstance(params, list) else rows[0]}


def _targets(conn: Connection, state: ORMExecuteState, plan: MapperPlan) -> list[str]:
    """The keys of the rows an UPDATE or DELETE may touch."""
    stmt: Any = state.statement
    tt = plan.tracked
    params = state.parameters
    where = stmt.whereclause
    mapper = state.bind_mapper
    assert mapper is not None
    key_attr = getattr(mapper.class_, plan.pk_key)  # the entity's key: joins, subclass filters
    if isinstance(params, list):
        if state.is_update and all(plan.pk_key in p or tt.pk_name in p for p in params):
            # bulk UPDATE by primary key (extra WHERE criteria only narrow it)
            return unique_keys(p.get(plan.pk_key, p.get(tt.pk_name)) for p in params)
        if where is None:
            return unique_keys(conn.execute(select(key_attr)).scalars())
        q = select(key_attr).where(where)
        return unique_keys(k for p in params for k in conn.execute(q, p).scalars())
    q = select(key_attr) if where is None else select(key_attr).where(where)
    return unique_keys(conn.execute(q, params or {}).scalars())


def row_groups(tt: TrackedTable, keys: Iterable[str], before: dict[str, dict[str, Any]],
               after: dict[str, dict[str, Any]], delete: bool) -> list[Group]:
    """The groups recording how the rows ``keys`` went from ``before`` to ``after`` (as
    :func:`~dimpledb_sa.core.rows.fetch_rows` reads them; a row missing before was inserted,
    one missing after a ``delete`` was deleted)."""
    groups: list[Group] = []
    name = tt.name
    codecs = tt.codecs
    pkc = tt.pk_name
    if delete:
        pk_enc = codecs[pkc].encode
        for eid in keys:
            if eid in before and eid not in after:
                groups.append([name, eid, [pkc], [pk_enc(before[eid][pkc])], [None]])
        return groups
    for eid in keys:
        new_row = after.get(eid)
        if new_row is None:
            continue
        old_row = before.get(eid)
        if old_row is None:  # inserted: the key first, then every other column
            cols = [pkc] + [c for c in new_row if c != pkc]
            groups.append([name, eid, cols, [None] * len(cols),
                           [codecs[c].encode(new_row[c]) for c in cols]])
            continue
        names: list[str] = []
        olds: list[str | None] = []
        news: list[str | None] = []
        for col, v in new_row.items():
            enc = codecs[col].encode
            enc_new = enc(v)
            enc_old = enc(old_row[col])
            if enc_new != enc_old:
                names.append(col)
                olds.append(enc_old)
                news.append(enc_new)
        if names:
            groups.append([name, eid, names, olds, news])
    return groups


def run_bulk(capture: Capture, state: ORMExecuteState, plans: tuple[MapperPlan, ...],
             bind: Any) -> Any:
    """Run an ORM-enabled DML statement on tracked tables and record what it changed
    (``plans``: one per table of the entity, the base table's first)."""
    session = state.session
    conn = session.connection(bind_arguments={"bind": bind})
    invoke: dict[str, Any] = {}
    if state.is_insert:
        keys, invoke = _insert(state, plans[0])
    else:
        keys = _targets(conn, state, plans[0])
    if keys and (not state.is_insert
                 or getattr(state.statement, "_post_values_clause", None) is not None):
        for p in plans:  # before it changes rows (an upsert may): see core.restore
            materialize(conn, p.name, keys)
    befores = [fetch_rows(conn, p.tracked, keys) for p in plans]
    cascades: list[Effect] = []
    if state.is_delete and keys and capture.cascades:
        tt0 = plans[0].tracked
        cascades = capture.cascades.find(
            conn, {tt0.name: [tt0.codecs[tt0.pk_name].from_json(k) for k in keys]})

    result: Any = state.invoke_statement(**invoke)
    rows = (result.returns_rows if isinstance(result, CursorResult)
            else result_returns_rows(result))
    if rows:  # all of RETURNING's rows, before the rows are read back
        result = result.freeze()()

    groups: list[Group] = []
    for plan, before in zip(plans, befores, strict=True):
        tt = plan.tracked
        if state.is_delete:
            after = fetch_rows(conn, tt, keys, [tt.pk_name]) if keys else {}
        else:
            after = fetch_rows(conn, tt, keys)
        groups.extend(row_groups(tt, keys, before, after, state.is_delete))
    if cascades:
        groups.extend(capture.cascades.record(conn, cascades, groups))
    if groups:
        capture.record(session, bind, groups)
    return result
