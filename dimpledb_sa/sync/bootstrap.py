"""Bootstrap: merging a snapshot into an empty database in bulk.

A new device's first pull merges each author's snapshot (:mod:`.snapshot`) piece by piece.
When the database holds nothing a merge would read (:func:`is_empty`: no row in a tracked
table, no log, no held change, conflict or transaction held ahead), the general merge's
lookups find nothing: no logged change of an incoming entity, no row, no rule to apply. So
:func:`merge_new` stores a piece without them: the transactions held ahead are set aside as
:func:`.ahead.split` does, the log rows are written packed (as :func:`.merge.merge` packs
them), each entity's row is planned by :meth:`.plan.TablePlan.new_entity` and written by
:func:`.plan.write` (one ``executemany`` per table, parents first), and the clock and its
floor move as in a merge. The database is then what the general merge would have made of
the piece (a test holds both paths to that).

A piece of a version-2 snapshot (:mod:`.packed`: its transactions' changes are packed runs
with their values parsed) takes a shorter way, with no record per change: its runs,
column by column as they came (:class:`~dimpledb_sa.core.runs.Runs`), are the log's
packed rows (stored by :func:`.changelog.store_runs`: ids converted and values spelled in
bulk); an entity that one run makes whole (the common case: an insert-only history) has
its row taken column by column from the parsed new values with the other rows of its
table and names list (decoded, and put through the columns' bind processors, only where
that changes something) and inserted in one ``executemany`` (a run whose key is null, a
delete marker, inserts nothing); the changes applied are kept as packed rows
(``MergeResult.applied_packed``), expanded only if a listener asks. Entities with several
runs in the piece, or a run this schema cannot take as it is (an attribute it lacks, a
required column missing or null), go through ``TablePlan.new_entity`` as above.

That holds while every entity of a piece is new (:class:`Bulk` remembers the entities of
the pieces before; a later piece that touches one of them is not "new") and its table is
tracked and unconstrained (no unique sets or checked foreign keys: those rows need the
rules of :mod:`.resolve`). Anything else (an entity seen before, a constrained or unknown
table, a row the database refuses, a value that does not decode) raises :class:`NotBulk`
inside the caller's savepoint: the caller rolls it back and merges the piece, and the rest
of the snapshot, with the general merge.
"""

from __future__ import annotations

import json
from collections import defaultdict
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError

from ..core import changelog, conflicts, schema
from ..core.changes import ROW_ENTITY_ID, ROW_ID, ChangeRow, TxRecord
from ..core.constraints import constraints_of
from ..core.rows import insert_columns, insert_many
from ..core.runs import Runs
from ..core.values import Codec, passes_through
from . import ahead
from .merge import APPLY_ERRORS, MergeResult
from .packed import PackedChanges, packed_of
from .plan import Held, TablePlan, required_columns, write

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ..core.replica import Replica
    from ..core.tracking import TrackedTable

__all__ = ["Bulk", "NotBulk", "is_empty", "merge_new"]

_ID = itemgetter(ROW_ID)


class NotBulk(Exception):
    """The piece is not one :func:`merge_new` can store: merge it the general way."""


class Bulk:
    """One snapshot's bulk merge: the entities its pieces stored so far (as hashes of
    (entity type, entity id): a collision only sends a piece to the general merge)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.stored = 0
        """Transactions it stored: while the database holds no others (no local commit
        and no other merge came in between), it holds nothing but what the bulk wrote."""


def is_empty(replica: Replica, conn: Connection) -> bool:
    """Whether the database holds nothing a merge reads: no row in a tracked table, no log,
    no held change, no conflict, no transaction held ahead."""
    if not changelog.is_empty(conn) or ahead.count(conn):
        return False
    if conn.execute(select(schema.held.c.entity_type).limit(1)).first() is not None:
        return False
    if conflicts.count(conn):
        return False
    return all(conn.execute(select(tt.pk).limit(1)).first() is None
               for tt in replica.tracked.values())


def _stored(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(schema.transactions)).scalar_one())


def merge_new(replica: Replica, conn: Connection, transactions: Sequence[TxRecord],
              bulk: Bulk) -> MergeResult:
    """Store and apply one piece of a snapshot whose entities are all new here (inside the
    caller's savepoint); raises :class:`NotBulk` when they are not, or anything is unusual
    (see the module docstring)."""
    try:
        return _merge_new(replica, conn, transactions, bulk)
    except (IntegrityError, RecursionError, *APPLY_ERRORS) as exc:
        raise NotBulk(str(exc)) from exc


def _store_new(conn: Connection, replica: Replica, bulk: Bulk, keys: set[int], count: int,
               types: Iterable[str], newest: tuple[str, str],
               txs: list[tuple[str, str]], rows: list[changelog.PackedRow] | Runs
               ) -> list[changelog.PackedRow]:
    """The checks and first writes of a bulk piece: ``count`` entities (``keys``, their
    hashes) all new to the bootstrap and of tracked, unconstrained ``types`` (else
    ``NotBulk``); the clock told the newest other and own ids (``newest``), then the
    transactions ``txs`` and the packed ``rows`` (or ``Runs``) stored; returns the rows
    stored (in text form)."""
    if len(keys) != count or not keys.isdisjoint(bulk.seen):
        raise NotBulk("an entity of this piece is not new")
    cons = constraints_of(replica.tracked)
    if any(etype not in replica.tracked or cons.constrained(etype) for etype in types):
        raise NotBulk("a table of this piece is constrained or unknown")
    other, own = newest
    if other:
        replica.clock.observe(other, max_ahead=replica.max_drift)
    if own:
        replica.clock.observe(own)
    changelog.raise_clock_floor(conn, max(other, own))
    insert_many(conn, schema.transactions, txs)
    if isinstance(rows, Runs):
        return changelog.store_runs(conn, rows)
    changelog.store(conn, rows)
    return rows


def _merge_new(replica: Replica, conn: Connection, transactions: Sequence[TxRecord],
               bulk: Bulk) -> MergeResult:
    if not (is_empty(replica, conn) if bulk.stored == 0 else _stored(conn) == bulk.stored):
        raise NotBulk("the database holds more than this snapshot's pieces")
    packed = [p for p in map(packed_of, transactions) if p is not None]
    if transactions and len(packed) == len(transactions):  # a version-2 snapshot's piece
        return _merge_packed(replica, conn, transactions, packed, bulk)
    result = MergeResult()
    fresh, later = ahead.split(replica, conn, transactions)
    result.held += later
    if not fresh:
        return result
    cons = constraints_of(replica.tracked)
    tracked = replica.tracked
    incoming: dict[tuple[str, str], list[ChangeRow]] = {}
    rows: list[changelog.PackedRow] = []
    newest = newest_own = ""
    me = replica.author_id
    for tx_id, author, changes in fresh:
        result.authors[tx_id] = author
        rows.extend(changelog.pack(changes, incoming))
        last = max(tx_id, max(map(_ID, changes)) if changes else "")
        if author == me:
            newest_own = max(newest_own, last)
        else:
            newest = max(newest, last)
    keys = {hash(k) for k in incoming}
    by_type: dict[str, list[str]] = defaultdict(list)
    for etype, eid in incoming:
        by_type[etype].append(eid)
    _store_new(conn, replica, bulk, keys, len(incoming), by_type, (newest, newest_own),
               [(tx_id, author) for tx_id, author, _ in fresh], rows)
    held: list[Held] = []
    order = {name: i for i, name in enumerate(cons.order)}
    plans: list[TablePlan] = []
    for etype in sorted(by_type, key=lambda n: (order.get(n, len(order)), n)):
        plan = TablePlan(tracked[etype], held, result)
        for eid in by_type[etype]:
            plan.new_entity(eid, incoming[(etype, eid)])
        plans.append(plan)
    write(conn, plans, cons, result, {})
    if held:
        insert_many(conn, schema.held, held, ignore_existing=True)
    result.stored = len(fresh)
    bulk.seen |= keys
    bulk.stored += len(fresh)
    return result


def _merge_packed(replica: Replica, conn: Connection, transactions: Sequence[TxRecord],
                  packed: Sequence[PackedChanges], bulk: Bulk) -> MergeResult:
    """:func:`_merge_new` for a piece of a version-2 snapshot: its runs go to the log
    column by column (:func:`.changelog.store_runs`), and the rows of the entities that one
    run makes whole (the common case) are inserted from their parsed new values with one
    ``executemany`` per table and names list; an entity with several runs in the piece, or
    a run this schema cannot take as it is (an unknown or missing required column), is
    planned change by change as above."""
    result = MergeResult()
    me = replica.author_id
    horizon = replica.clock.horizon(replica.max_drift)
    fresh: list[tuple[TxRecord, PackedChanges]] = []
    later: list[TxRecord] = []
    for tx, p in zip(transactions, packed, strict=True):
        # as ahead.split: our own are never held
        if tx[1] == me or p.newest <= horizon:
            fresh.append((tx, p))
        else:
            later.append(tx)
    ahead.store(conn, later)
    result.held += sum(len(tx[2]) for tx in later)
    if not fresh:
        return result
    newest = newest_own = ""
    for (tx_id, author, _), p in fresh:
        result.authors[tx_id] = author
        if author == me:
            newest_own = max(newest_own, p.newest)
        else:
            newest = max(newest, p.newest)
    runs = Runs.join([p.runs for _, p in fresh])
    n = len(runs)
    entities = list(zip(runs.types, runs.entities, strict=True))
    first_run = dict(zip(reversed(entities), range(n - 1, -1, -1), strict=True))
    several: dict[tuple[str, str], list[int]] = {}
    if len(first_run) != n:  # an entity with several runs (a later edit)
        for i, key in enumerate(entities):
            j = first_run[key]
            if j != i:
                several.setdefault(key, [j]).append(i)
    keys = set(map(hash, first_run))
    cons = constraints_of(replica.tracked)
    tracked = replica.tracked
    rows = _store_new(conn, replica, bulk, keys, len(first_run), set(runs.types),
                      (newest, newest_own), [(tx[0], tx[1]) for tx, _ in fresh], runs)
    groups = _groups(runs, set(several))
    slow: dict[str, list[tuple[str, list[ChangeRow]]]] = defaultdict(list)
    for key, several_runs in several.items():
        slow[key[0]].append((key[1], sorted(changelog.expand_all(
            [rows[i] for i in several_runs]))))
    order = {name: i for i, name in enumerate(cons.order)}
    for (etype, names_json), at in sorted(
            groups.items(), key=lambda g: (order.get(g[0][0], len(order)), g[0])):
        if not _insert_whole(conn, tracked[etype], json.loads(names_json), at, rows, runs,
                             result):
            slow[etype] += [(rows[i][ROW_ENTITY_ID], changelog.expand(rows[i])) for i in at]
    held: list[Held] = []
    plans: list[TablePlan] = []
    for etype in sorted(slow, key=lambda n: (order.get(n, len(order)), n)):
        plan = TablePlan(tracked[etype], held, result)
        for eid, changes in slow[etype]:
            plan.new_entity(eid, changes)
        plans.append(plan)
    if plans:
        write(conn, plans, cons, result, {})
    if held:
        insert_many(conn, schema.held, held, ignore_existing=True)
    result.applied = len(result.applied_changes) + result.packed_changes
    result.stored = len(fresh)
    bulk.seen |= keys
    bulk.stored += len(fresh)
    return result


def _groups(runs: Runs, several: set[tuple[str, str]]
            ) -> dict[tuple[str, str], Sequence[int]]:
    """The runs of entities not in ``several`` by (entity type, names), in the piece's
    order (ascending ids, as written): all of them at once when they share both."""
    n = len(runs)
    if not n:
        return {}
    if not several and runs.types.count(runs.types[0]) == n \
            and runs.names.count(runs.names[0]) == n:
        return {(runs.types[0], runs.names[0]): range(n)}
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(runs.types, runs.names, strict=True)):
        if not several or (key[0], runs.entities[i]) not in several:
            groups[key].append(i)
    return dict(groups)


def _insert_whole(conn: Connection, tt: TrackedTable, names: list[str], at: Sequence[int],
                  rows: Sequence[changelog.PackedRow], runs: Runs, result: MergeResult
                  ) -> bool:
    """Insert the rows of new entities of ``tt`` that each have one run (the runs ``at``),
    with the attributes ``names``, column by column from their parsed new values (a run
    whose key is null, a delete, inserts nothing); ``False`` (nothing done) when this
    schema cannot take them as they are: an attribute it lacks, no key, or a required
    column missing or null."""
    codecs = tt.codecs
    pk = tt.pk_name
    if pk not in names or not codecs.keys() >= set(names):
        return False
    whole = len(at) == len(runs)  # every run of the piece (at is then range(len(runs)))
    news = runs.news if whole else [runs.news[i] for i in at]
    entities = runs.entities if whole else [runs.entities[i] for i in at]
    keys = list(map(itemgetter(names.index(pk)), news))
    live: Sequence[int] = at
    if None in keys:
        live = [i for i, k in zip(at, keys, strict=True) if k is not None]
        if not live:
            return True  # deletes only: no row, no applied change (as TablePlan.new_entity)
        news = [runs.news[i] for i in live]
        entities = [runs.entities[i] for i in live]
    columns: dict[str, Sequence[Any]] = {}
    for name, col in zip(names, zip(*news, strict=True), strict=True):
        codec = codecs[name]
        if passes_through(codec) or _decoded_already(codec, col):
            columns[name] = col  # strings, integers, JSON: the JSON value itself
        elif None in col:
            columns[name] = [None if v is None else codec.from_json(v) for v in col]
        else:
            columns[name] = list(map(codec.from_json, col))
    if any(c not in columns or None in columns[c] for c in required_columns(tt)):
        return False
    if columns[pk] != entities and [str(v) for v in columns[pk]] != entities:
        raise NotBulk(f"a change of this piece inserts {tt.name} with another key")
    table = tt.table
    if any(c.default is not None and c.name not in columns for c in table.columns):
        conn.execute(table.insert(), [dict(zip(columns, values, strict=True))
                                      for values in zip(*columns.values(), strict=True)])
    else:
        insert_columns(conn, table, columns)
    result.tables.add(tt.name)
    result.applied_packed += rows if whole and live is at else [rows[i] for i in live]
    result.packed_changes += len(names) * len(live)
    return True


def _decoded_already(codec: Codec, values: Sequence[Any]) -> bool:
    """Whether decoding ``values`` would give them back as they are: booleans of a boolean
    column, floats of a float column (``bool`` and ``float`` give back their own type's
    values themselves)."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    return (codec.from_json is bool and kinds <= {bool}) or (
        codec.from_json is float and kinds <= {float})
