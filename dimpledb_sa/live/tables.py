"""Which tables a live query reads, and a comparable picture of its result.

:func:`statement_tables` reads the table names out of a statement's element tree
(relationship joins included); :func:`fingerprint` pictures an ORM result by identity and
loaded values and notes the mappers and relationships it loaded, whose tables
:func:`found_tables` names; for statements whose tables only the database can tell
(``text()``), :func:`authorizer` is the SQLite authorizer that collects every table a
statement run reads and :func:`explain_tables` reads them off PostgreSQL's plan (views
resolve to their base tables either way).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, text
from sqlalchemy.orm import RelationshipProperty, Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.expression import TableClause

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapper

__all__ = ["ALL_TABLES", "NOT_LOADED", "authorizer", "explain_tables", "fingerprint",
           "found_tables", "statement_tables"]

logger = logging.getLogger(__name__)

ALL_TABLES = "*"
"""``tables=ALL_TABLES``: re-run the live query after every commit."""

_HARMLESS = frozenset({"*", "1"})
"""Literal columns that name no table (``exists()`` selects ``*``)."""

NOT_LOADED: Any = object()
"""An attribute that was not loaded (in a fingerprint), or no result yet."""


def _mapper_tables(mapper: Mapper[Any]) -> set[str]:
    return {t.name.lower() for t in mapper.tables}


def statement_tables(statement: Any) -> frozenset[str] | None:
    """Lower-case names of the tables a SQLAlchemy statement names; ``None`` when it holds
    raw SQL (``text()``, literal columns) whose tables only the database can tell."""
    found: set[str] = set()
    for el in visitors.iterate(statement):
        if isinstance(el, TextClause) or (isinstance(el, ColumnClause) and el.is_literal
                                          and el.name not in _HARMLESS):
            return None
        if isinstance(el, TableClause):
            found.add(el.name.lower())
        for join in getattr(el, "_setup_joins", ()) or ():  # ORM joins along relationships
            for part in join:
                prop: Any = getattr(part, "property", None)
                target = getattr(prop, "mapper", None)
                if target is not None and hasattr(prop, "secondary"):
                    found |= _mapper_tables(target)
                    if isinstance(prop.secondary, TableClause):
                        found.add(prop.secondary.name.lower())
    return frozenset(found)


def fingerprint(session: Session, rows: list[Any], found: set[Any]) -> Any:
    """A value-comparable picture of a result: ORM objects by identity and loaded values.

    Adds to ``found`` the mapper of every loaded object and every relationship loaded with
    it (eager loads read those tables too).
    """
    states = session.identity_map.all_states()
    if not states:
        return rows
    snapshot: dict[Any, tuple[Any, ...]] = {}
    plans: dict[Mapper[Any], tuple[list[str], list[Any]]] = {}
    for state in states:
        mapper = state.mapper
        plan = plans.get(mapper)
        if plan is None:
            plan = plans[mapper] = ([p.key for p in mapper.column_attrs],
                                    list(mapper.relationships))
            found.add(mapper)
        d = state.dict
        values: list[Any] = [d.get(k, NOT_LOADED) for k in plan[0]]
        for rel in plan[1]:
            if rel.key in d:
                values.append((rel.key, _related_keys(d[rel.key], rel.uselist)))
                found.add(rel)
        snapshot[state.key] = tuple(values)
    return [_key_of(x) for x in rows], snapshot


def found_tables(found: Iterable[Any]) -> set[str]:
    """Tables of the mappers and relationships collected by :func:`fingerprint`."""
    out: set[str] = set()
    for item in found:
        if isinstance(item, RelationshipProperty):
            out |= _mapper_tables(item.mapper)
            if isinstance(item.secondary, TableClause):
                out.add(item.secondary.name.lower())
        else:
            out |= _mapper_tables(item)
    return out


def _key_of(value: Any) -> Any:
    state = getattr(value, "_sa_instance_state", None)
    if state is not None:
        return ("\0entity", state.key)
    if isinstance(value, Row):
        return tuple(_key_of(v) for v in value)
    return value


def _related_keys(value: Any, uselist: bool) -> Any:
    if value is None:
        return None
    if not uselist:
        return _key_of(value)
    items = value.values() if isinstance(value, Mapping) else value
    keys = [_key_of(v) for v in items]
    return frozenset(keys) if isinstance(value, set | frozenset) else tuple(keys)


def explain_tables(session: Session, statement: TextClause, params: Mapping[str, Any]
                   ) -> frozenset[str] | None:
    """The tables PostgreSQL's plan of ``statement`` scans (views are planned as their base
    tables); ``None`` when the plan cannot tell (it calls a set-returning function, which may
    read any table, or ``EXPLAIN`` failed)."""
    try:
        with session.begin_nested():
            plan = session.execute(text("EXPLAIN (FORMAT JSON) " + statement.text),
                                   dict(params) or None).scalar()
    except Exception:
        logger.debug("EXPLAIN of a live text() query failed", exc_info=True)
        return None
    if isinstance(plan, str):
        plan = json.loads(plan)
    found: set[str] = set()
    todo: list[Any] = [plan]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            if node.get("Node Type") in ("Function Scan", "Table Function Scan"):
                return None
            name = node.get("Relation Name")
            if isinstance(name, str):
                found.add(name.lower())
            todo.extend(v for v in node.values() if isinstance(v, list | dict))
    return frozenset(found)


def authorizer(reads: set[str]) -> Callable[[int, str | None, str | None, str | None,
                                             str | None], int]:
    def collect(action: int, arg1: str | None, arg2: str | None, dbname: str | None,
                   source: str | None) -> int:
        if action == sqlite3.SQLITE_READ and arg1 and not arg1.startswith("sqlite_"):
            reads.add(arg1.lower())
        return sqlite3.SQLITE_OK

    return collect


