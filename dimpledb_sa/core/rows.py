"""Row helpers every layer shares: fast positional inserts, reading rows by key, chunking.

:func:`insert_many`, :func:`insert_values` and :func:`insert_columns` are the capture,
merge and bootstrap hot paths' inserts
(one ``executemany`` straight to the DBAPI cursor where the paramstyle allows);
:func:`fetch_rows` reads tracked rows by primary key; :data:`CHUNK` is the one bound on
``IN (...)`` lists (below SQLite's default limit of 999 bound parameters, with room for the
other parameters of the statement); :func:`gc_paused` holds off the cyclic garbage collector
while a large batch of rows is built.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Boolean, Column, Connection, MetaData, Table, select
from sqlalchemy.engine import processors
from sqlalchemy.types import TypeEngine

from ._compat import has_sql_expression

if TYPE_CHECKING:
    from .tracking import TrackedTable

__all__ = ["CHUNK", "bound_values", "chunks", "fetch_rows", "gc_paused", "insert_columns",
           "insert_many", "insert_values"]

T = TypeVar("T")

CHUNK = 900
"""Most values in one ``IN (...)`` list."""


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most :data:`CHUNK`."""
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def fetch_rows(conn: Connection, tt: TrackedTable, keys: Iterable[Any],
               columns: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Current values of ``columns`` (default: all) for the rows whose key is in ``keys``
    (key values or their string forms); keyed by the string form of the key."""
    cols = [tt.table.c[c] for c in (columns or tt.table.c.keys())]
    to_key = tt.codecs[tt.pk_name].from_json
    wanted = [to_key(k) if isinstance(k, str) else k for k in keys]
    out: dict[str, dict[str, Any]] = {}
    if conn.dialect.name == "sqlite" and conn.dialect.paramstyle == "qmark" \
            and _plain_sql(tt, cols):
        _fetch_sqlite(conn, tt, cols, wanted, out)
        return out
    for chunk in chunks(wanted):
        stmt = select(tt.pk, *cols).where(tt.pk.in_(chunk))
        for row in conn.execute(stmt):
            out[str(row[0])] = {c.name: row[i + 1] for i, c in enumerate(cols)}
    return out


def _plain_sql(tt: TrackedTable, cols: list[Column[Any]]) -> bool:
    """Whether no column type here wraps its SQL (a ``column_expression`` on what is
    selected, a ``bind_expression`` on the key): only then may :func:`_fetch_sqlite`
    spell the statement itself."""
    return not has_sql_expression(tt.pk.type, bind=True) and not any(
        has_sql_expression(c.type, bind=False) for c in (tt.pk, *cols))


def _fetch_sqlite(conn: Connection, tt: TrackedTable, cols: list[Column[Any]],
                  wanted: list[Any], out: dict[str, dict[str, Any]]) -> None:
    """:func:`fetch_rows` on SQLite: plain statements with ``?`` marks (an expanding
    ``IN`` costs SQLAlchemy a step per value), through the same bind and result processors
    that SQLAlchemy applies (pysqlite describes no column types: they get ``None``)."""
    dialect = conn.dialect
    prep = dialect.identifier_preparer
    pk = tt.pk
    bind = pk.type.dialect_impl(dialect).bind_processor(dialect)
    if bind is not None:
        wanted = [bind(v) for v in wanted]
    selected = [pk, *cols]
    procs = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in selected]
    names = [c.name for c in cols]
    head = (f"SELECT {', '.join(prep.quote(c.name) for c in selected)} "
            f"FROM {prep.format_table(tt.table)} WHERE {prep.quote(pk.name)} IN ")
    plain = all(p is None for p in procs)
    for chunk in chunks(wanted):
        found = conn.exec_driver_sql(head + "(" + ",".join("?" * len(chunk)) + ")",
                                     tuple(chunk)).fetchall()
        for row in found:
            values = row if plain else [v if p is None else p(v)
                                        for p, v in zip(procs, row, strict=True)]
            out[str(values[0])] = dict(zip(names, values[1:], strict=True))


def insert_many(conn: Connection, table: Table, rows: Sequence[Sequence[Any]],
                *, ignore_existing: bool = False) -> None:
    """Insert positional ``rows`` (in ``table.columns`` order) with one ``executemany``.

    Goes straight to the DBAPI cursor where the dialect's paramstyle allows (the capture
    and merge hot paths); ``ignore_existing`` skips rows whose key is already present.
    """
    if not rows:
        return
    dialect = conn.dialect
    names = [c.name for c in table.columns]
    style = dialect.paramstyle
    if style == "qmark":
        marks = ", ".join("?" for _ in names)
    elif style in ("format", "pyformat"):
        marks = ", ".join("%s" for _ in names)
    elif style == "numeric":
        marks = ", ".join(f":{i + 1}" for i in range(len(names)))
    else:
        stmt = table.insert()
        if ignore_existing:
            stmt = stmt.prefix_with("OR IGNORE", dialect="sqlite")
        conn.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])
        return
    cols = ", ".join(dialect.identifier_preparer.quote(n) for n in names)
    tname = dialect.identifier_preparer.format_table(table)
    verb = "INSERT"
    tail = ""
    if ignore_existing:
        if dialect.name == "sqlite":
            verb = "INSERT OR IGNORE"
        elif dialect.name == "mysql":
            verb = "INSERT IGNORE"
        else:
            tail = " ON CONFLICT DO NOTHING"
    conn.exec_driver_sql(f"{verb} INTO {tname} ({cols}) VALUES ({marks}){tail}", list(rows))


def insert_columns(conn: Connection, table: Table, columns: Mapping[str, Sequence[Any]]
                   ) -> None:
    """Insert rows given column by column (name -> the rows' Python values, every column
    without a Python-side default present) through the columns' bind processors (in bulk
    where :func:`bound_values` knows what they make), with one ``executemany``."""
    dialect = conn.dialect
    cols = [table.c[k] for k in columns]
    values: list[Sequence[Any]] = []
    for c in cols:
        col = columns[c.name]
        # the dialect's implementation of the type has the processor (SQLite's TIME,
        # DATETIME, DATE turn values into strings; the generic types have none)
        impl = c.type.dialect_impl(dialect)
        proc = impl.bind_processor(dialect)
        if proc is not None:
            bound = bound_values(impl, proc, col)
            col = [None if v is None else proc(v) for v in col] if bound is None else bound
        values.append(col)
    sub = Table(table.name, MetaData(), *(Column(c.name, c.type) for c in cols),
                schema=table.schema)
    insert_many(conn, sub, list(zip(*values, strict=True)))


def bound_values(impl: TypeEngine[Any], proc: Callable[[Any], Any], values: Sequence[Any]
                 ) -> Sequence[Any] | None:
    """What ``proc``, the bind processor of a column whose type's dialect implementation
    is ``impl``, makes of ``values``, when that is known without a call per value (else
    ``None``): floats through ``to_float`` stay as they are (equal floats), and booleans
    through a processor that gives them back as they are, or makes them ``1`` and ``0``
    (``int`` of each, at C speed)."""
    kinds = set(map(type, values))
    if proc is processors.to_float:
        return values if kinds <= {float, type(None)} else None
    if not isinstance(impl, Boolean) or not kinds <= {bool}:
        return None
    yes, no = proc(True), proc(False)
    if yes is True and no is False:
        return values
    if type(yes) is int and yes == 1 and type(no) is int and no == 0:
        return list(map(int, values))
    return None


def insert_values(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert Python values (dicts with the same keys) through the columns' bind processors,
    with one ``executemany`` per key set (what ``conn.execute(table.insert(), rows)`` does,
    without its per-row overhead)."""
    by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        by_keys.setdefault(tuple(r), []).append(r)
    dialect = conn.dialect
    for keys, batch in by_keys.items():
        if any(c.default is not None and c.name not in keys for c in table.columns):
            conn.execute(table.insert(), batch)  # Core fills in the Python-side defaults
            continue
        cols = [table.c[k] for k in keys]
        columns: list[list[Any]] = []
        for c in cols:
            values = [r[c.name] for r in batch]
            # the dialect's implementation of the type has the processor (SQLite's TIME,
            # DATETIME, DATE turn values into strings; the generic types have none)
            proc = c.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                values = [None if v is None else proc(v) for v in values]
            columns.append(values)
        tuples = list(zip(*columns, strict=True))
        sub = Table(table.name, MetaData(), *(Column(c.name, c.type) for c in cols),
                    schema=table.schema)
        insert_many(conn, sub, tuples)


@contextmanager
def gc_paused(pause: bool = True) -> Iterator[None]:
    """Hold off the cyclic GC (when ``pause``) while a large batch is built: capture, bundle
    decoding and merges build many short-lived acyclic tuples, lists and dicts, which trigger
    collections that find nothing and can double the time taken."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
