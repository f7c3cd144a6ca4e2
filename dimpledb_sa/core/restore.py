"""Value-less log rows: reading their values back from the live rows, and storing them again.

``prune_history`` (:mod:`.prune`) stores an old winning change without its new values
(:data:`.changelog.DROPPED`) when the live row holds them. The invariant every writer keeps:
**a value-less row's attributes are all current winners, and the live row holds their
values.** So:

- every reader of log values gets them from the live row: :mod:`.changelog` calls
  :func:`fill` on every value-less row it reads (by entity, by transaction, whole scans),
  so push, a re-send after a lost manifest or to a new remote, the snapshot writer,
  history, ``as_of``/``revert``, merges, conflicts, the CLI and the healing of unreadable
  bundles all see the values. While the invariant holds a value is never reconstructed
  from a later change's old value (a session's old value can be stale); when a write
  capture could not see broke it (a race with a prune in another process, an uncaptured
  Core write, a dropped column), :func:`_values` falls back to a fixed rule instead of
  failing (a later change's old value, else the live row's, else null);
- before any tracked write supersedes or deletes an attribute of a value-less row (an ORM
  flush, the rows it decides to write itself included, a Core UPDATE/DELETE, a merge, an
  undo), :func:`materialize` reads the values
  from the database row, in the writer's transaction, and stores them into the log row
  first.

Only columns whose values read back *identically without the app's models* lose their
stored values (:func:`plain_column`: plain strings, integers, booleans and floats, checked
on the table as the database reflects it), so a reader that does not track the table or
column any more (``exclude=``, a model that dropped the attribute, the CLI) reads them
back through reflection, exactly. Tables whose rows the database itself may change
(the child side of a foreign key with ``ON DELETE``/``ON UPDATE`` actions) keep their
values. A column dropped from the database (or a table dropped) takes the values with it (they
read as null): :func:`restore_all` (``db.restore_pruned_values()``) stores every value
back first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, MetaData, Table, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.schema import Column

from . import changelog
from .changes import ROW_ENTITY_ID, ROW_ENTITY_TYPE
from .values import Codec, codec_for, json_texts

__all__ = ["LiveTable", "encoded", "fill", "live_table", "materialize", "plain_column",
           "restore_all"]

_PACKED_ATTRIBUTES: Final = 4
_PACKED_OLDS: Final = 5
_PACKED_NEWS: Final = 6


def plain_column(column: Column[Any]) -> bool:
    """Whether a (reflected) column's values read back the same with or without the app's
    models: a plain string (not an enum, not ``CHAR``, which the CLI may read as a UUID), an
    integer, a boolean or a float, and no type decorator."""
    t = column.type
    if isinstance(t, sqltypes.TypeDecorator | sqltypes.Enum | sqltypes.CHAR):
        return False
    if isinstance(t, sqltypes.Float):
        return not t.asdecimal
    return isinstance(t, sqltypes.String | sqltypes.Integer | sqltypes.Boolean)


class LiveTable:
    """A live table as the database reflects it: its key column and plain columns' codecs."""

    def __init__(self, table: Table) -> None:
        self.table = table
        pk = list(table.primary_key.columns)
        self.pk: Column[Any] | None = pk[0] if len(pk) == 1 else None
        self.codecs: dict[str, Codec] = {c.name: codec_for(c) for c in table.columns
                                         if plain_column(c)}
        self.cascaded = any(
            fk.ondelete not in (None, "NO ACTION", "RESTRICT")
            or fk.onupdate not in (None, "NO ACTION", "RESTRICT")
            for fk in table.foreign_keys)
        """Whether the database itself may change its rows (a foreign key's action)."""

    def rows(self, conn: Connection, eids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The live rows of the entities ``eids``, by entity id (their plain columns)."""
        from .rows import chunks

        assert self.pk is not None
        cols = [self.table.c[n] for n in self.codecs]
        out: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(eids)):
            for row in conn.execute(self.table.select().with_only_columns(self.pk, *cols)
                                    .where(self.pk.in_(chunk))):
                out[str(row[0])] = {c.name: row[i + 1] for i, c in enumerate(cols)}
        return out


def live_table(conn: Connection, name: str) -> LiveTable | None:
    """The table ``name`` as the database has it now (``None`` when it has none)."""
    if not inspect(conn).has_table(name):
        return None
    try:
        return LiveTable(Table(name, MetaData(), autoload_with=conn))
    except NoSuchTableError:
        return None


def _live_rows(conn: Connection, rows: Sequence[Sequence[Any]]
               ) -> tuple[dict[str, LiveTable | None], dict[tuple[str, str], dict[str, Any]]]:
    """The live tables of the value-less packed ``rows`` (``None``: the database has no
    such table with a one-column key) and their entities' live rows."""
    by_type: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_type[r[ROW_ENTITY_TYPE]].add(r[ROW_ENTITY_ID])
    live: dict[tuple[str, str], dict[str, Any]] = {}
    tables: dict[str, LiveTable | None] = {}
    for etype, eids in by_type.items():
        lt = live_table(conn, etype)
        tables[etype] = lt if lt is not None and lt.pk is not None else None
        if tables[etype] is not None:
            assert lt is not None
            for eid, row in lt.rows(conn, sorted(eids)).items():
                live[(etype, eid)] = row
    return tables, live


def _superseded(later: Sequence[Sequence[Any]], name: str) -> str | None:
    """The old value (JSON text) of attribute ``name`` in the earliest of the ``later``
    packed rows (sorted by id) that changes it; :data:`_MISSING` when none does."""
    from .changelog import names_list

    for s in later:
        names = names_list(s[_PACKED_ATTRIBUTES])
        if name in names:
            olds: list[Any] = json.loads(s[_PACKED_OLDS])
            return json_texts([olds[names.index(name)]])[0]
    return _MISSING


def _values(rows: Sequence[Sequence[Any]], tables: dict[str, LiveTable | None],
            live: dict[tuple[str, str], dict[str, Any]],
            others: dict[tuple[str, str], list[Sequence[Any]]]) -> list[str]:
    """The new values (JSON array texts) of the value-less packed ``rows``.

    Exactly, from the live row, while the invariant of this module holds. When a write
    broke it (one capture could not see: a race with a prune, an uncaptured Core write, a
    dropped column), deterministically instead: an attribute a later change in the log
    (``others``: every log row of the entity) changed reads that change's old value (the
    earliest one's); else the live row's value; else (the row is gone, the column
    dropped) ``null``. No reader ever fails on a value-less row."""
    from .changelog import json_array, names_list

    out: list[str] = []
    for r in rows:
        etype, eid = r[ROW_ENTITY_TYPE], r[ROW_ENTITY_ID]
        found = live.get((etype, eid))
        lt = tables.get(etype)
        later = sorted((s for s in others.get((etype, eid), ()) if s[0] > r[0]),
                       key=lambda s: s[0])
        texts: list[str | None] = []
        for name in names_list(r[_PACKED_ATTRIBUTES]):
            text = _superseded(later, name) if later else _MISSING
            if text is _MISSING and lt is not None:
                text = encoded(lt, name, found, eid)
            texts.append(None if text is _MISSING else text)
        out.append(json_array(texts))
    return out


_MISSING: Final = "\0"


def encoded(lt: LiveTable, name: str, row: dict[str, Any] | None, eid: str) -> str | None:
    """The JSON text of attribute ``name`` of the live ``row`` (``None``: gone) of entity
    ``eid``: the key's is the entity id's JSON string, a plain column's its codec's;
    :data:`_MISSING` (no JSON text) for any other."""
    if lt.pk is not None and name == lt.pk.name:
        return json.dumps(eid)
    codec = lt.codecs.get(name)
    if codec is None or row is None or name not in row:
        return _MISSING
    return codec.encode(row[name])


def fill(conn: Connection, rows: list[Any], positions: Sequence[int]) -> None:
    """Give the value-less packed rows at ``positions`` of ``rows`` their new values, read
    from the live rows (read-only; see :func:`_values` for what a broken invariant reads).

    A reader outside one read transaction may see a writer commit between its read of the
    log and of the live rows: a writer stores the values into the log row in the same
    transaction as it changes the live row, so a row that is not value-less any more once
    the live rows were read takes the values the log now holds (the log's rows of these
    entities, and the pending transactions, are read after the live rows for that)."""
    if not positions:
        return
    wanted = [rows[i] for i in positions]
    tables, live = _live_rows(conn, wanted)
    by_type: dict[str, set[str]] = defaultdict(set)
    for r in wanted:
        by_type[r[ROW_ENTITY_TYPE]].add(r[ROW_ENTITY_ID])
    others: dict[tuple[str, str], list[Sequence[Any]]] = defaultdict(list)
    stored: dict[tuple[str, str, str], str] = {}
    for etype, eids in by_type.items():
        for s in changelog.rows_of_entities(conn, etype, sorted(eids), raw=True):
            others[(s[ROW_ENTITY_TYPE], s[ROW_ENTITY_ID])].append(s)
            stored[(s[ROW_ENTITY_TYPE], s[ROW_ENTITY_ID], s[0])] = s[_PACKED_NEWS]
    for s in changelog.pending_rows(conn, entity_types=sorted(by_type)):  # not folded yet
        key = (s[ROW_ENTITY_TYPE], s[ROW_ENTITY_ID])
        if key in others or s[ROW_ENTITY_ID] in by_type.get(s[ROW_ENTITY_TYPE], ()):
            others[key].append(s)
    found = _values(wanted, tables, live, others)
    for i, r, news in zip(positions, wanted, found, strict=True):
        now = stored.get((r[ROW_ENTITY_TYPE], r[ROW_ENTITY_ID], r[0]))
        if now is not None and now != changelog.DROPPED:
            news = now  # a writer stored its values meanwhile
        rows[i] = (*r[:_PACKED_NEWS], news)


def materialize(conn: Connection, entity_type: str, entity_ids: Sequence[str]) -> int:
    """Store into the log the values of the value-less rows of these entities, read from
    their live rows (in ``conn``'s write transaction, before a write changes them);
    returns how many rows got their values back. Cheap when there are none: one probe of
    the log's primary key (:func:`.changelog.valueless_of`)."""
    found = changelog.valueless_of(conn, entity_type, entity_ids)
    if not found:
        return 0
    filled = list(found)
    fill(conn, filled, range(len(filled)))
    changelog.delete_rows(conn, found)
    changelog.store(conn, filled)
    return len(found)


def restore_all(conn: Connection, batch: int = 5_000) -> int:
    """Store back every value ``prune_history`` dropped (read from the live rows), in
    ``conn``'s write transaction; returns how many log rows got their values back."""
    done = 0
    # keyset-paged in key order: each batch is read after the last key of the one before,
    # so the rows stored back behind it are never read again
    for found in changelog.valueless_batches(conn, batch):
        filled = list(found)
        fill(conn, filled, range(len(filled)))
        changelog.delete_rows(conn, found)
        changelog.store(conn, filled)
        done += len(found)
    return done
