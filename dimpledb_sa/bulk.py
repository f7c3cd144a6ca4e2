"""Capture of ORM-enabled ``insert()``, ``update()`` and ``delete()`` statements.

``session.execute(update(Todo).where(...).values(...))`` and its siblings skip the unit of
work, so :func:`run_bulk` (called from the ``do_orm_execute`` hook) reads the affected rows
itself: the keys and old values before the statement, the new values after it, on the same
connection and in the same transaction, then records them like a flush would. Inserts whose
keys are left to a Python-side default get their keys filled in first so that the new rows
can be read back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import ORMExecuteState

from .capture import fetch_rows
from .errors import DimpleError
from .log import Group, json_array
from .tracking import MapperPlan

if TYPE_CHECKING:
    from .capture import Capture

__all__ = ["run_bulk"]


def _fill_keys(state: ORMExecuteState, plan: MapperPlan) -> list[str] | None:
    """Fill missing primary keys of an executemany insert from the column default."""
    params = state.parameters
    pk = plan.tracked.pk
    key = plan.pk_key
    rows: list[dict[str, Any]]
    if isinstance(params, list):
        rows = [dict(p) for p in params]
    elif params:
        rows = [dict(params)]
    else:
        return None
    default = pk.default
    for r in rows:
        if r.get(key) is None and r.get(pk.name) is None:
            if default is None or not callable(getattr(default, "arg", None)):
                return None
            r[key] = default.arg(None)  # type: ignore[union-attr]
    state.parameters = rows if isinstance(params, list) else rows[0]
    return [str(r.get(key, r.get(pk.name))) for r in rows]


def run_bulk(capture: Capture, state: ORMExecuteState, plan: MapperPlan) -> Any:
    session = state.session
    tt = plan.tracked
    name = tt.name
    conn = session.connection(bind_arguments={"mapper": state.bind_mapper})
    stmt: Any = state.statement
    before: dict[str, dict[str, Any]] = {}
    keys: list[str] | None = None
    if state.is_insert:
        if stmt._values or getattr(stmt, "_multi_values", None):
            keys = None
        else:
            keys = _fill_keys(state, plan)
        if keys is None:
            raise DimpleError(
                f"cannot record this INSERT into tracked table {name!r}: pass the rows as "
                "parameters (session.execute(insert(Model), [{...}, ...])) so their keys are "
                "known, or use session.add()"
            )
    else:
        params = state.parameters
        where = stmt.whereclause
        if where is not None:
            q = select(tt.pk).where(where)
            keys = [str(k) for k in conn.execute(q, params if isinstance(params, dict)
                                                 else {}).scalars()]
        elif isinstance(params, list) and state.is_update:  # bulk UPDATE by primary key
            keys = [str(p.get(plan.pk_key, p.get(tt.pk_name))) for p in params]
        else:
            keys = [str(k) for k in conn.execute(select(tt.pk)).scalars()]
        before = fetch_rows(conn, tt, keys)

    result = state.invoke_statement()
    if result.returns_rows:
        frozen = result.freeze()
        result = frozen()

    groups: list[Group] = []
    codecs = tt.codecs
    pkc = tt.pk_name
    pk_enc = codecs[pkc].encode
    if state.is_delete:
        gone = set(keys) - set(fetch_rows(conn, tt, keys, [pkc]))
        for eid in keys:
            if eid in gone:
                groups.append([name, eid, [pkc], [pk_enc(before[eid][pkc])], [None]])
    else:
        after = fetch_rows(conn, tt, keys)
        for eid in keys:
            new_row = after.get(eid)
            if new_row is None:
                continue
            old_row = before.get(eid)
            if old_row is None:  # inserted: the key first, then every other column
                cols = [pkc] + [c for c in new_row if c != pkc]
                groups.append([name, eid, cols, json_array([None] * len(cols)),
                               [codecs[c].encode(new_row[c]) for c in cols]])
                continue
            names: list[str] = []
            olds: list[str | None] = []
            news: list[str | None] = []
            for col, v in new_row.items():
                enc_new = codecs[col].encode(v)
                enc_old = codecs[col].encode(old_row[col])
                if enc_new != enc_old:
                    names.append(col)
                    olds.append(enc_old)
                    news.append(enc_new)
            if names:
                groups.append([name, eid, names, olds, news])
    if groups:
        capture._record(session, state.bind_mapper, groups)
    return result
