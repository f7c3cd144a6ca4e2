"""Merge: pulled transactions -> change log -> local rows, last write wins per attribute.

:func:`merge` runs inside one database transaction that the caller commits. It stores the
transactions it has not seen (so applying a bundle twice changes nothing), moves the clock
past every pulled id, and re-derives each touched entity from the log: the latest change
(by id) on the primary-key attribute decides whether the row exists (a delete is that
attribute going to ``null``, an insert going to the id), and every other column takes the
new value of its latest change. Where those rows would break a unique constraint or a
foreign key, the rules of :mod:`.resolve` decide which rows stay, as a function of the log
alone, and record the changes they keep out as conflicts (``dimple_conflicts``). The
result is compared with the rows as they are and only the differences are written (see
:mod:`.plan`). A row the database still refuses (a ``CHECK`` constraint, a unique index the
metadata does not declare) is found row by row and kept out too (kind ``check``), so one
bad change never fails the others.

Changes for a table or column this schema lacks stay in the log and are listed in
``dimple_held``; :func:`replay_held` re-derives those entities once the schema has them.
Transactions further ahead of local time than ``max_drift`` are not stored yet but kept
aside whole (:mod:`.ahead`); :func:`replay_held` merges them once their time has come.
:func:`settle_local` applies the rules to what this replica's own transactions changed
(a local delete can orphan rows, a local edit can free a unique value a kept-out row
waits for) and :func:`retry_refused` retries rows the database refused. This module never
imports fsspec: it sees transactions, not files.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.exc import IntegrityError, StatementError

from ..core import changelog, conflicts, meta, schema
from ..core.changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_OLD,
    ROW_TRANSACTION,
    ChangeRow,
    TxRecord,
    changes_from_rows,
)
from ..core.constraints import Constraints, constraints_of
from ..core.errors import DimpleError
from ..core.rows import chunks, fetch_rows, insert_many
from . import ahead
from .packed import packed_of
from .plan import PK, Held, TablePlan, steps, winners, write, write_one
from .resolve import MISSING_PARENT, Excluded, Resolver

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.tracking import TrackedTable

__all__ = ["APPLY_ERRORS", "MergeResult", "Runs", "announce", "describe", "merge", "replay_held",
           "replay_held_in", "retry_refused", "settle_local"]

logger = logging.getLogger(__name__)

APPLY_ERRORS = (StatementError, DimpleError, ValueError, TypeError, ArithmeticError,
                LookupError, AttributeError)
"""What applying well-formed but unusable changes raises (a key that is not the entity's,
a value no column of this type can hold, a column type's processor given a value of
another type, which calls a method it lacks): callers undo that merge to a savepoint and
keep the rest. A constraint the database enforces is not among them: such rows are kept out."""

_UNAPPLIABLE = (*APPLY_ERRORS, RecursionError)

_ATTEMPTS = 20  # writes retried with more refused rows kept out before giving up


@dataclass
class MergeResult:
    """What a merge did: counts for the report, and what to announce after commit."""

    stored: int = 0
    applied: int = 0
    held: int = 0
    tables: set[str] = field(default_factory=set)
    applied_changes: list[ChangeRow] = field(default_factory=list)
    authors: dict[str, str] = field(default_factory=dict)  # transaction id -> author
    applied_packed: list[changelog.PackedRow] = field(default_factory=list)
    """Packed log rows every change of which was applied (the bulk bootstrap's: expanded
    into change records only when a listener asks, see :func:`announce`)."""
    packed_changes: int = 0
    """How many changes ``applied_packed`` holds (counted in ``applied``)."""

    def add(self, other: MergeResult) -> None:
        """Count ``other`` (a later merge in the same database transaction) in this one."""
        self.stored += other.stored
        self.held += other.held
        self.tables |= other.tables
        self.applied_changes.extend(other.applied_changes)
        self.applied_packed.extend(other.applied_packed)
        self.packed_changes += other.packed_changes
        self.applied = len(self.applied_changes) + self.packed_changes
        self.authors.update(other.authors)


def describe(exc: BaseException) -> str:
    """A short message for ``exc``: a database error without its SQL and parameters."""
    orig = getattr(exc, "orig", None)
    if isinstance(exc, StatementError) and orig is not None:
        return f"{type(orig).__name__}: {orig}"
    return f"{type(exc).__name__}: {exc}"


def _fresh(conn: Connection, transactions: Sequence[TxRecord]) -> list[TxRecord]:
    """The transactions the log does not know yet (folded or pending: our own, pulled back
    from our folder), each once."""
    known = changelog.transaction_authors(conn, [tx_id for tx_id, _, _ in transactions])
    seen: set[str] = set()
    out: list[TxRecord] = []
    for tx in transactions:
        tx_id = tx[0]
        if tx_id not in known and tx_id not in seen:
            seen.add(tx_id)
            out.append(tx)
    return out


class Runs(Mapping[tuple[str, str], list[ChangeRow]]):
    """A merge's incoming changes as the packed runs of the log they are stored as (with
    each run's new values as parsed, see :mod:`.runs`): (entity type, entity id) -> its
    change records, in id order, expanded from its runs only when asked for; the entities
    that one run makes (the common case) are planned from the run itself
    (:meth:`.plan.TablePlan.new_runs`)."""

    def __init__(self, rows: list[changelog.PackedRow], news: list[list[Any]]) -> None:
        self.rows = rows
        self.news = news
        entities = list(zip(map(_TYPE, rows), map(_ENTITY, rows), strict=True))
        last = dict(zip(entities, range(len(rows)), strict=True))
        self.several: dict[tuple[str, str], list[int]] = {}
        """The entities with more than one run: their runs."""
        if len(last) != len(rows):
            for i, key in enumerate(entities):
                self.several.setdefault(key, []).append(i)
            self.several = {k: v for k, v in self.several.items() if len(v) > 1}
        self.last = last
        """Each entity's last run (its only one but for those in ``several``), in the
        order the entities first appear."""
        if self.several:
            self.last = {k: last[k] for k in dict.fromkeys(entities)}
        self._expanded: dict[tuple[str, str], list[ChangeRow]] = {}

    def single(self, key: tuple[str, str]) -> int | None:
        """The position of the only run of ``key`` (``None``: it has several)."""
        return None if key in self.several else self.last[key]

    def __getitem__(self, key: tuple[str, str]) -> list[ChangeRow]:
        got = self._expanded.get(key)
        if got is None:
            runs = self.several.get(key)
            # in the order they came, as the general path packs them (of two changes with
            # one id, the first one wins there too)
            got = self._expanded[key] = (changelog.expand(self.rows[self.last[key]])
                                         if runs is None else changelog.expand_all(
                                             [self.rows[i] for i in runs]))
        return got

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.last)

    def __len__(self) -> int:
        return len(self.last)


def merge(replica: Replica, conn: Connection, transactions: Sequence[TxRecord]) -> MergeResult:
    """Store and apply pulled ``transactions`` on ``conn`` (inside the caller's transaction).

    Transactions whose changes are packed runs (:mod:`.runs`) are stored and planned
    from those runs when all of them are; the others are packed here."""
    result = MergeResult()
    fresh, later = ahead.split(replica, conn, _fresh(conn, transactions))
    result.held += later
    if not fresh:
        return result
    incoming: Mapping[tuple[str, str], list[ChangeRow]]
    rows: list[changelog.PackedRow] = []
    newest = ""
    newest_own = ""
    me = replica.author_id
    packed = [p for p in map(packed_of, fresh) if p is not None]
    if len(packed) == len(fresh):
        news: list[list[Any]] = []
        for (tx_id, author, _), p in zip(fresh, packed, strict=True):
            result.authors[tx_id] = author
            rows += p.rows
            news += p.news
            if author == me:
                newest_own = max(newest_own, p.newest)
            else:
                newest = max(newest, p.newest)
        incoming = Runs(rows, news)
    else:
        into: dict[tuple[str, str], list[ChangeRow]] = {}
        for tx_id, author, changes in fresh:
            result.authors[tx_id] = author
            rows.extend(changelog.pack(changes, into))
            last = max(tx_id, max(map(itemgetter(ROW_ID), changes), default=""))
            if author == me:
                newest_own = max(newest_own, last)
            else:
                newest = max(newest, last)
        incoming = into
    if newest:
        replica.clock.observe(newest, max_ahead=replica.max_drift)
    if newest_own:  # ours (a restored backup healing): later ids must sort after them
        replica.clock.observe(newest_own)
    changelog.raise_clock_floor(conn, max(newest, newest_own))
    before = changelog.entity_changes(conn, incoming)
    insert_many(conn, schema.transactions, [(tx_id, author) for tx_id, author, _ in fresh],
                ignore_existing=True)
    changelog.store(conn, rows, ignore_existing=True)
    result.stored = len(fresh)
    _apply(replica, conn, incoming, before, result)
    return result


_TYPE = itemgetter(ROW_ENTITY_TYPE)
_ENTITY = itemgetter(ROW_ENTITY_ID)


# -- applying ---------------------------------------------------------------------------------
class _Job:
    """One attempt at writing a merge: the plans, the rules' decisions, what to record."""

    def __init__(self, replica: Replica, conn: Connection, cons: Constraints,
                 result: MergeResult, excluded: Excluded, keep: set[tuple[str, str]]) -> None:
        self.replica = replica
        self.cons = cons
        self.result = result
        self.excluded = excluded
        self.keep = keep  # refused entities whose row must stay as it is
        self.resolver = Resolver(replica, conn, cons, excluded)
        self.plans: dict[str, TablePlan] = {}
        self.held: list[Held] = []
        self.notes: list[dict[str, Any]] = []
        self.decided: list[tuple[str, str]] = []
        self.order = {name: i for i, name in enumerate(cons.order)}

    def plan(self, tt: TrackedTable) -> TablePlan:
        plan = self.plans.get(tt.name)
        if plan is None:
            plan = self.plans[tt.name] = TablePlan(tt, self.held, self.result)
            plan.unique_columns = {c for u in self.cons.uniques.get(tt.name, ())
                                   for c in u.columns}
        return plan

    def sorted_plans(self) -> list[TablePlan]:
        return sorted(self.plans.values(),
                      key=lambda p: (self.order.get(p.tt.name, len(self.order)), p.tt.name))

    def refused(self, plan: TablePlan, eid: str, win: dict[str, ChangeRow],
                row: dict[str, Any] | None) -> None:
        """An entity of an unconstrained table the database refused: kept out."""
        latest = max(win.values(), default=None)
        if latest is not None:
            self.notes.append(_check_note(plan.tt.name, eid, latest,
                                          self.excluded[(plan.tt.name, eid)]))
        if row is not None and (plan.tt.name, eid) not in self.keep:
            plan.evict(row)

    def emit_resolved(self) -> None:
        """Plan the writes the rules decided."""
        for name in self.cons.order:
            ents = self.resolver.entities.get(name)
            if not ents:
                continue
            tt = self.replica.tracked[name]
            plan = self.plan(tt)
            for eid, e in ents.items():
                self.decided.append((name, eid))
                if e.held:
                    self.held.append((name, eid, tt.pk_name, e.held))
                    self.result.held += 1
                if e.fixed or (name, eid) in self.keep:
                    continue
                if e.admitted:
                    plan.emit(eid, e.written(), e.row, e.quiet or ())
                elif e.present:
                    if e.row is not None:
                        plan.evict(e.row)
                else:
                    plan.emit(eid, e.win, e.row)

    def rows(self) -> dict[str, dict[Any, dict[str, Any]]]:
        """Per table, the rows the rules looked at, by key (for the order of writes)."""
        out: dict[str, dict[Any, dict[str, Any]]] = {}
        for name, ents in self.resolver.entities.items():
            pkn = self.replica.tracked[name].pk_name
            out[name] = {e.row[pkn]: e.row for e in ents.values() if e.row is not None}
        return out

    def write(self, conn: Connection) -> None:
        write(conn, self.sorted_plans(), self.cons, self.result, self.rows())
        h = schema.held
        resolved = [k for k in self.decided if k[0] in self.resolver.entities]
        for etype, eids in _by_type(resolved).items():
            for chunk in chunks(eids):
                conn.execute(delete(h).where(h.c.entity_type == etype,
                                             h.c.entity_id.in_(chunk),
                                             h.c.reason == MISSING_PARENT))
        if self.held:
            insert_many(conn, h, self.held, ignore_existing=True)
        notes = self.resolver.notes() + self.notes
        if notes or conn.execute(select(schema.conflicts.c.id).limit(1)).first() is not None:
            conflicts.replace(conn, self.decided, notes)

    def culprits(self, conn: Connection) -> dict[tuple[str, str], tuple[str, bool]]:
        """The rows the database refuses, written one at a time (then undone): key ->
        (why, whether the row must stay as it is). Rows whose parent is refused are not
        tried: the rules keep them out once it is."""
        found: dict[tuple[str, str], tuple[str, bool]] = {}
        with conn.begin_nested() as outer:
            for plan, kind, item in steps(self.sorted_plans(), self.rows(), self.cons):
                name, pkn = plan.tt.name, plan.tt.pk_name
                if kind != "delete" and any(
                        item.get(r.column) is not None and (r.parent, str(item[r.column]))
                        in found for r in self.cons.references.get(name, ())):
                    continue
                why = _try(conn, plan, kind, item)
                if why is not None:
                    eid = str(item if kind == "delete" else
                              item[pkn] if kind == "insert" else item[PK])
                    found.setdefault((name, eid), (why, kind == "delete"))
            outer.rollback()
        return found

    def defer_deletes(self) -> None:
        """Move to ``late`` the deletes of rows that rows the merge keeps still name."""
        named: dict[str, set[str]] = defaultdict(set)
        for name, ents in self.resolver.entities.items():
            for r in self.cons.checked(name):
                for e in ents.values():
                    if e.admitted and e.row is not None and e.row.get(r.column) is not None:
                        named[r.parent].add(str(e.row[r.column]))
        for name, plan in self.plans.items():
            if named.get(name) and plan.deletes:
                plan.late = [k for k in plan.deletes if str(k) in named[name]]
                plan.deletes = [k for k in plan.deletes if str(k) not in named[name]]


def _try(conn: Connection, plan: TablePlan, kind: str, item: Any) -> str | None:
    try:
        with conn.begin_nested():
            write_one(conn, plan, kind, item)
    except IntegrityError as exc:
        return describe(exc)
    return None


def _check_note(etype: str, eid: str, change: ChangeRow, why: str) -> dict[str, Any]:
    return {"entity_type": etype, "entity_id": eid, "kind": conflicts.CHECK,
            "attribute": None, "change_id": change[ROW_ID],
            "transaction_id": change[ROW_TRANSACTION],
            "change_attribute": change[ROW_ATTRIBUTE], "old_value": change[ROW_OLD],
            "new_value": change[ROW_NEW], "other_entity_type": None, "other_entity_id": None,
            "key": None, "listed": True,
            "detail": f"{etype} {eid} is kept out: the database refused it ({why})"}


def _by_type(keys: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for etype, eid in keys:
        out[etype].append(eid)
    return out


def _build(replica: Replica, conn: Connection, cons: Constraints,
           incoming: Mapping[tuple[str, str], list[ChangeRow]],
           before: dict[tuple[str, str], list[ChangeRow]], result: MergeResult,
           excluded: Excluded, keep: set[tuple[str, str]],
           olds: dict[tuple[str, str], dict[str, str | None]] | None) -> _Job:
    """Plan the writes of ``incoming`` (over ``before``), the rules deciding where needed."""
    job = _Job(replica, conn, cons, result, excluded, keep)
    runs = incoming if isinstance(incoming, Runs) else None
    for etype, eids in _by_type(list(incoming)).items():
        tt = replica.tracked.get(etype)
        if tt is None:
            for eid in eids:
                inc = incoming[(etype, eid)]
                result.held += len(inc)
                job.held.extend((etype, eid, a, "unknown table")
                                for a in {c[ROW_ATTRIBUTE] for c in inc})
            continue
        current = fetch_rows(conn, tt, eids)
        plan = job.plan(tt)
        constrained = cons.constrained(etype)
        if (runs is not None and not constrained and not current and not before
                and not excluded and not runs.several):
            # every entity new, of one run each (a pull into an empty table): what the
            # loop below plans, all at once
            pos = list(map(runs.last.__getitem__, [(etype, eid) for eid in eids]))
            _plan_new(plan, incoming, [], list(zip(eids, map(runs.rows.__getitem__, pos),
                                                   map(runs.news.__getitem__, pos),
                                                   strict=True)))
            continue
        fresh: list[tuple[str, list[ChangeRow]]] = []  # neither logged nor stored before
        fresh_runs: list[tuple[str, changelog.PackedRow, Sequence[Any]]] = []  # (one run)
        for eid in eids:
            key = (etype, eid)
            prior = before.get(key)
            row = current.get(eid)
            if not constrained and key not in excluded and prior is None and row is None:
                at = None if runs is None else runs.single(key)
                if at is None:
                    fresh.append((eid, incoming[key]))
                else:
                    fresh_runs.append((eid, runs.rows[at], runs.news[at]))  # type: ignore[union-attr]
                continue
            if fresh or fresh_runs:  # planned in order
                _plan_new(plan, incoming, fresh, fresh_runs)
                fresh, fresh_runs = [], []
            inc = incoming[key]
            win = winners(inc, winners(prior) if prior else None)
            plan.hold_unknown(eid, inc, win)
            if constrained:
                e = job.resolver.add(etype, eid, win, row, inc if prior is None
                                     else prior + inc)
                e.before = olds.get(key) if olds else None
                continue
            job.decided.append(key)
            if key in excluded:
                job.refused(plan, eid, win, row)
            else:
                plan.emit(eid, win, row)
        _plan_new(plan, incoming, fresh, fresh_runs)
    job.resolver.run()
    job.emit_resolved()
    job.defer_deletes()
    return job


def _plan_new(plan: TablePlan, incoming: Mapping[tuple[str, str], list[ChangeRow]],
              fresh: list[tuple[str, list[ChangeRow]]],
              fresh_runs: list[tuple[str, changelog.PackedRow, Sequence[Any]]]) -> None:
    """Plan new entities: ``fresh`` from their changes, ``fresh_runs`` from their one run
    each (those it cannot take, from their changes too)."""
    if fresh_runs:
        name = plan.tt.name
        fresh += [(fresh_runs[k][0], incoming[(name, fresh_runs[k][0])])
                  for k in plan.new_runs(fresh_runs)]
    if fresh:
        plan.new_entities(fresh)


def _apply(replica: Replica, conn: Connection,
           incoming: Mapping[tuple[str, str], list[ChangeRow]],
           before: dict[tuple[str, str], list[ChangeRow]], result: MergeResult,
           olds: dict[tuple[str, str], dict[str, str | None]] | None = None) -> None:
    """Derive each entity in ``incoming`` from ``before`` + ``incoming`` and write the rows;
    ``olds``: for entities this replica changed itself, their values before (see
    :func:`settle_local`)."""
    cons = constraints_of(replica.tracked)
    excluded: Excluded = {}
    keep: set[tuple[str, str]] = set()
    for _ in range(_ATTEMPTS):
        part = MergeResult()
        job = _build(replica, conn, cons, incoming, before, part, excluded, keep, olds)
        try:
            with conn.begin_nested():
                job.write(conn)
        except IntegrityError as exc:
            found = {k: v for k, v in job.culprits(conn).items() if k not in excluded}
            if not found:
                raise
            logger.warning("merge: the database refuses %d row(s), kept out: %s",
                           len(found), describe(exc))
            for key, (why, stays) in found.items():
                excluded[key] = why
                if stays:
                    keep.add(key)
            continue
        result.add(part)
        return
    raise DimpleError(f"the database keeps refusing rows after {_ATTEMPTS} attempts")


def announce(replica: Replica, result: MergeResult) -> None:
    """Send ``changes_committed`` (origin ``"sync"``) for a committed merge's changes."""
    if not result.applied_changes and not result.applied_packed and not result.tables:
        return
    rows, packed = result.applied_changes, result.applied_packed
    tables = result.tables | {r[ROW_ENTITY_TYPE] for r in rows}
    tables |= {r[ROW_ENTITY_TYPE] for r in packed}
    authors = result.authors
    replica.committed(tables, lambda: changes_from_rows(
        sorted(rows + changelog.expand_all(packed)), authors), "sync")


# -- re-deriving what the log already holds ----------------------------------------------------
def _rederive(replica: Replica, conn: Connection, keys: set[tuple[str, str]],
              olds: dict[tuple[str, str], dict[str, str | None]] | None = None
              ) -> MergeResult:
    result = MergeResult()
    if not keys:
        return result
    everything = changelog.entity_changes(conn, keys)
    _apply(replica, conn, {k: everything.get(k, []) for k in keys}, {}, result, olds)
    result.authors = _authors(conn, {c[ROW_TRANSACTION] for c in result.applied_changes})
    return result


SETTLE_CHANGES = 50_000
"""About how many of our own changes :func:`settle_local` looks at in one go."""


def settle_local(replica: Replica, conn: Connection) -> MergeResult:
    """Apply the rules to the entities this replica's own transactions (since the last
    call) changed in a way the rules look at: keys, unique columns, foreign keys.

    Runs inside the pull's write transaction, so it reads only what the rules look at: the
    changes of constrained tables (none at all when no table is constrained), not every
    local change since the last sync (a large local history would hold the lock). Those are
    read and settled in runs of about :data:`SETTLE_CHANGES` changes, oldest transactions
    first (as if a sync with nothing new to merge had run after each run), so that memory
    does not grow with how much was written since: the rules depend only on the log, not
    on how it was split."""
    changelog.fold(conn)
    since = meta.get(conn, meta.SETTLED_THROUGH)
    me = replica.author_on(conn)
    t = schema.transactions
    newest = select(func.max(t.c.id)).where(t.c.author == me)
    last = conn.execute(newest.where(t.c.id > since) if since else newest).scalar()
    if last is None:
        return MergeResult()
    meta.put(conn, meta.SETTLED_THROUGH, last)
    cons = constraints_of(replica.tracked)
    relevant = {name: attrs for name, tt in replica.tracked.items()
                if (attrs := cons.relevant(name, tt.pk_name))}
    result = MergeResult()
    if not relevant:
        return result
    ids = [i for i in changelog.transaction_ids(conn, me, since) if i <= last]
    olds: dict[tuple[str, str], dict[str, str | None]] = {}
    seen, step, i = 0, 1, 0  # the step grows while reads stay small
    while i < len(ids):
        chunk = ids[i:i + step]
        i += len(chunk)
        found = changelog.rows_of_transactions(conn, chunk, sorted(relevant))
        changes = sorted(ch for row in found for ch in changelog.expand(row))
        for ch in changes:
            if ch[ROW_ATTRIBUTE] in relevant[ch[ROW_ENTITY_TYPE]]:
                entity = olds.setdefault((ch[ROW_ENTITY_TYPE], ch[ROW_ENTITY_ID]), {})
                entity.setdefault(ch[ROW_ATTRIBUTE], ch[ROW_OLD])  # the first: the value before
        seen += len(changes)
        step = max(1, step // 2) if len(changes) > SETTLE_CHANGES // 2 else min(500, step * 2)
        if seen >= SETTLE_CHANGES or i == len(ids):
            result.add(_rederive(replica, conn, set(olds), olds))
            olds, seen = {}, 0
    return result


def retry_refused(replica: Replica, conn: Connection) -> MergeResult:
    """Try again the rows the database refused before (``check`` conflicts)."""
    return _rederive(replica, conn, conflicts.entities_of_kind(conn, conflicts.CHECK))


def replay_held(replica: Replica, conn: Connection) -> int:
    """Re-derive held entities whose table and columns now exist; returns changes applied.

    Runs in its own transaction on ``conn`` unless one is open. Held entries that still
    cannot apply stay held.
    """
    own = not conn.in_transaction()
    if own:
        conn.begin()
    try:
        result = replay_held_in(replica, conn)
        if own:
            conn.commit()
    except BaseException:
        if own:
            conn.rollback()
        raise
    if result.applied_changes:
        announce(replica, result)
    return result.applied


def replay_held_in(replica: Replica, conn: Connection) -> MergeResult:
    """:func:`replay_held` inside the caller's transaction: the transactions held ahead
    whose time has come, then the entities held for the schema."""
    conflicts.ensure_table(conn)
    result = _release_ahead(replica, conn)
    result.add(_replay_schema_held(replica, conn))
    return result


def _release_ahead(replica: Replica, conn: Connection) -> MergeResult:
    """Merge the transactions held ahead whose time has come, under a savepoint; when they
    cannot be applied, one by one: one that still cannot is stored again (retried at every
    sync, like a bundle set aside) and the others merge."""
    result = MergeResult()
    due = ahead.take_due(replica, conn)
    if not due:
        return result
    try:
        with conn.begin_nested():
            result.add(merge(replica, conn, due))
        return result
    except _UNAPPLIABLE:
        pass
    for tx in due:
        try:
            with conn.begin_nested():
                result.add(merge(replica, conn, [tx]))
        except _UNAPPLIABLE as exc:
            logger.warning("held transaction %s of %s cannot be applied here (%s): kept, "
                           "retried at the next sync", tx[0], tx[1], describe(exc))
            ahead.store(conn, [tx])
    return result


def _replay_schema_held(replica: Replica, conn: Connection) -> MergeResult:
    """Re-derive the entities ``dimple_held`` lists whose table and columns now exist."""
    h = schema.held
    result = MergeResult()
    entries = list(conn.execute(select(h.c.entity_type, h.c.entity_id, h.c.attribute,
                                       h.c.reason)))
    ready: set[tuple[str, str]] = set()
    for etype, eid, attr, reason in entries:
        tt = replica.tracked.get(etype)
        if tt is None:
            continue
        if attr in tt.codecs or reason == MISSING_PARENT:
            ready.add((etype, eid))
    if not ready:
        return result
    for etype, eid in ready:
        conn.execute(delete(h).where(h.c.entity_type == etype, h.c.entity_id == eid))
    everything = changelog.entity_changes(conn, ready)
    # re-derive from the whole log: every logged change counts as "incoming" over nothing
    try:
        with conn.begin_nested():
            _apply(replica, conn, {k: everything.get(k, []) for k in ready}, {}, result)
    except APPLY_ERRORS:
        result = _replay_each(replica, conn, ready, everything,
                              [tuple(e) for e in entries])
    authors = _authors(conn, {c[ROW_TRANSACTION] for c in result.applied_changes})
    result.authors = authors
    return result


def _replay_each(replica: Replica, conn: Connection, ready: set[tuple[str, str]],
                 everything: dict[tuple[str, str], list[ChangeRow]],
                 entries: list[tuple[Any, ...]]) -> MergeResult:
    """Replay entity by entity (parents first), so that one that cannot apply stays held
    alone."""
    order = {name: i for i, name in enumerate(constraints_of(replica.tracked).order)}
    result = MergeResult()
    for key in sorted(ready, key=lambda k: (order.get(k[0], len(order)), k[1])):
        part = MergeResult()
        try:
            with conn.begin_nested():
                _apply(replica, conn, {key: everything.get(key, [])}, {}, part)
        except APPLY_ERRORS as exc:
            logger.warning("held %s %s still cannot apply: %s", key[0], key[1], describe(exc))
            insert_many(conn, schema.held, [e for e in entries if e[:2] == key],
                        ignore_existing=True)
            continue
        result.add(part)
    return result


def _authors(conn: Connection, tx_ids: set[str]) -> dict[str, str]:
    return changelog.transaction_authors(conn, tx_ids)
