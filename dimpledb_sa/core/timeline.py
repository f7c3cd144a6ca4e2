"""The change log read by time: an entity's state at a point in time, transactions by id.

An entity's state as of a moment is re-derived from its history exactly as the merge
derives the current row (see ``docs/FORMAT.md``): among the changes made up to then, the
latest on the primary-key attribute says whether the row existed (the id: it did; ``null``:
it had been deleted; none: it had not been created yet), and every other attribute holds
the new value of its latest change. A moment is turned into an id bound (:func:`id_bound`:
the largest id of its millisecond), because ids order changes in time.
:func:`transaction_changes` reads whole transactions (indexed and pending) and
:func:`recent_transactions` lists them newest first, for ``db.revert()`` and the CLI's
``log``. Everything here only reads, on the caller's connection; values stay JSON text
(decoding them is the codecs' job, see :mod:`.values`). ``prune_history`` may drop
superseded changes: :func:`check_not_pruned` refuses to answer for a time before it did.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from . import meta, schema
from .changelog import (
    expand,
    known_transactions,
    pending_rows,
    rows_of_entities,
    rows_of_transactions,
    transactions_touching,
)
from .changelog import transaction_authors as known_authors
from .changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_TRANSACTION,
    ChangeRow,
    TxRecord,
)
from .errors import HistoryError
from .rows import chunks, fetch_rows

if TYPE_CHECKING:
    from .tracking import TrackedTable

__all__ = [
    "check_not_pruned",
    "entity_as_of",
    "entity_rows",
    "id_bound",
    "recent_transactions",
    "state_at",
    "transaction_authors",
    "transaction_changes",
    "winners",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MS = (1 << 48) - 1


def id_bound(when: datetime) -> str:
    """The largest id string of ``when``'s millisecond (an aware datetime): the changes
    made at or before ``when`` are exactly those whose id is ``<=`` it."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"a point in time must be an aware datetime (with a tzinfo, e.g. "
                         f"datetime.now(timezone.utc)), not the naive {when.isoformat()}")
    ms = (when - _EPOCH) // timedelta(milliseconds=1)
    if ms < 0:
        return ""  # before every id
    h = "%012x" % min(ms, _MAX_MS)  # noqa: UP031 - as clock.py spells ids
    return f"{h[:8]}-{h[8:]}-ffff-ffff-ffffffffffff"


def check_not_pruned(conn: Connection, bound: str, what: str) -> None:
    """Raise ``HistoryError`` when ``prune_history`` may have dropped history at ``bound``
    (an id) or before it; ``what`` names what needed it, for the message."""
    pruned = meta.get(conn, meta.PRUNED_BEFORE)
    if pruned and bound < pruned:
        raise HistoryError(
            f"{what} needs history from before {pruned}, and prune_history has dropped the "
            "superseded changes older than that: history that was pruned can no longer be "
            "viewed or reverted")


def winners(changes: Iterable[ChangeRow], until: str | None = None) -> dict[str, ChangeRow]:
    """The latest change (by id) of each attribute, among those with an id ``<= until``."""
    win: dict[str, ChangeRow] = {}
    for c in changes:
        if until is not None and c[ROW_ID] > until:
            continue
        w = win.get(c[ROW_ATTRIBUTE])
        if w is None or c[ROW_ID] > w[ROW_ID]:
            win[c[ROW_ATTRIBUTE]] = c
    return win


def state_at(changes: Sequence[ChangeRow], pk_name: str, until: str | None = None
             ) -> dict[str, str | None] | None:
    """Each attribute's value (JSON text) after the changes with an id ``<= until``, or
    ``None`` when the entity did not exist then (not created yet, or deleted).

    ``changes`` is the entity's whole history: one without a creation record (a row
    written before tracking began, then changed) raises ``HistoryError``, since its earlier
    values are unknown.
    """
    if changes and not any(c[ROW_ATTRIBUTE] == pk_name for c in changes):
        c = changes[0]
        raise HistoryError(
            f"{c[ROW_ENTITY_TYPE]} {c[ROW_ENTITY_ID]} has no recorded insert (it was written "
            "before tracking began and changed before db.adopt() recorded it), so its values "
            "at a point in time are not known")
    win = winners(changes, until)
    pkw = win.get(pk_name)
    if pkw is None or pkw[ROW_NEW] is None:
        return None
    return {a: w[ROW_NEW] for a, w in win.items()}


def entity_rows(conn: Connection, entity_type: str, entity_id: str) -> list[ChangeRow]:
    """Every logged change of one entity (indexed and pending), in id order; read-only."""
    found = rows_of_entities(conn, entity_type, [entity_id])
    out: list[ChangeRow] = []
    for row in [*found, *pending_rows(conn, entity=(entity_type, entity_id))]:
        out.extend(expand(row))
    out.sort()
    return out


def entity_as_of(conn: Connection, tt: TrackedTable, entity_id: str, bound: str
                 ) -> dict[str, Any] | None:
    """One row's column values (Python values, by column name) after the changes with an
    id ``<= bound``, or ``None`` when it did not exist then. Columns no change had set by
    then (added to the table later) are ``None``; attributes this schema lacks are left out.

    A row that is in the table but has no history at all raises ``HistoryError``.
    """
    changes = entity_rows(conn, tt.name, entity_id)
    if not changes and fetch_rows(conn, tt, [entity_id], [tt.pk_name]):
        raise HistoryError(f"{tt.name} {entity_id} has no recorded history (it was written "
                           "before tracking began; db.adopt() records such rows)")
    state = state_at(changes, tt.pk_name, bound)
    if state is None:
        return None
    return {name: codec.decode(state.get(name)) for name, codec in tt.codecs.items()}


def transaction_changes(conn: Connection, tx_ids: Sequence[str]
                        ) -> dict[str, list[ChangeRow]]:
    """The changes of each of ``tx_ids`` (indexed and pending), in id order; transactions
    without changes are left out."""
    out: dict[str, list[ChangeRow]] = defaultdict(list)
    for chunk in chunks(list(tx_ids)):
        for row in rows_of_transactions(conn, chunk):
            out[row[ROW_TRANSACTION]].extend(expand(row))
        for prow in pending_rows(conn, transaction_ids=chunk):
            out[prow[ROW_TRANSACTION]].extend(expand(prow))
    for v in out.values():
        v.sort()
    return dict(out)


def transaction_authors(conn: Connection, tx_ids: Iterable[str]) -> dict[str, str]:
    """Transaction id -> author, for the ids the log knows (folded or pending)."""
    return known_authors(conn, tx_ids)


def recent_transactions(conn: Connection, *, author: str | None = None,
                        table: str | None = None, limit: int | None = None
                        ) -> list[TxRecord]:
    """Transactions newest first, with their changes: only ``author``'s, only those that
    changed a row of ``table``, at most ``limit``."""
    p = schema.pending
    t = known_transactions(conn)  # folded and pending
    stmt = select(t.c.id, t.c.author).order_by(t.c.id.desc())
    if author is not None:
        stmt = stmt.where(t.c.author == author)
    if table is None:
        if limit is not None:
            stmt = stmt.limit(limit)
        found = [(tx, who) for tx, who in conn.execute(stmt)]
    else:
        # pending first, then the log: a fold in between moves rows only from the first
        # to the second, so none is missed
        touched = set(conn.execute(select(p.c.transaction_id).where(
            p.c.tables.contains(json.dumps(table), autoescape=True))).scalars())
        touched.update(transactions_touching(conn, table))
        found = []
        for tx, who in conn.execute(stmt):
            if tx in touched:
                found.append((tx, who))
                if limit is not None and len(found) >= limit:
                    break
    changes = transaction_changes(conn, [tx for tx, _ in found])
    return [(tx, who, changes.get(tx, [])) for tx, who in found]
