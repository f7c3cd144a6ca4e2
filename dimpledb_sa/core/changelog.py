"""The change log's local layout: packing attribute changes into rows, and reading them back.

Bundles carry the seed's per-attribute change records (:data:`ChangeRow`). Locally, the
changes one transaction makes to one entity are stored as one *packed* row when their ids are
consecutive clock steps (which the clock guarantees for everything captured here):
``(first_id, transaction_id, entity_type, entity_id, attributes, old_values, new_values)``
with the last three JSON arrays. The ``k``-th change of a row has id
``offset_id(first_id, k)``. Writing one row per entity instead of one per attribute is what
keeps capture cheap; :func:`expand` gives back exactly the per-attribute records, and
:func:`pack` folds pulled records the same way (a record whose id does not continue the run
starts a new row, so foreign ids are stored faithfully too).

A local commit does not insert its packed rows into the indexed ``dimple_changes`` at once:
:func:`write_local` writes them as one ``dimple_pending`` row (one JSON body per
transaction), in the same database transaction as the data, and :func:`fold` moves pending
transactions into the indexed log before a merge, a replay or an adoption, every
``PENDING_LIMIT`` commits, and at the start of a push (:func:`unpacked_pending` read
without a lock, then :func:`fold_unpacked`, a few transactions per short write
transaction). Readers that cannot write (history, a push's
reads, the external watcher, tools) also read :func:`pending_rows`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii as _esc
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, func, select

from . import meta, schema
from .changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_OLD,
    ROW_TRANSACTION,
    Change,
    ChangeRow,
    TxRecord,
    change_from_row,
)
from .clock import is_next_id, offset_id
from .floor import issued
from .floor import start as start_commit
from .rows import chunks, insert_many

if TYPE_CHECKING:
    from .replica import Replica

__all__ = [
    "ChangeRow",
    "Group",
    "PackedRow",
    "TxRecord",
    "all_rows",
    "entity_changes",
    "expand",
    "expand_all",
    "fold",
    "fold_unpacked",
    "history",
    "is_empty",
    "json_array",
    "last_pending",
    "pack",
    "pending_rows",
    "raise_clock_floor",
    "store",
    "transaction_ids",
    "transactions_of",
    "transactions_since",
    "unpacked_pending",
    "write_local",
]

PackedRow = tuple[str, str, str, str, str, str, str]
"""(first_id, transaction_id, entity_type, entity_id, attributes, old_values, new_values):
the first four positions are a ChangeRow's (``ROW_ID`` ... ``ROW_ENTITY_ID``), the last
three JSON arrays (``PACKED_ATTRIBUTES``, ``PACKED_OLDS``, ``PACKED_NEWS``)."""
PACKED_ATTRIBUTES: Final = 4
PACKED_OLDS: Final = 5
PACKED_NEWS: Final = 6

Group = list[Any]
"""What capture hands the log for one entity: [entity_type, entity_id, names (a list or
its JSON text), old values (a list of JSON texts or the array's JSON text), new values (a
list of JSON texts)]; positions ``GROUP_TYPE`` ... ``GROUP_NEWS``."""
GROUP_TYPE: Final = 0
GROUP_ID: Final = 1
GROUP_NAMES: Final = 2
GROUP_OLDS: Final = 3
GROUP_NEWS: Final = 4

_dumps = json.dumps
_loads = json.loads
_HEXI = {ch: k for k, ch in enumerate("0123456789abcdef")}


def json_array(texts: Sequence[str | None]) -> str:
    """A JSON array from the JSON texts of its items (``None`` is ``null``)."""
    if len(texts) == 1:  # most updates change one attribute
        t = texts[0]
        return "[null]" if t is None else "[" + t + "]"
    return "[" + ",".join(["null" if t is None else t for t in texts]) + "]"


def _texts(array_json: str) -> list[str | None]:
    return [None if v is None else _dumps(v) for v in _loads(array_json)]


PENDING_LIMIT = 256
"""Local transactions kept in ``dimple_pending`` before a commit folds them into the log."""


def write_local(replica: Replica, conn: Connection, groups: Sequence[Group]
                ) -> list[PackedRow]:
    """Issue ids for one local transaction's groups and write it; returns the packed rows.

    The transaction goes to ``dimple_pending`` as one row (see :func:`fold`), with its
    ``dimple_transactions`` row. The clock first observes the database's clock floor (every
    id the database holds is at or below it, see :mod:`.floor`), so ids keep growing across
    restarts, across processes sharing the database and after pulls by any of them; the
    author id is read with it, so a commit made after ``dimpledb reauthor`` by a handle
    opened before it records the new id. Ids are issued in commit order across processes:
    SQLite's write lock is held from the flush's first write, and on PostgreSQL the floor's
    and author's rows stay locked until the commit.
    """
    clock = replica.clock
    floor, stored_author = start_commit(conn)
    if floor:
        clock.observe(floor)
    author = replica.author_on(conn, stored_author)
    counts = [len(g[GROUP_NEWS]) for g in groups]
    firsts = clock.reserve_runs([1, *counts])
    tx_id = firsts[0]
    rows: list[PackedRow] = []
    append = rows.append
    for first, (etype, eid, names, olds, news) in zip(firsts[1:], groups, strict=True):
        append((
            first, tx_id, etype, eid,
            names if type(names) is str else _dumps(names),
            olds if type(olds) is str else json_array(olds),
            json_array(news),
        ))
    last = clock.last
    assert last is not None
    issued(conn, floor, last, author)
    tables = "[" + ",".join([_esc(t) for t in sorted({g[GROUP_TYPE] for g in groups})]) + "]"
    # the body is JSON built by hand: the three arrays are JSON text already
    form = '["%s",%s,%s,%s,%s,%s]'
    body = "[" + ",".join([form % (first, _esc(etype), _esc(eid), names, olds, news)
                           for first, _, etype, eid, names, olds, news in rows]) + "]"
    seq = _insert_transaction(conn, tx_id, author, tables, body)
    if seq is not None and seq % PENDING_LIMIT == 0:
        fold(conn)
    return rows


_SQLITE_TRANSACTION = "INSERT INTO dimple_transactions (id, author) VALUES (?, ?)"
_SQLITE_PENDING = "INSERT INTO dimple_pending (transaction_id, tables, body) VALUES (?, ?, ?)"


def _insert_transaction(conn: Connection, tx_id: str, author: str, tables: str,
                        body: str) -> int | None:
    """Insert a local transaction's two rows; returns its pending ``seq``."""
    if conn.dialect.name == "sqlite":  # two plain statements, their SQL written once
        conn.exec_driver_sql(_SQLITE_TRANSACTION, (tx_id, author))
        seq: int | None = conn.exec_driver_sql(_SQLITE_PENDING, (tx_id, tables, body)).lastrowid
        return seq
    insert_many(conn, schema.transactions, [(tx_id, author)])
    p = schema.pending
    key = conn.execute(p.insert().values(transaction_id=tx_id, tables=tables, body=body)
                       ).inserted_primary_key
    return key[0] if key else None


def _array(values: list[Any]) -> str:
    return json_array([None if v is None else _dumps(v) for v in values])


def _unpack(tx_id: str, body: str) -> list[PackedRow]:
    """The packed rows of a pending body, with the canonical text of each array."""
    return [(first, tx_id, etype, eid, _dumps(names), _array(olds), _array(news))
            for first, etype, eid, names, olds, news in _loads(body)]


def fold(conn: Connection, limit: int | None = None) -> int:
    """Move every pending local transaction (or the ``limit`` oldest) into the indexed log;
    returns rows moved.

    Runs inside the caller's (write) transaction; readers that cannot write use
    :func:`pending_rows` instead.
    """
    p = schema.pending
    stmt = select(p.c.seq, p.c.transaction_id, p.c.body).order_by(p.c.seq)
    found = conn.execute(stmt if limit is None else stmt.limit(limit)).all()
    if not found:
        return 0
    packed: list[PackedRow] = []
    for _, tx_id, body in found:
        packed.extend(_unpack(tx_id, body))
    insert_many(conn, schema.changes, packed, ignore_existing=True)  # a concurrent fold
    conn.execute(p.delete().where(p.c.seq <= found[-1][0]))
    return len(packed)


def unpacked_pending(conn: Connection, limit: int, through: int | None = None
                     ) -> list[tuple[int, list[PackedRow]]]:
    """The ``limit`` oldest pending transactions (at or below seq ``through``) as (seq,
    packed rows), read without a write lock, for :func:`fold_unpacked`."""
    p = schema.pending
    stmt = select(p.c.seq, p.c.transaction_id, p.c.body).order_by(p.c.seq).limit(limit)
    if through is not None:
        stmt = stmt.where(p.c.seq <= through)
    found = conn.execute(stmt).all()
    return [(seq, _unpack(tx_id, body)) for seq, tx_id, body in found]


def fold_unpacked(conn: Connection, unpacked: Sequence[tuple[int, list[PackedRow]]]) -> int:
    """Fold the transactions :func:`unpacked_pending` read that are still pending (another
    fold may have moved some since), inside the caller's write transaction; returns rows
    moved. The unpacking was done before the write lock was taken."""
    p = schema.pending
    seqs = [seq for seq, _ in unpacked]
    # a seq is reused once its row is folded and deleted (SQLite's rowid): a row is still
    # the one read only when its transaction id is the same too
    now = dict(conn.execute(select(p.c.seq, p.c.transaction_id).where(p.c.seq.in_(seqs))).all())
    still = {seq for seq, rows in unpacked
             if seq in now and rows and rows[0][ROW_TRANSACTION] == now[seq]}
    packed = [row for seq, rows in unpacked if seq in still for row in rows]
    if not still:
        return 0
    insert_many(conn, schema.changes, packed, ignore_existing=True)
    conn.execute(p.delete().where(p.c.seq.in_(sorted(still))))
    return len(packed)


def store(conn: Connection, rows: Sequence[PackedRow], *, ignore_existing: bool = False
          ) -> None:
    """Insert packed rows into the indexed log (``ignore_existing``: skip rows it holds)."""
    insert_many(conn, schema.changes, rows, ignore_existing=ignore_existing)


def is_empty(conn: Connection) -> bool:
    """Whether the log holds nothing: no change, pending or not, and no transaction."""
    return all(conn.execute(select(t.c[0]).limit(1)).first() is None
               for t in (schema.changes, schema.pending, schema.transactions))


def last_pending(conn: Connection) -> int | None:
    """The seq of the newest pending transaction (``None`` when none is pending)."""
    seq: int | None = conn.execute(select(func.max(schema.pending.c.seq))).scalar()
    return seq


def pending_rows(conn: Connection, *, transaction_ids: Sequence[str] | None = None,
                 entity: tuple[str, str] | None = None) -> list[PackedRow]:
    """Packed rows still in ``dimple_pending`` (of some transactions, or of one entity)."""
    p = schema.pending
    stmt = select(p.c.transaction_id, p.c.body).order_by(p.c.seq)
    if transaction_ids is not None:
        stmt = stmt.where(p.c.transaction_id.in_(list(transaction_ids)))
    if entity is not None:
        etype, eid = entity
        stmt = stmt.where(p.c.body.contains(eid, autoescape=True))
    out: list[PackedRow] = []
    for tx_id, body in conn.execute(stmt).all():  # fetched first: the statement ends at once
        rows = _unpack(tx_id, body)
        if entity is not None:
            rows = [r for r in rows
                    if r[ROW_ENTITY_TYPE] == etype and r[ROW_ENTITY_ID] == eid]
        out.extend(rows)
    return out


def all_rows(conn: Connection) -> list[PackedRow]:
    """Every packed row of the log, indexed or pending (for tools and tests)."""
    c = schema.changes
    return [tuple(r) for r in conn.execute(select(c))] + pending_rows(conn)


def raise_clock_floor(conn: Connection, newest: str) -> None:
    """Keep ``newest`` (the newest id a merge stored) in ``dimple_meta.clock``.

    Pulled runs from several authors can interleave so that the packed row with the newest
    first id does not hold the newest change id; this floor lets a restarted clock still
    issue ids above every pulled one.
    """
    meta.raise_floor(conn, meta.get(conn, meta.CLOCK), newest)


def expand(row: Sequence[Any]) -> list[ChangeRow]:
    """The per-attribute change records of one packed row."""
    first, tx, etype, eid, names_json, olds_json, news_json = row[:7]
    names = _loads(names_json)
    olds = _texts(olds_json)
    news = _texts(news_json)
    return [
        (offset_id(first, k), tx, etype, eid, names[k], olds[k], news[k])
        for k in range(len(names))
    ]


def expand_all(rows: Iterable[Sequence[Any]]) -> list[ChangeRow]:
    out: list[ChangeRow] = []
    for r in rows:
        out.extend(expand(r))
    return out


def pack(changes: Sequence[ChangeRow],
         into: dict[tuple[str, str], list[ChangeRow]] | None = None) -> list[PackedRow]:
    """Fold per-attribute records (in id order within each transaction) into packed rows.

    A run continues while the transaction and entity stay the same and each id is the
    previous one plus one counter step. With ``into``, each run is also appended to
    ``into[(entity_type, entity_id)]`` (how the merge groups incoming changes by entity).
    """
    out: list[PackedRow] = []
    append = out.append
    names_cache: dict[tuple[str, ...], str] = {}
    hexi = _HEXI
    i, n = 0, len(changes)
    while i < n:
        first = changes[i]
        a, tx, etype, eid = first[:4]
        prefix, tail, digit = a[:26], a[27:], hexi.get(a[26], -2)
        j = i + 1
        while j < n:
            c = changes[j]
            if c[ROW_ENTITY_ID] != eid or c[ROW_ENTITY_TYPE] != etype or c[ROW_TRANSACTION] != tx:
                break
            b = c[ROW_ID]
            # fast path: only the last counter digit moved by one (the 9 hex digits after it
            # are the run's random bits); else the exact check
            if b[:26] == prefix and b[27:] == tail and hexi.get(b[26]) == digit + 1:
                digit += 1
            elif is_next_id(a, b):
                prefix, tail, digit = b[:26], b[27:], hexi.get(b[26], -2)
            else:
                break
            a = b
            j += 1
        run = list(changes[i:j])
        names = tuple([c[ROW_ATTRIBUTE] for c in run])
        names_json = names_cache.get(names)
        if names_json is None:
            names_json = names_cache[names] = _dumps(list(names))
        append((first[ROW_ID], tx, etype, eid, names_json,
                json_array([c[ROW_OLD] for c in run]), json_array([c[ROW_NEW] for c in run])))
        if into is not None:
            got = into.get((etype, eid))
            if got is None:
                into[(etype, eid)] = run
            else:
                got.extend(run)
        i = j
    return out


def transaction_ids(conn: Connection, author: str, after: str | None = None) -> list[str]:
    """The ids of ``author``'s transactions above ``after`` (all when ``None``), ascending."""
    t = schema.transactions
    stmt = select(t.c.id).where(t.c.author == author)
    if after:
        stmt = stmt.where(t.c.id > after)
    return list(conn.execute(stmt.order_by(t.c.id)).scalars())


def transactions_of(conn: Connection, author: str, tx_ids: Sequence[str]) -> list[TxRecord]:
    """The transactions ``tx_ids`` (ascending ids of ``author``'s), with their changes, for
    a bundle.

    Consistent without a snapshot (a caller may read outside any transaction, so that a
    long read never delays a commit): the pending rows are read first, then the log, and a
    transaction that :func:`fold` moved in between (found twice) is kept once; a fold only
    ever moves rows from ``dimple_pending`` into the log, so none can be missed.
    """
    c = schema.changes
    by_tx: dict[str, list[ChangeRow]] = defaultdict(list)
    twice: set[str] = set()
    for chunk in chunks(tx_ids):
        pending = {prow[ROW_TRANSACTION] for prow in
                   _collect(by_tx, pending_rows(conn, transaction_ids=chunk))}
        # fetched before expanding: the statement (and SQLite's shared lock) ends at once
        for row in conn.execute(select(c).where(c.c.transaction_id.in_(chunk))).all():
            if row[ROW_TRANSACTION] in pending:
                twice.add(row[ROW_TRANSACTION])
            by_tx[row[ROW_TRANSACTION]].extend(expand(row))
    out: list[TxRecord] = []
    for tx in tx_ids:
        changes = by_tx.get(tx, [])
        if tx in twice:
            changes = list(set(changes))
        changes.sort()
        out.append((tx, author, changes))
    return out


def _collect(by_tx: dict[str, list[ChangeRow]], rows: list[PackedRow]) -> list[PackedRow]:
    for row in rows:
        by_tx[row[ROW_TRANSACTION]].extend(expand(row))
    return rows


def transactions_since(conn: Connection, author: str, after: str | None, *,
                       first: str | None = None, last: str | None = None) -> list[TxRecord]:
    """``author``'s transactions with an id above ``after`` (and, when given, from ``first``
    through ``last``), oldest first, for a bundle."""
    ids = transaction_ids(conn, author, after)
    if first is not None or last is not None:
        ids = [i for i in ids if (first is None or i >= first) and (last is None or i <= last)]
    return transactions_of(conn, author, ids)


def entity_changes(conn: Connection, keys: Iterable[tuple[str, str]]
                   ) -> dict[tuple[str, str], list[ChangeRow]]:
    """Every logged change of each (entity_type, entity_id), in id order.

    Folds pending transactions first, so ``conn`` must be in a write transaction.
    """
    fold(conn)
    c = schema.changes
    by_type: dict[str, list[str]] = defaultdict(list)
    for etype, eid in keys:
        by_type[etype].append(eid)
    out: dict[tuple[str, str], list[ChangeRow]] = defaultdict(list)
    for etype, eids in by_type.items():
        for chunk in chunks(eids):
            stmt = select(c).where(c.c.entity_type == etype, c.c.entity_id.in_(chunk))
            for row in conn.execute(stmt):
                out[(row[ROW_ENTITY_TYPE], row[ROW_ENTITY_ID])].extend(expand(row))
    for v in out.values():
        v.sort()
    return out


def history(conn: Connection, entity_type: str, entity_id: str) -> list[Change]:
    """Every logged change of one entity, oldest first, with authors."""
    c, t = schema.changes, schema.transactions
    stmt = (
        select(c, t.c.author)
        .join(t, t.c.id == c.c.transaction_id)
        .where(c.c.entity_type == entity_type, c.c.entity_id == entity_id)
    )
    out: list[Change] = []
    found = [(tuple(row[:7]), row[7]) for row in conn.execute(stmt)]
    pend = pending_rows(conn, entity=(entity_type, entity_id))
    if pend:
        authors = dict(conn.execute(select(t.c.id, t.c.author).where(
            t.c.id.in_({r[ROW_TRANSACTION] for r in pend}))).all())
        found.extend((r, authors.get(r[ROW_TRANSACTION], "")) for r in pend)
    for row, author in found:
        out.extend(change_from_row(r, author) for r in expand(row))
    out.sort(key=lambda ch: ch.id)
    return out
