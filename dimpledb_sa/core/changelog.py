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

A local commit does not insert its packed rows into the indexed ``dimple_changes`` at once,
nor its ``dimple_transactions`` row: :func:`write_pending` writes one ``dimple_pending`` row
(its author and one JSON body), in the same database transaction as the data, and
:func:`fold` moves pending transactions into the indexed log and the transaction table
before a merge, a replay or an adoption, every ``PENDING_LIMIT`` commits, and during a push
(:func:`unpacked_pending` read without a lock, then :func:`fold_unpacked`, a few
transactions per short write transaction). Readers that cannot write (history, a push's
reads, the external watcher, tools) also read :func:`pending_rows`, and every reader of
transactions by id or author reads :func:`known_transactions` (both tables in one
statement). :func:`ensure_pending_author` adds ``dimple_pending.author`` to a database an
earlier version made (whose pending rows came with their ``dimple_transactions`` rows).

``prune_history`` stores old winning changes whose values the live rows hold without them
(new values :data:`DROPPED`, see :mod:`.restore`): such rows are left out of the
transaction index (a partial index), and on SQLite hold their transaction id as an offset
from their first id. Every read here gives them their values back from the live rows
(:func:`.restore.fill`), reads by transaction included (a scan of the value-less rows
when the transactions are older than the prune that dropped values); only ``raw=True``
reads (prune's own, :func:`valueless_of`) see them as they are. :func:`entity_changes`,
which merges, undo and the rules read before they write, stores their values back first.
``dimple_meta.layout_version`` (:data:`LAYOUT_VERSION`) says which layout the database is
in; a build finding a newer one refuses (:func:`_ready`).
"""

from __future__ import annotations

import hashlib
import json
import struct
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from json.encoder import encode_basestring_ascii as _esc
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    Connection,
    Subquery,
    bindparam,
    delete,
    func,
    inspect,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.schema import CreateColumn

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
from .clock import is_next_id, offset_id, run_ids
from .errors import DimpleError
from .floor import issued
from .floor import start as start_commit
from .pending import build as pending_body
from .pending import json_array, run_last
from .pending import rows as body_rows
from .rows import chunks, insert_many
from .runs import Runs, array_texts, canonical_uuids, encode_compact, old_texts
from .values import holds_nul, json_texts

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from .replica import Replica

__all__ = [
    "DROPPED",
    "LAYOUT_VERSION",
    "ChangeRow",
    "Group",
    "LocalWrite",
    "PackedRow",
    "TxRecord",
    "all_rows",
    "all_transactions",
    "count_transactions",
    "delete_rows",
    "ensure_partial_index",
    "ensure_pending_author",
    "entity_changes",
    "expand",
    "expand_all",
    "fold",
    "fold_unpacked",
    "forget_dropped_gate",
    "has_changes_of",
    "history",
    "id_bytes",
    "id_text",
    "is_empty",
    "iter_rows",
    "json_array",
    "known_transactions",
    "last_pending",
    "logged_entities",
    "mark_layout",
    "names_list",
    "pack",
    "packed_transactions_of",
    "pending_rows",
    "raise_clock_floor",
    "rename_attribute",
    "rows_of_entities",
    "rows_of_transactions",
    "select_rows",
    "store",
    "store_runs",
    "transaction_authors",
    "transaction_ids",
    "transactions_of",
    "transactions_since",
    "transactions_touching",
    "unpacked_pending",
    "upgrade",
    "valueless_batches",
    "valueless_of",
    "valueless_rows",
    "write_local",
    "write_pending",
]

PackedRow = tuple[str, str, str, str, str, str, str]
"""(first_id, transaction_id, entity_type, entity_id, attributes, old_values, new_values):
the first four positions are a ChangeRow's (``ROW_ID`` ... ``ROW_ENTITY_ID``), the last
three JSON arrays (``PACKED_ATTRIBUTES``, ``PACKED_OLDS``, ``PACKED_NEWS``)."""
PACKED_ATTRIBUTES: Final = 4
PACKED_OLDS: Final = 5
PACKED_NEWS: Final = 6

DROPPED: Final = ""
"""The stored new values of a row whose values ``prune_history`` dropped (not JSON: nothing
decodes it by mistake); :func:`expand` of such a row (a ``raw`` read) gives each change
this as its new value. See :mod:`.restore`."""

LAYOUT_VERSION: Final = 3
"""The layout of the bookkeeping tables this build writes and reads, kept in
``dimple_meta.layout_version``: 1 the first release's log, 2 the packed log, 3 the packed
log with value-less rows and a partial transaction index. Written by ``create_all`` and by
the first write of this build through each engine (a commit, a pull, a prune: an upgrade);
checked by the first read or write through each engine: a database with a higher one is
refused."""

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


def _texts(array_json: str) -> list[str | None]:
    return json_texts(_loads(array_json))


PENDING_LIMIT = 256
"""Local transactions kept in ``dimple_pending`` before a commit folds them into the log."""


def write_local(replica: Replica, conn: Connection, groups: Sequence[Group]
                ) -> list[PackedRow]:
    """:func:`write_pending`, returning the packed rows written."""
    return write_pending(replica, conn, groups).rows()


class LocalWrite:
    """One local transaction :func:`write_pending` wrote: its id, its tables (sorted), and
    its packed rows, made from its groups only when :meth:`rows` is called."""

    __slots__ = ("changes", "groups", "tables", "tx_id")

    def __init__(self, tx_id: str, tables: list[str], groups: Sequence[Group],
                 changes: int) -> None:
        self.tx_id = tx_id
        self.tables = tables
        self.groups = groups
        self.changes = changes

    def rows(self) -> list[PackedRow]:
        """The packed rows, each group's first id the next step of the transaction's run."""
        tx_id = self.tx_id
        ids = run_ids(tx_id, 1 + self.changes)
        rows: list[PackedRow] = []
        append = rows.append
        at = 1
        for etype, eid, names, olds, news in self.groups:
            append((
                ids[at] if at < len(ids) else offset_id(tx_id, at), tx_id, etype, eid,
                names if type(names) is str else _dumps(names),
                olds if type(olds) is str else json_array(olds),
                json_array(news),
            ))
            at += len(news)
        return rows


def write_pending(replica: Replica, conn: Connection, groups: Sequence[Group]
                  ) -> LocalWrite:
    """Issue ids for one local transaction's groups and write it.

    The transaction goes to ``dimple_pending`` as one row with its author and its body (see
    :mod:`.pending`: its ids are one run, the transaction id first, then each group's
    changes in order), and nothing else (:func:`fold` writes its ``dimple_transactions``
    row). The clock first observes the database's clock floor (every id the database holds
    is at or below it, see :mod:`.floor`), so ids keep growing across restarts, across
    processes sharing the database and after pulls by any of them; the author id is read
    with it, so a commit made after ``dimpledb reauthor`` by a handle opened before it
    records the new id. Ids are issued in commit order across processes: SQLite's write
    lock is held from the flush's first write, and on PostgreSQL the floor's and author's
    rows stay locked until the commit.
    """
    if _READY.get(conn.engine) is not True:  # once per engine: the layout check and mark
        _ready(conn, write=True)
    clock = replica.clock
    floor, stored_author = start_commit(conn)
    if floor:
        clock.observe(floor)
    author = replica.author_on(conn, stored_author)
    body, changes, tables = pending_body(groups)
    if holds_nul(body):
        _refuse_nul(groups)
    tx_id = clock.reserve_runs([1 + changes])[0]
    last = clock.last
    assert last is not None
    issued(conn, floor, last, author)
    seq = _insert_transaction(conn, tx_id, author,
                              "[" + ",".join([_esc(t) for t in tables]) + "]", body)
    if seq is not None and seq % PENDING_LIMIT == 0:
        fold(conn)
    return LocalWrite(tx_id, tables, groups, changes)


def _refuse_nul(groups: Sequence[Group]) -> None:
    """Raise ``ValueError`` naming the first row of ``groups`` with a NUL character in a
    text (:func:`.values.holds_nul`: no replica accepts one)."""
    for etype, eid, names, olds, news in groups:
        body = pending_body([(etype, eid, names, olds, news)])[0]
        if holds_nul(body):
            raise ValueError(
                f"a value of {etype!r} row {eid!r:.80} holds the character NUL (U+0000): "
                "PostgreSQL cannot store it, so no replica accepts it in a text value")
    raise ValueError("a value holds the character NUL (U+0000)")  # pragma: no cover


_SQLITE_PENDING = ("INSERT INTO dimple_pending (transaction_id, author, tables, body) "
                   "VALUES (?, ?, ?, ?)")


def _insert_transaction(conn: Connection, tx_id: str, author: str, tables: str,
                        body: str) -> int | None:
    """Insert a local transaction's pending row; returns its ``seq``."""
    if conn.info.get(_AUTHOR_KEY) is not True:
        ensure_pending_author(conn)
    if conn.dialect.name == "sqlite":  # a plain statement, its SQL written once
        seq: int | None = conn.exec_driver_sql(_SQLITE_PENDING, (tx_id, author, tables, body)
                                               ).lastrowid
        return seq
    p = schema.pending
    key = conn.execute(p.insert().values(transaction_id=tx_id, author=author, tables=tables,
                                         body=body)).inserted_primary_key
    return key[0] if key else None


_AUTHOR_KEY = "dimpledb_sa.pending_author"
"""``Connection.info`` key: ``True`` once the database was seen with ``dimple_pending.author``
(a column, once there, stays), or a weak reference to the transaction that added it (which
may still roll back)."""


def _has_pending_author(conn: Connection) -> bool:
    """Whether ``dimple_pending`` has its ``author`` column, as ``conn``'s transaction sees
    it (a missing table has none); a yes is kept for the DBAPI connection."""
    kept = conn.info.get(_AUTHOR_KEY)
    if kept is True:
        return True
    if kept is not None:
        adding = kept()
        if adding is not None and adding is conn.get_transaction():
            return True  # added by this transaction, not committed yet: not kept
    try:
        names = {c["name"] for c in inspect(conn).get_columns(schema.pending.name)}
    except NoSuchTableError:
        return False
    if "author" not in names:
        return False
    conn.info[_AUTHOR_KEY] = True
    return True


def ensure_pending_author(conn: Connection) -> None:
    """Add ``dimple_pending.author`` where an earlier version made the table without it, in
    ``conn``'s transaction (its rows keep a null author: their ``dimple_transactions`` rows
    were written with them)."""
    if _has_pending_author(conn):
        return
    dialect = conn.dialect
    column = CreateColumn(schema.pending.c.author).compile(dialect=dialect)
    table = dialect.identifier_preparer.format_table(schema.pending)
    guard = " IF NOT EXISTS" if dialect.name == "postgresql" else ""  # SQLite: write lock
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN{guard} {column}")
    tx = conn.get_transaction()
    conn.info[_AUTHOR_KEY] = None if tx is None else weakref.ref(tx)


def _array(values: list[Any]) -> str:
    return json_array(json_texts(values))


def _unpack(tx_id: str, body: str) -> list[PackedRow]:
    """The packed rows of a pending body, with the canonical text of each array (spelled
    column by column: :func:`~.runs.old_texts`, :func:`~.runs.array_texts`)."""
    found = body_rows(tx_id, body)
    if not found:
        return []
    firsts, etypes, eids, namess, oldss, newss = zip(*found, strict=True)
    names_json: dict[tuple[str, ...], str] = {}  # a transaction repeats a few lists
    keys = list(map(tuple, namess))
    for key in set(keys):
        names_json[key] = _dumps(list(key))
    return list(zip(firsts, repeat(tx_id), etypes, eids, map(names_json.__getitem__, keys),
                    old_texts(oldss), array_texts(newss)))


def fold(conn: Connection, limit: int | None = None) -> int:
    """Move every pending local transaction (or the ``limit`` oldest) into the indexed log;
    returns rows moved.

    Runs inside the caller's (write) transaction; readers that cannot write use
    :func:`pending_rows` instead.
    """
    p = schema.pending
    stmt = select(p.c.seq, p.c.transaction_id, p.c.body, _author_of_pending(conn)
                  ).order_by(p.c.seq)
    found = conn.execute(stmt if limit is None else stmt.limit(limit)).all()
    if not found:
        return 0
    packed: list[PackedRow] = []
    for _, tx_id, body, _author in found:
        packed.extend(_unpack(tx_id, body))
    _insert_folded(conn, [(tx_id, author) for _, tx_id, _, author in found], packed)
    conn.execute(p.delete().where(p.c.seq <= found[-1][0]))
    return len(packed)


def _author_of_pending(conn: Connection) -> Any:
    """``dimple_pending.author`` for a select, or a null where the column is missing."""
    p = schema.pending
    return p.c.author if _has_pending_author(conn) else null().label("author")


def _insert_folded(conn: Connection, txs: Sequence[tuple[str, str | None]],
                   packed: Sequence[PackedRow]) -> None:
    """Store folded transactions: their ``dimple_transactions`` rows (but those of rows an
    earlier version wrote, null author: it wrote them at commit) and their packed rows (a
    concurrent fold may have stored them already), and keep the clock floor."""
    insert_many(conn, schema.transactions,
                [(tx, author) for tx, author in txs if author is not None],
                ignore_existing=True)
    store(conn, packed, ignore_existing=True)
    _keep_floor(conn, packed)


def _keep_floor(conn: Connection, packed: Sequence[PackedRow]) -> None:
    """Raise ``dimple_meta.clock`` to the last id of folded local rows (commit order is
    id order, so the last row holds the newest): once their pending row is gone, the clock
    floor (:mod:`.floor`) still covers them."""
    if packed:
        last = packed[-1]
        newest = run_last(last[ROW_ID], _loads(last[PACKED_ATTRIBUTES]))
        meta.raise_floor(conn, meta.get(conn, meta.CLOCK), newest)


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
    now = {seq: (tx, author) for seq, tx, author in conn.execute(
        select(p.c.seq, p.c.transaction_id, _author_of_pending(conn)).where(p.c.seq.in_(seqs)))}
    still = {seq for seq, rows in unpacked
             if seq in now and rows and rows[0][ROW_TRANSACTION] == now[seq][0]}
    packed = [row for seq, rows in unpacked if seq in still for row in rows]
    if not still:
        return 0
    _insert_folded(conn, [now[seq] for seq in sorted(still)], packed)
    conn.execute(p.delete().where(p.c.seq.in_(sorted(still))))
    return len(packed)


def is_empty(conn: Connection) -> bool:
    """Whether the log holds nothing: no change, pending or not, and no transaction."""
    return all(conn.execute(select(t.c[0]).limit(1)).first() is None
               for t in (schema.changes, schema.pending, schema.transactions))


def last_pending(conn: Connection) -> int | None:
    """The seq of the newest pending transaction (``None`` when none is pending)."""
    seq: int | None = conn.execute(select(func.max(schema.pending.c.seq))).scalar()
    return seq


def pending_rows(conn: Connection, *, transaction_ids: Sequence[str] | None = None,
                 entity: tuple[str, str] | None = None,
                 entity_types: Sequence[str] | None = None) -> list[PackedRow]:
    """Packed rows still in ``dimple_pending`` (of some transactions, or of one entity, or
    of the transactions that changed some of ``entity_types``: their other rows too)."""
    p = schema.pending
    stmt = select(p.c.transaction_id, p.c.body).order_by(p.c.seq)
    if entity_types is not None:
        stmt = stmt.where(or_(*(p.c.tables.contains(_esc(t), autoescape=True)
                                for t in entity_types)))
    if transaction_ids is not None:
        stmt = stmt.where(p.c.transaction_id.in_(list(transaction_ids)))
    if entity is not None:
        etype, eid = entity
        # (as the body spells it: JSON, non-ASCII, quotes and backslashes escaped; or as is)
        stmt = stmt.where(or_(p.c.body.contains(eid, autoescape=True),
                              p.c.body.contains(_esc(eid)[1:-1], autoescape=True)))
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
    return [row for batch in iter_rows(conn) for row in batch] + pending_rows(conn)


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
    if news_json == DROPPED:
        return [(cid, tx, etype, eid, name, old, DROPPED) for cid, name, old in zip(
            run_ids(first, len(names)), names, _texts(olds_json), strict=True)]
    return [
        (cid, tx, etype, eid, name, old, new)
        for cid, name, old, new in zip(run_ids(first, len(names)), names, _texts(olds_json),
                                       _texts(news_json), strict=True)
    ]


def names_list(names_json: str) -> list[str]:
    """The attribute names of a packed row's names JSON."""
    names: list[str] = _loads(names_json)
    return names


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
    nexts = _NEXT_DIGIT
    nulls = _NULL_TEXT
    join = ",".join
    i, n = 0, len(changes)
    while i < n:
        first = changes[i]
        a, tx, etype, eid = first[:4]
        j = i + 1
        if j < n:
            # fast path: only the last counter digit moves by one (the 9 hex digits after
            # it are the run's random bits); else the exact check
            head, tail, digit = a[:26], a[27:], nexts.get(a[26:27])
            while j < n:
                c = changes[j]
                if c[ROW_ENTITY_ID] != eid or c[ROW_ENTITY_TYPE] != etype \
                        or c[ROW_TRANSACTION] != tx:
                    break
                b = c[ROW_ID]
                if digit is not None and b == head + digit + tail:
                    digit = nexts.get(digit)
                elif is_next_id(a, b):
                    head, tail, digit = b[:26], b[27:], nexts.get(b[26:27])
                else:
                    break
                a = b
                j += 1
        run = list(changes[i:j])
        names = tuple([c[ROW_ATTRIBUTE] for c in run])
        names_json = names_cache.get(names)
        if names_json is None:
            names_json = names_cache[names] = _dumps(list(names))
        olds = [c[ROW_OLD] for c in run]
        news = [c[ROW_NEW] for c in run]
        olds_json = nulls.get(j - i) if olds.count(None) == j - i else None  # an insert
        if olds_json is None:
            olds_json = "[" + join(["null" if t is None else t for t in olds]) + "]"
        append((first[ROW_ID], tx, etype, eid, names_json, olds_json,
                "[" + join(["null" if t is None else t for t in news]) + "]"))
        if into is not None:
            got = into.get((etype, eid))
            if got is None:
                into[(etype, eid)] = run
            else:
                got.extend(run)
        i = j
    return out


_NEXT_DIGIT: Final = dict(zip("0123456789abcde", "123456789abcdef", strict=True))
"""A counter's last hex digit -> the next one ('f' has none here: the carry is left to the
exact check)."""


def known_transactions(conn: Connection) -> Subquery:
    """Every transaction the log knows, as a subquery of ``(id, author)``: the rows of
    ``dimple_transactions`` and the pending transactions (whose rows :func:`fold` writes).

    One statement reads both tables, so a fold running meanwhile cannot hide one (it moves
    a transaction from one to the other in one write transaction). Pending rows an earlier
    version wrote (null author) are left out: their ``dimple_transactions`` row is there.
    """
    t, p = schema.transactions, schema.pending
    if not _has_pending_author(conn):  # an earlier version's table: every row is in t
        return select(t.c.id, t.c.author).subquery("known")
    return union_all(
        select(t.c.id, t.c.author),
        select(p.c.transaction_id.label("id"), p.c.author).where(p.c.author.is_not(None)),
    ).subquery("known")


def transaction_ids(conn: Connection, author: str, after: str | None = None, *,
                    first: str | None = None, last: str | None = None) -> list[str]:
    """The ids of ``author``'s transactions above ``after`` (all when ``None``) and from
    ``first`` through ``last`` (when given), ascending, folded or pending."""
    k = known_transactions(conn)
    stmt = select(k.c.id).where(k.c.author == author)
    if after:
        stmt = stmt.where(k.c.id > after)
    if first is not None:
        stmt = stmt.where(k.c.id >= first)
    if last is not None:
        stmt = stmt.where(k.c.id <= last)
    return list(conn.execute(stmt.order_by(k.c.id)).scalars())


def transaction_authors(conn: Connection, tx_ids: Iterable[str],
                        author: str | None = None) -> dict[str, str]:
    """Transaction id -> author, for those of ``tx_ids`` the log knows, folded or pending
    (only ``author``'s when given)."""
    k = known_transactions(conn)
    out: dict[str, str] = {}
    for chunk in chunks(sorted(set(tx_ids))):
        stmt = select(k.c.id, k.c.author).where(k.c.id.in_(chunk))
        if author is not None:
            stmt = stmt.where(k.c.author == author)
        out.update((tx, who) for tx, who in conn.execute(stmt))
    return out


def count_transactions(conn: Connection, author: str, after: str | None = None
                       ) -> tuple[int, str | None]:
    """How many transactions of ``author`` (above ``after``) the log knows, folded or
    pending, and the oldest one's id."""
    k = known_transactions(conn)
    stmt = select(func.count(), func.min(k.c.id)).where(k.c.author == author)
    if after:
        stmt = stmt.where(k.c.id > after)
    count, oldest = conn.execute(stmt).one()
    return int(count), oldest


def all_transactions(conn: Connection) -> list[tuple[str, str]]:
    """Every transaction the log knows, folded or pending, as (id, author) in id order (for
    tools and tests)."""
    k = known_transactions(conn)
    return [(tx, author) for tx, author in conn.execute(select(k).order_by(k.c.id))]


def transactions_of(conn: Connection, author: str, tx_ids: Sequence[str]) -> list[TxRecord]:
    """The transactions ``tx_ids`` (ascending ids of ``author``'s), with their changes, for
    a bundle.

    Consistent without a snapshot (a caller may read outside any transaction, so that a
    long read never delays a commit): the pending rows are read first, then the log, and a
    transaction that :func:`fold` moved in between (found twice) is kept once; a fold only
    ever moves rows from ``dimple_pending`` into the log, so none can be missed.
    """
    by_tx: dict[str, list[ChangeRow]] = defaultdict(list)
    twice: set[str] = set()
    for chunk in chunks(tx_ids):
        pending = _pending_changes(conn, chunk, by_tx)
        # fetched before expanding: the statement (and SQLite's shared lock) ends at once
        for row in rows_of_transactions(conn, chunk):
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


def packed_transactions_of(conn: Connection, tx_ids: Sequence[str]
                           ) -> list[tuple[str, list[PackedRow]]]:
    """The transactions ``tx_ids`` (ascending ids) with their packed rows, sorted by first
    id, for a bundle of runs: what :func:`transactions_of` reads, as rows (value-less
    ones with their values, see :func:`rows_of_transactions`), not change records.

    Consistent without a snapshot, as :func:`transactions_of` is: the pending rows are
    read first, then the log, and the rows of a transaction found in both are kept once.
    """
    by_tx: dict[str, list[PackedRow]] = defaultdict(list)
    twice: set[str] = set()
    p = schema.pending
    for chunk in chunks(tx_ids):
        found = conn.execute(select(p.c.transaction_id, p.c.body)
                             .where(p.c.transaction_id.in_(list(chunk)))).all()
        for tx, body in found:
            by_tx[tx].extend(_unpack(tx, body))
        pending = {tx for tx, _ in found}
        for row in rows_of_transactions(conn, chunk):
            if row[ROW_TRANSACTION] in pending:
                twice.add(row[ROW_TRANSACTION])
            by_tx[row[ROW_TRANSACTION]].append(row)
    out: list[tuple[str, list[PackedRow]]] = []
    for tx in tx_ids:
        rows = by_tx.get(tx, [])
        if tx in twice:  # folded meanwhile: the changes once, packed anew
            rows = pack(sorted(set(expand_all(rows))))
        rows.sort()
        out.append((tx, rows))
    return out


def _pending_changes(conn: Connection, tx_ids: Sequence[str],
                     by_tx: dict[str, list[ChangeRow]]) -> set[str]:
    """Add the changes of those of ``tx_ids`` still pending to ``by_tx`` (what
    :func:`expand` makes of :func:`pending_rows`, each body parsed once); returns their
    ids."""
    p = schema.pending
    found = conn.execute(select(p.c.transaction_id, p.c.body)
                         .where(p.c.transaction_id.in_(list(tx_ids)))).all()
    for tx, body in found:
        out = by_tx[tx]
        for first, etype, eid, names, olds, news in body_rows(tx, body):
            out.extend((cid, tx, etype, eid, name, old, new) for cid, name, old, new in zip(
                run_ids(first, len(names)), names, json_texts(olds), json_texts(news),
                strict=True))
    return {tx for tx, _ in found}


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

    Folds pending transactions first, so ``conn`` must be in a write transaction. Its
    callers (merges, undo, the rules) write these entities next: the values of their
    value-less rows are read back from the live rows and stored into the log first
    (:mod:`.restore`).
    """
    fold(conn)
    by_type: dict[str, list[str]] = defaultdict(list)
    for etype, eid in keys:
        by_type[etype].append(eid)
    out: dict[tuple[str, str], list[ChangeRow]] = defaultdict(list)
    for etype, eids in by_type.items():
        rows = rows_of_entities(conn, etype, eids, raw=True)
        dropped = [i for i, r in enumerate(rows) if r[PACKED_NEWS] == DROPPED]
        if dropped:
            from .restore import fill  # restore builds on this module

            gone = [rows[i] for i in dropped]
            fill(conn, rows, dropped)
            delete_rows(conn, gone)
            store(conn, [rows[i] for i in dropped])
        for row in rows:
            out[(row[ROW_ENTITY_TYPE], row[ROW_ENTITY_ID])].extend(expand(row))
    for v in out.values():
        v.sort()
    return out


def history(conn: Connection, entity_type: str, entity_id: str) -> list[Change]:
    """Every logged change of one entity, oldest first, with authors."""
    out: list[Change] = []
    rows = [*rows_of_entities(conn, entity_type, [entity_id]),
            *pending_rows(conn, entity=(entity_type, entity_id))]
    authors = transaction_authors(conn, {r[ROW_TRANSACTION] for r in rows})  # pending too
    for row in rows:
        author = authors.get(row[ROW_TRANSACTION], "")
        out.extend(change_from_row(r, author) for r in expand(row))
    out.sort(key=lambda ch: ch.id)
    return out


# -- the stored form of dimple_changes ---------------------------------------------------
# Everything that reads or writes ``dimple_changes`` goes through the functions below, which
# speak PackedRow (text ids, JSON arrays) and convert at the boundary: on SQLite ids are
# their 16 bytes (and an entity id that is a canonical UUID's text too), the names list is
# a key into ``dimple_names``, old values that are all null are NULL and the entity id's
# own value among the new values is elided (``[,`` starts the stored text then: no JSON
# array does). See :mod:`.schema`.

_NULLS: Final = {"[" + ",".join(["null"] * n) + "]": n for n in range(1, 257)}
_NULL_TEXT: Final = {n: text for text, n in _NULLS.items()}
_NAMES_KEY: dict[str, int] = {}
"""Names JSON -> its key (a pure function of the text)."""
_NAMES_TEXT: dict[int, tuple[str, int]] = {}
"""Key -> (names JSON, how many), for keys read from or checked against a database."""
_CACHE_LIMIT: Final = 4096


_READY: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()
"""The engines whose ``dimple_changes`` was found in the current layout (or moved to it)."""


def _ready(conn: Connection, *, write: bool = False) -> None:
    """Make sure that ``dimple_changes`` is in the current layout before it is used, once
    per engine: a write moves a log of the first release's layout over (:func:`upgrade`, in
    the caller's write transaction), so an app that upgraded the library without
    ``create_all()`` or a new migration keeps working; a read says what to do."""
    engine = conn.engine
    if engine in _READY:
        if write and not _READY[engine]:
            _mark_layout(conn)
        return
    check_layout(conn)
    if _first_layout(conn):
        if not write:
            raise DimpleError(
                "this database's change log is in the first release's layout: call "
                "db.create_all() once (or run a migration with op.create_dimpledb_tables())")
        upgrade(conn)
    _READY[engine] = False
    if write:
        _mark_layout(conn)


def check_layout(conn: Connection) -> None:
    """Raise ``DimpleError`` when ``dimple_meta.layout_version`` says a newer build wrote
    this database in a layout this one does not know."""
    if not inspect(conn).has_table(schema.meta.name):
        return
    found = meta.get(conn, meta.LAYOUT_VERSION)
    if found is None:
        return
    try:
        version = int(found)
    except ValueError:
        version = LAYOUT_VERSION + 1
    if version > LAYOUT_VERSION:
        raise DimpleError(
            f"this database is in layout version {found} (dimple_meta.layout_version), "
            f"newer than this dimpledb-sa reads ({LAYOUT_VERSION}): a newer release wrote "
            "it; upgrade dimpledb-sa to use it")


def mark_layout(conn: Connection) -> None:
    """Check the layout version (:func:`check_layout`) and write :data:`LAYOUT_VERSION`
    where it is missing or lower, in ``conn``'s write transaction (``create_all``)."""
    check_layout(conn)
    _mark_layout(conn)


def _mark_layout(conn: Connection) -> None:
    """Write :data:`LAYOUT_VERSION` into ``dimple_meta`` (in ``conn``'s write transaction)
    where it is missing or lower."""
    found = meta.get(conn, meta.LAYOUT_VERSION)
    if found is None or (found.isdigit() and int(found) < LAYOUT_VERSION):
        meta.put(conn, meta.LAYOUT_VERSION, str(LAYOUT_VERSION))
    _READY[conn.engine] = True


def id_bytes(value: str) -> bytes:
    return bytes.fromhex(value.replace("-", ""))


def id_text(value: bytes) -> str:
    h = value.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _blob_ids(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _stored_id(conn: Connection, value: str) -> str | bytes:
    """An id as ``dimple_changes`` stores it (for a statement's parameter)."""
    return id_bytes(value) if _blob_ids(conn) else value


def _stored_key(conn: Connection, value: str) -> str | bytes:
    """An entity id as ``dimple_changes`` stores it (for a statement's parameter)."""
    return _key_bytes(value) if _blob_ids(conn) else value


def _key_bytes(value: str) -> str | bytes:
    """The 16 bytes of an entity id that is a canonical (lowercase) UUID's text, else the
    id itself."""
    if len(value) != 36 or value[8] != "-" or value[13] != "-" or value[18] != "-" \
            or value[23] != "-":
        return value
    h = value.replace("-", "")
    try:
        b = bytes.fromhex(h)
    except ValueError:
        return value
    return b if len(b) == 16 and b.hex() == h else value


def _names_key(text: str) -> int:
    key = _NAMES_KEY.get(text)
    if key is None:
        if len(_NAMES_KEY) >= _CACHE_LIMIT:
            _NAMES_KEY.clear()
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        key = _NAMES_KEY[text] = int.from_bytes(digest, "big", signed=True)
    return key


def _known_names(conn: Connection, keys: Iterable[int]) -> dict[int, tuple[str, int]]:
    """The names lists (JSON text, length) of ``keys`` that ``dimple_names`` holds, from the
    cache or read (and then cached). The answer is the caller's own dict: another thread
    may clear the cache at its limit at any time."""
    cache = _NAMES_TEXT
    out: dict[int, tuple[str, int]] = {}
    missing: list[int] = []
    for k in set(keys):
        got = cache.get(k)
        if got is None:
            missing.append(k)
        else:
            out[k] = got
    if not missing:
        return out
    if len(cache) + len(missing) > _CACHE_LIMIT:
        cache.clear()
    n = schema.names
    for chunk in chunks(missing):
        for key, text in conn.execute(select(n.c.id, n.c.names).where(n.c.id.in_(chunk))):
            out[key] = cache[key] = (text, len(_loads(text)))
    return out


def _to_stored(conn: Connection, rows: Sequence[PackedRow]) -> list[tuple[Any, ...]]:
    """``rows`` in the column order and form of ``dimple_changes``; makes sure that
    ``dimple_names`` holds every names list they refer to (in ``conn``'s transaction).
    Made column by column (a names key per distinct list, the ids converted in bulk)."""
    if not rows:
        return []
    blob = _blob_ids(conn)
    nulls = _NULLS
    firsts, txs, etypes, eids, names, olds, news = map(list, zip(*rows, strict=True))
    lists: dict[int, str] = {}
    keyed: dict[str, int] = {}
    for text in set(names):
        key = _NAMES_KEY.get(text)
        if key is None:
            key = _names_key(text)
        keyed[text] = key
        lists[key] = text
    stored_olds = [None if o in nulls else o for o in olds]
    # the entity id's own value, when it is the first new value: '"<id>"' is cut out
    # (a pure text cut: reading puts back exactly the same characters)
    ends = _CUT_ENDS
    stored_news = ["[," + n[len(e) + 3:] if n.startswith(e, 2) and n[1] == '"'
                   and n[len(e) + 2:len(e) + 4] in ends else n
                   for e, n in zip(eids, news, strict=True)]
    stored_txs: list[Any]
    if blob:  # the ids' 16 bytes, converted in bulk
        stored_firsts: list[Any] = _ids_bytes(firsts)
        stored_txs = list[Any](_ids_bytes(txs))
        stored_keys: list[Any] = _keys_bytes(eids)
        if "" in news:  # value-less: the transaction as its offset, when it is one
            for i in [i for i, n in enumerate(news) if not n]:
                k = _tx_offset(firsts[i], txs[i])
                if k is not None:
                    stored_txs[i] = k
    else:
        stored_firsts, stored_txs, stored_keys = firsts, txs, eids
    out = list(zip(etypes, stored_keys, stored_firsts, stored_txs,
                   map(keyed.__getitem__, names), stored_olds, stored_news, strict=True))
    _ensure_names(conn, lists)
    return out


_GET_ROW_ID: Final = itemgetter(ROW_ID)
_GET_ROW_TX: Final = itemgetter(ROW_TRANSACTION)
_GET_ROW_ENTITY: Final = itemgetter(ROW_ENTITY_ID)


def _split16(joined: str) -> list[bytes]:
    """The 16-byte values of canonical UUID texts joined."""
    data = bytes.fromhex(joined.replace("-", ""))
    # one cached format for any count (a format per count would stay in struct's cache)
    return list(map(_FIRST, struct.iter_unpack("16s", data)))


def _ids_bytes(values: list[str]) -> list[bytes]:
    """``[id_bytes(v) for v in values]``, in bulk when all are canonical."""
    joined = canonical_uuids(values)
    return list(map(id_bytes, values)) if joined is None else _split16(joined)


def _keys_bytes(values: list[str]) -> list[str | bytes]:
    """``[_key_bytes(v) for v in values]``, in bulk when all are canonical."""
    joined = canonical_uuids(values)
    if joined is None:
        return list(map(_key_bytes, values))
    return list(_split16(joined))


_CUT_ENDS: Final = ('",', '"]')
_RAND_MASK: Final = (1 << 36) - 1


def _counter(n: int) -> int:
    return (((n >> 64) & 0xFFF) << 26) | ((n >> 36) & ((1 << 26) - 1))


def _tx_offset(first: str, tx: str) -> int | None:
    """How many counter steps the transaction id ``tx`` lies before the run ``first`` (same
    milliseconds and random bits, as a local transaction's runs are), or ``None`` when it
    is not such an id."""
    a, b = int(tx.replace("-", ""), 16), int(first.replace("-", ""), 16)
    if a >> 80 != b >> 80 or a & _RAND_MASK != b & _RAND_MASK or a >= b:
        return None
    k = _counter(b) - _counter(a)
    return k if 0 < k < 1 << 31 and offset_id(first, -k) == tx else None


def _ensure_names(conn: Connection, lists: dict[int, str]) -> None:
    insert_many(conn, schema.names, sorted(lists.items()), ignore_existing=True)
    unchecked = {k: t for k, t in lists.items() if k not in _NAMES_TEXT}
    if not unchecked:
        return
    stored = _known_names(conn, unchecked)
    for key, text in unchecked.items():
        got = stored.get(key)
        if got is None or (got[0] != text and _loads(got[0]) != _loads(text)):
            raise DimpleError(f"the names lists {text} and {got and got[0]} share the key "
                              f"{key} in dimple_names")


def _from_stored(conn: Connection, found: Sequence[Sequence[Any]], raw: bool = False
                 ) -> list[PackedRow]:
    """Rows as ``dimple_changes`` stores them, back as PackedRow; value-less rows with their
    values read back from the live rows (:func:`.restore.fill`) unless ``raw``."""
    if not found:
        return []
    out = _from_stored_raw(conn, found)
    if not raw:
        dropped = [i for i, r in enumerate(out) if r[PACKED_NEWS] == DROPPED]
        if dropped:
            from .restore import fill  # restore builds on this module

            fill(conn, out, dropped)
    return out


def _from_stored_raw(conn: Connection, found: Sequence[Sequence[Any]]) -> list[PackedRow]:
    names_of = _known_names(conn, {r[4] for r in found})
    nulls = _NULL_TEXT
    out: list[PackedRow] = []
    append = out.append
    if _blob_ids(conn):
        txs: dict[bytes, str] = {}
        for etype, skey, first, tx, key, olds, news in found:
            eid = skey if type(skey) is str else id_text(skey)
            names, count = names_of[key]
            if news.startswith("[,"):
                news = '["' + eid + '"' + news[2:]
            if type(tx) is int:  # a value-less row's transaction, as its offset
                tfirst = id_text(first)
                append((tfirst, offset_id(tfirst, -tx), etype, eid, names,
                        nulls[count] if olds is None else olds, news))
                continue
            ttx = txs.get(tx)
            if ttx is None:
                ttx = txs[tx] = id_text(tx)
            append((id_text(first), ttx, etype, eid, names,
                    nulls[count] if olds is None else olds, news))
    else:
        for etype, eid, first, tx, key, olds, news in found:
            names, count = names_of[key]
            if news.startswith("[,"):
                news = '["' + eid + '"' + news[2:]
            append((first, tx, etype, eid, names, nulls[count] if olds is None else olds,
                    news))
    return out


def store(conn: Connection, rows: Sequence[PackedRow], *, ignore_existing: bool = False
          ) -> None:
    """Insert packed rows into the indexed log (``ignore_existing``: skip rows it holds)."""
    if rows:
        _ready(conn, write=True)
        insert_many(conn, schema.changes, _to_stored(conn, rows),
                    ignore_existing=ignore_existing)


def store_runs(conn: Connection, runs: Runs) -> list[PackedRow]:
    """:func:`store` of ``runs.rows()`` made column by column from the parsed values: the
    ids converted in bulk, and the new values spelled once, in the stored form (the entity
    id cut out, as :func:`_to_stored` cuts it) when every run's first new value is its
    entity id; returns the rows stored, in text form (``runs.rows()``)."""
    if not len(runs):
        return []
    _ready(conn, write=True)
    olds = old_texts(runs.olds)
    news, cut = _news_texts(runs.entities, runs.news)
    key_of = {text: _names_key(text) for text in dict.fromkeys(runs.names)}
    _ensure_names(conn, {key: text for text, key in key_of.items()})
    if _blob_ids(conn):
        tx_of = {tx: id_bytes(tx) for tx in dict.fromkeys(runs.transactions)}
        ids: tuple[Sequence[Any], Sequence[Any], Sequence[Any]] = (
            _keys_bytes(runs.entities), _ids_bytes(runs.firsts),
            list(map(tx_of.__getitem__, runs.transactions)))
    else:
        ids = (runs.entities, runs.firsts, runs.transactions)
    stored_olds = [None if o in _NULLS else o for o in olds]
    insert_many(conn, schema.changes, list(zip(
        runs.types, *ids, map(key_of.__getitem__, runs.names), stored_olds, cut,
        strict=True)))
    return list(zip(runs.firsts, runs.transactions, runs.types, runs.entities, runs.names,
                    olds, news, strict=True))


_FIRST: Final = itemgetter(0)


def _news_texts(entities: list[str], news: list[list[Any]]) -> tuple[list[str], list[str]]:
    """The JSON texts of the new values ``news`` of rows of ``entities``, and the same as
    stored (:func:`_cut_news`). When every first value is its row's entity id, and the ids
    are as long as each other and need no escaping, the arrays are spelled in one call and
    cut apart where one ends and the next begins (sound when that text has no bracket or
    brace but the arrays' own), and the id is cut out of each at the same place."""
    n = len(news)
    if n and list(map(_FIRST, news)) == entities:
        joined = "".join(entities)
        size = len(entities[0])
        if list(map(len, entities)).count(size) == n and _esc(joined) == f'"{joined}"':
            text = encode_compact(news)
            if text.count("[") == n + 1 and text.count("]") == n + 1 and "{" not in text:
                texts = text[1:-1].replace("],[", "]\0[").split("\0")
                return texts, list(map("[,".__add__, map(itemgetter(slice(size + 3, None)),
                                                         texts)))
    texts = array_texts(news)
    return texts, list(map(_cut_news, entities, texts))


def _cut_news(eid: str, news: str) -> str:
    """A row's new values as ``dimple_changes`` stores them: the entity id's own value,
    when it is the first new value, is cut out (``'"<id>"'``; a pure text cut: reading
    puts back exactly the same characters). :func:`_to_stored` does the same inline."""
    cut = len(eid) + 2
    if news.startswith(eid, 2) and news[1] == '"' and news[cut:cut + 2] in _CUT_ENDS:
        return "[," + news[cut + 1:]
    return news


def select_rows(conn: Connection, *where: Any, raw: bool = False) -> list[PackedRow]:
    """The log's packed rows matching ``where`` (clauses on ``schema.changes`` columns,
    whose parameters are in stored form: see :func:`_stored_id`, :func:`_stored_key`)."""
    _ready(conn)
    return _from_stored(conn, conn.execute(select(schema.changes).where(*where)).all(), raw)


_INDEXED: Final = schema.changes.c.new_values != sql_text("''")
"""The condition of ``ix_dimple_changes_transaction`` (rows whose values are stored), spelt
as the index is, so that a query by transaction can use it."""


def rows_of_transactions(conn: Connection, tx_ids: Sequence[str],
                         entity_types: Sequence[str] | None = None) -> list[PackedRow]:
    """The indexed log's rows of the transactions ``tx_ids`` (of ``entity_types`` only),
    value-less ones included (found by a scan of them, only when some of ``tx_ids`` are
    older than the last prune that dropped values), all with their values."""
    c = schema.changes
    out: list[PackedRow] = []
    for chunk in chunks(list(tx_ids)):
        where = [c.c.transaction_id.in_([_stored_id(conn, t) for t in chunk]), _INDEXED]
        if entity_types is not None:
            where.append(c.c.entity_type.in_(list(entity_types)))
        out.extend(select_rows(conn, *where))
    if tx_ids:
        before = meta.get(conn, meta.VALUES_DROPPED_BEFORE)
        if before is not None and min(tx_ids) < before:
            wanted = set(tx_ids)
            types = None if entity_types is None else set(entity_types)
            found = [r for batch in valueless_batches(conn) for r in batch
                     if r[ROW_TRANSACTION] in wanted and (types is None
                                                           or r[ROW_ENTITY_TYPE] in types)]
            if found:
                from .restore import fill  # restore builds on this module

                fill(conn, found, range(len(found)))
                out.extend(found)
    return out


def valueless_batches(conn: Connection, batch: int = 20_000) -> Iterator[list[PackedRow]]:
    """Every value-less row, as stored (``raw``), in batches in key order."""
    return _scan(conn, [schema.changes.c.new_values == DROPPED], batch, raw=True)


def valueless_rows(conn: Connection, limit: int) -> list[PackedRow]:
    """Up to ``limit`` value-less rows, as stored (``raw``)."""
    _ready(conn)
    c = schema.changes
    return _from_stored(conn, conn.execute(select(c).where(c.c.new_values == DROPPED)
                                           .limit(limit)).all(), raw=True)


_VALUELESS_SQL: Final = (f"SELECT {', '.join(c.name for c in schema.changes.columns)} FROM "
                         f"{schema.changes.name} WHERE entity_type = ? AND new_values = '' "
                         "AND entity_id IN ")


_DROPPED_GATE: Final = "dimpledb_sa.values_dropped"
"""``conn.info`` key: (SQLite's ``data_version`` when last read, whether
:data:`.meta.VALUES_DROPPED_BEFORE` was set then)."""
_GATE_SQL: Final = f"SELECT 1 FROM {schema.meta.name} WHERE key = ?"


def forget_dropped_gate(conn: Connection) -> None:
    """Forget what :func:`valueless_of` knows of ``conn`` (a prune on it drops values:
    SQLite's ``data_version`` does not change for a connection's own commits)."""
    conn.info.pop(_DROPPED_GATE, None)


def valueless_of(conn: Connection, entity_type: str, entity_ids: Sequence[str]
                 ) -> list[PackedRow]:
    """The value-less rows of these entities, as stored (``raw``): one probe of the log's
    primary key per chunk of ids (what capture asks before an update or delete).

    On SQLite none at all while no prune ever dropped a value
    (:data:`.meta.VALUES_DROPPED_BEFORE` unset): that is read again only after another
    connection committed (``PRAGMA data_version`` changed), so a commit on a database never
    pruned pays one pragma."""
    _ready(conn)
    if _blob_ids(conn) and conn.dialect.paramstyle == "qmark":
        # the driver's own cursor: this runs before every flush that updates or deletes,
        # and SQLAlchemy's statement and result set-up cost more than the probe itself
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        # (execute, then the cursor's own fetch: aiosqlite's adapter returns no cursor)
        cursor.execute("PRAGMA data_version")
        version = cursor.fetchone()[0]  # type: ignore[index]
        info = conn.info
        gate = info.get(_DROPPED_GATE)
        if gate is None or gate[0] != version:
            cursor.execute(_GATE_SQL, (meta.VALUES_DROPPED_BEFORE,))
            gate = info[_DROPPED_GATE] = (version, cursor.fetchone() is not None)
        if not gate[1]:
            return []
        out: list[PackedRow] = []
        ids = list(entity_ids)
        for chunk in chunks(ids) if len(ids) > 1 else (ids,):
            keys = _keys_bytes(list(chunk)) if len(chunk) > 1 else [_key_bytes(chunk[0])]
            cursor.execute(_VALUELESS_SQL + ("(?)" if len(chunk) == 1 else
                                             "(" + ",".join("?" * len(chunk)) + ")"),
                           (entity_type, *keys))
            found = cursor.fetchall()
            if found:
                out.extend(_from_stored(conn, found, raw=True))
        return out
    c = schema.changes
    out = []
    for chunk in chunks(list(entity_ids)):
        out.extend(select_rows(conn, c.c.entity_type == entity_type,
                               c.c.entity_id.in_([_stored_key(conn, e) for e in chunk]),
                               c.c.new_values == DROPPED, raw=True))
    return out


def ensure_partial_index(conn: Connection) -> None:
    """Make ``ix_dimple_changes_transaction`` leave out value-less rows where an earlier
    version made it over every row (in ``conn``'s write transaction)."""
    _ready(conn, write=True)
    ix = next(i for i in schema.changes.indexes if i.name == "ix_dimple_changes_transaction")
    if conn.dialect.name == "sqlite":
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'index' AND "
                                   "name = ?", (ix.name,)).scalar()
    elif conn.dialect.name == "postgresql":
        sql = conn.execute(sql_text("SELECT indexdef FROM pg_indexes WHERE indexname = :n "
                                    "AND schemaname = current_schema()"),
                           {"n": ix.name}).scalar()
    else:
        return
    if sql is not None and "WHERE" in str(sql).upper():
        return
    if sql is not None:
        ix.drop(conn)
    ix.create(conn)


def rows_of_entities(conn: Connection, entity_type: str, entity_ids: Sequence[str],
                     raw: bool = False) -> list[PackedRow]:
    """The indexed log's rows of some entities of one type (value-less ones with their
    values read back, unless ``raw``)."""
    c = schema.changes
    out: list[PackedRow] = []
    if _blob_ids(conn) and conn.dialect.paramstyle == "qmark":
        # plain statements: an expanding IN costs SQLAlchemy a step per value, and these
        # columns have no bind or result processing on SQLite
        _ready(conn)
        for chunk in chunks(list(entity_ids)):
            found = conn.exec_driver_sql(
                _ENTITY_ROWS + "(" + ",".join("?" * len(chunk)) + ")",
                (entity_type, *_keys_bytes(list(chunk)))).fetchall()
            out.extend(_from_stored(conn, found, raw))
        return out
    for chunk in chunks(list(entity_ids)):
        out.extend(select_rows(conn, c.c.entity_type == entity_type,
                               c.c.entity_id.in_([_stored_key(conn, e) for e in chunk]),
                               raw=raw))
    return out


_ENTITY_ROWS: Final = (f"SELECT {', '.join(c.name for c in schema.changes.columns)} FROM "
                       f"{schema.changes.name} WHERE entity_type = ? AND entity_id IN ")


def logged_entities(conn: Connection, entity_type: str, entity_ids: Sequence[str]) -> set[str]:
    """The ids among ``entity_ids`` with at least one change in the indexed log."""
    _ready(conn)
    c = schema.changes
    found: set[str] = set()
    for chunk in chunks(list(entity_ids)):
        keys = {_stored_key(conn, e): e for e in chunk}
        found.update(keys[k] for k in conn.execute(select(c.c.entity_id).distinct().where(
            c.c.entity_type == entity_type, c.c.entity_id.in_(list(keys)))).scalars())
    return found


def has_changes_of(conn: Connection, entity_type: str) -> bool:
    """Whether the indexed log holds a change of any entity of ``entity_type``."""
    _ready(conn)
    c = schema.changes
    return conn.execute(select(c.c.entity_type).where(c.c.entity_type == entity_type)
                        .limit(1)).first() is not None


def transactions_touching(conn: Connection, entity_type: str) -> set[str]:
    """The ids of the transactions with an indexed change of an entity of ``entity_type``."""
    _ready(conn)
    c = schema.changes
    found = conn.execute(select(c.c.transaction_id, c.c.id).distinct()
                         .where(c.c.entity_type == entity_type)).all()
    if _blob_ids(conn):
        return {offset_id(id_text(first), -t) if type(t) is int else id_text(t)
                for t, first in found}
    return {t for t, _ in found}


def iter_rows(conn: Connection, below: str | None = None, batch: int = 20_000,
              raw: bool = False) -> Iterator[list[PackedRow]]:
    """Every row of the indexed log (with a first id below ``below``), in batches in key
    order; each batch is read whole before it is handed out (value-less rows with their
    values read back, unless ``raw``)."""
    _ready(conn)
    where = [] if below is None else [schema.changes.c.id < _stored_id(conn, below)]
    return _scan(conn, where, batch, raw)


def _scan(conn: Connection, where: list[Any], batch: int, raw: bool
          ) -> Iterator[list[PackedRow]]:
    """The rows matching ``where``, in batches of ``batch`` in key order (keyset paging)."""
    _ready(conn)
    c = schema.changes
    after: tuple[Any, Any, Any] | None = None
    while True:
        stmt = select(c).where(*where)
        if after is not None:
            stmt = stmt.where(tuple_(c.c.entity_type, c.c.entity_id, c.c.id) > after)
        found = conn.execute(stmt.order_by(c.c.entity_type, c.c.entity_id, c.c.id)
                             .limit(batch)).all()
        if not found:
            return
        after = (found[-1][0], found[-1][1], found[-1][2])
        yield _from_stored(conn, found, raw)
        if len(found) < batch:
            return


def delete_rows(conn: Connection, rows: Iterable[PackedRow]) -> None:
    """Delete these packed rows (by entity and first id) from the indexed log."""
    _ready(conn, write=True)
    c = schema.changes
    keys = [{"t": r[ROW_ENTITY_TYPE], "e": _stored_key(conn, r[ROW_ENTITY_ID]),
             "i": _stored_id(conn, r[ROW_ID])} for r in rows]
    if keys:
        conn.execute(delete(c).where(c.c.entity_type == bindparam("t"),
                                     c.c.entity_id == bindparam("e"),
                                     c.c.id == bindparam("i")), keys)


def rename_attribute(conn: Connection, entity_type: str, old: str, new: str) -> int:
    """Rename attribute ``old`` to ``new`` in the logged changes of ``entity_type``;
    returns how many changes were renamed."""
    _ready(conn, write=True)
    c = schema.changes
    keys = list(conn.execute(select(c.c.names).distinct()
                             .where(c.c.entity_type == entity_type)).scalars())
    lists = _known_names(conn, keys)
    renamed = 0
    for key in keys:
        text, _ = lists[key]
        names: list[str] = _loads(text)
        if old not in names:
            continue
        n = conn.execute(select(func.count()).select_from(c).where(
            c.c.entity_type == entity_type, c.c.names == key)).scalar() or 0
        renamed += names.count(old) * n
        moved = _dumps([new if x == old else x for x in names])
        to = _names_key(moved)
        _ensure_names(conn, {to: moved})
        conn.execute(update(c).where(c.c.entity_type == entity_type, c.c.names == key)
                     .values(names=to))
    return renamed


_V1_COLUMNS: Final = ("id", "transaction_id", "entity_type", "entity_id", "attributes",
                      "old_values", "new_values")
_UPGRADE_BATCH: Final = 50_000


def _first_layout(conn: Connection) -> bool:
    """Whether ``dimple_changes`` exists in the first release's layout (asked afresh: an
    Inspector caches what it read)."""
    insp = inspect(conn)
    name = schema.changes.name
    return bool(insp.has_table(name)
                and "attributes" in {c["name"] for c in insp.get_columns(name)})


def upgrade(conn: Connection) -> bool:
    """Move a change log of the first release's layout (text ids, one ``attributes`` JSON
    per row, a rowid table with two indexes) into the current one, in ``conn``'s
    transaction (SQLite's and PostgreSQL's DDL is transactional: a crash leaves either
    layout whole); returns whether there was one to move (``False`` too when another
    process moved it while this one waited for the write lock). Adds
    ``dimple_pending.author`` first where it is missing (:func:`ensure_pending_author`).

    The rows keep their ids and contents (:func:`all_rows` reads the same before and
    after); ``dimple_meta.clock`` is raised to the old log's newest id, which the first
    layout's clock floor read from the log itself."""
    ensure_pending_author(conn)
    if not _first_layout(conn):
        return False
    name, old = schema.changes.name, schema.changes.name + "_v1"
    schema.names.create(conn, checkfirst=True)
    # a write first: pysqlite then keeps the DDL below in this transaction; the write lock
    # makes a second upgrader wait, and then find the work done
    conn.execute(delete(schema.names).where(schema.names.c.id.is_(None)))
    if inspect(conn).has_table(schema.meta.name):
        meta.take_write_lock(conn)
    if not _first_layout(conn):
        return False
    insp = inspect(conn)
    pk = insp.get_pk_constraint(name).get("name")
    for ix in insp.get_indexes(name):
        conn.exec_driver_sql(f"DROP INDEX {ix['name']}")
    conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {old}")
    if conn.dialect.name == "postgresql" and pk:
        conn.exec_driver_sql(f"ALTER TABLE {old} RENAME CONSTRAINT {pk} TO {pk}_v1")
    schema.changes.create(conn)
    page = sql_text(f"SELECT {', '.join(_V1_COLUMNS)} FROM {old} WHERE id > :after "
                f"ORDER BY id LIMIT {_UPGRADE_BATCH}")
    newest: str | None = None
    after = ""
    while True:
        rows: list[PackedRow] = [
            tuple(str(v) for v in r)  # type: ignore[misc]
            for r in conn.execute(page, {"after": after}).all()]
        if not rows:
            break
        store(conn, rows)
        for r in rows:  # runs of different authors may overlap: every run's last id
            last = run_last(r[ROW_ID], _loads(r[PACKED_ATTRIBUTES]))
            if newest is None or last > newest:
                newest = last
        after = rows[-1][ROW_ID]
    conn.exec_driver_sql(f"DROP TABLE {old}")
    if newest is not None:
        meta.raise_floor(conn, meta.get(conn, meta.CLOCK), newest)
    return True
