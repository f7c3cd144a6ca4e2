"""The bookkeeping tables: the change log, transactions, sync cursors, held changes, meta.

All live in their own :data:`metadata` (what Alembic's ``target_metadata`` may include and
what ``alembic_ext`` keeps out of autogenerate); every name starts with ``dimple_``.

- ``dimple_changes``: the change log, packed: one row per run of attribute changes of one
  entity in one transaction whose ids are consecutive (see :mod:`dimpledb_sa.log`): the
  first change id, then JSON arrays of attribute names, old values and new values (a plain
  rowid table: packed rows are too wide for ``WITHOUT ROWID``). ``ix_dimple_changes_entity``
  (entity_type, entity_id, id) makes "the changes of one entity" (and so the latest of each
  of its attributes) one index range.
- ``dimple_pending``: local transactions not yet folded into ``dimple_changes``: one row
  per transaction, its packed rows as one JSON body (``[[first_id, entity_type, entity_id,
  attributes, old_values, new_values], ...]``) and the JSON list of its tables. A commit
  writes one such row instead of one indexed row per entity; :func:`dimpledb_sa.log.fold`
  moves them into the indexed log before a push, a merge, a replay or an adoption, and
  when more than ``log.PENDING_LIMIT`` have gathered.
- ``dimple_transactions``: one row per transaction (id, author).
- ``dimple_cursors``: per remote author, the last transaction id merged from its bundles.
- ``dimple_held``: (entity, attribute) pairs whose logged changes this schema could not
  apply yet (unknown table or column, missing parent row), with the reason.
- ``dimple_meta``: key/value: ``author_id``, ``pushed_through`` (last transaction pushed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table, Text

__all__ = [
    "BOOKKEEPING_PREFIX",
    "changes",
    "cursors",
    "held",
    "insert_many",
    "insert_values",
    "meta",
    "metadata",
    "pending",
    "transactions",
]

BOOKKEEPING_PREFIX = "dimple_"

metadata = MetaData()

_ID = String(36)

changes = Table(
    "dimple_changes",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("transaction_id", _ID, nullable=False),
    Column("entity_type", String(255), nullable=False),
    Column("entity_id", String(255), nullable=False),
    Column("attributes", Text, nullable=False),
    Column("old_values", Text, nullable=False),
    Column("new_values", Text, nullable=False),
    Index("ix_dimple_changes_entity", "entity_type", "entity_id", "id"),
    Index("ix_dimple_changes_transaction", "transaction_id"),
)

pending = Table(
    "dimple_pending",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("transaction_id", _ID, nullable=False),
    Column("tables", Text, nullable=False),
    Column("body", Text, nullable=False),
)

transactions = Table(
    "dimple_transactions",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("author", _ID, nullable=False),
    Index("ix_dimple_transactions_author", "author", "id"),
    sqlite_with_rowid=False,
)

cursors = Table(
    "dimple_cursors",
    metadata,
    Column("author", _ID, primary_key=True),
    Column("last_transaction_id", _ID, nullable=False),
    Column("synced_at", String(32), nullable=False),
)

held = Table(
    "dimple_held",
    metadata,
    Column("entity_type", String(255), primary_key=True),
    Column("entity_id", String(255), primary_key=True),
    Column("attribute", String(255), primary_key=True),
    Column("reason", String(255), nullable=False),
)

meta = Table(
    "dimple_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


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
            proc = c.type.bind_processor(dialect)
            if proc is not None:
                values = [None if v is None else proc(v) for v in values]
            columns.append(values)
        tuples = list(zip(*columns, strict=True))
        sub = Table(table.name, MetaData(), *(Column(c.name, c.type) for c in cols),
                    schema=table.schema)
        insert_many(conn, sub, tuples)
