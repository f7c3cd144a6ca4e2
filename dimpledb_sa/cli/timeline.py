"""The commands about a database's history over time: ``log``, ``revert`` and ``show``.

This module owns ``log`` (transactions newest first, each with what it changed, filtered by
author or table), ``revert`` (``db.revert(TX)`` on a ``DimpleDb`` over the reflected tables
or ``--models``: a new local transaction that the next sync shares) and ``show`` (one row's
values as of a time, re-derived from its history). ``log`` and ``show`` open the database
read-only and print the log's JSON values as they are; ``revert`` writes.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from ..core import timeline
from ..core.changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_NEW,
    ROW_OLD,
    ChangeRow,
)
from ..core.clock import id_datetime
from ..core.errors import ConfigurationError, HistoryError, RevertError
from .database import load_models, open_engine, read_author, reflect, require_bookkeeping
from .output import CliError, print_json, usage_error

if TYPE_CHECKING:
    from ..db import DimpleDb

__all__ = ["cmd_log", "cmd_revert", "cmd_show", "parse_time"]


def _stamp(an_id: str) -> str:
    return id_datetime(an_id).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _shown(text: str | None, limit: int = 60) -> str:
    out = json.dumps(_json(text), ensure_ascii=False)
    return out if len(out) <= limit else out[: limit - 1] + "…"


class _Keys:
    """Primary-key column names per table, read from the database (read-only)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.names: dict[str, str | None] = {}

    def __call__(self, table: str) -> str | None:
        if table not in self.names:
            try:
                cols = inspect(self.engine).get_pk_constraint(table)["constrained_columns"]
            except SQLAlchemyError:
                cols = []
            self.names[table] = cols[0] if len(cols) == 1 else None
        return self.names[table]


def _guess_key(changes: Sequence[ChangeRow]) -> str | None:
    """For a table this database lacks: the attribute going between null and the id."""
    for c in changes:
        eid = json.dumps(c[ROW_ENTITY_ID])
        if {c[ROW_OLD], c[ROW_NEW]} == {None, eid}:
            return c[ROW_ATTRIBUTE]
    return None


def _entity_lines(changes: list[ChangeRow], pk: str | None) -> list[str]:
    """One transaction's changes to one entity, for people."""
    etype, eid = changes[0][ROW_ENTITY_TYPE], changes[0][ROW_ENTITY_ID]
    keyed = [c for c in changes if c[ROW_ATTRIBUTE] == pk]
    rest = [c for c in changes if c[ROW_ATTRIBUTE] != pk]
    head = f"    {etype} {eid}"
    if keyed and keyed[-1][ROW_NEW] is None:
        return [f"{head}: deleted"]
    if keyed and keyed[0][ROW_OLD] is None:
        values = "  ".join(f"{c[ROW_ATTRIBUTE]}={_shown(c[ROW_NEW], 40)}" for c in rest)
        return [f"{head}: created" + (f"  {values}" if values else "")]
    return [f"{head}: {c[ROW_ATTRIBUTE]} {_shown(c[ROW_OLD])} -> {_shown(c[ROW_NEW])}"
            for c in rest]


def _tx_doc(tx: str, author: str, changes: list[ChangeRow]) -> dict[str, Any]:
    return {"id": tx, "author": author, "timestamp": id_datetime(tx).isoformat(),
            "changes": [{"id": c[ROW_ID], "entity_type": c[ROW_ENTITY_TYPE],
                         "entity_id": c[ROW_ENTITY_ID], "attribute": c[ROW_ATTRIBUTE],
                         "old_value": _json(c[ROW_OLD]), "new_value": _json(c[ROW_NEW])}
                        for c in changes]}


def cmd_log(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise usage_error("--limit must be 0 (no limit) or more")
    engine = open_engine(args.database, readonly=True)
    try:
        require_bookkeeping(engine)
        me = read_author(engine) or ""
        author = me if args.author == "me" else args.author
        limit = args.limit or None
        with engine.connect() as conn:
            found = timeline.recent_transactions(
                conn, author=author, table=args.table,
                limit=None if limit is None else limit + 1)
        more = limit is not None and len(found) > limit
        found = found[:limit]
        keys = _Keys(engine)
        if args.json:
            print_json([_tx_doc(*tx) for tx in found])
            return 0
        for tx, who, changes in found:
            print(f"{_stamp(tx)}  transaction {tx}  by {who}"
                  + (" (this database)" if who == me else ""))
            by_entity: dict[tuple[str, str], list[ChangeRow]] = {}
            for c in changes:
                by_entity.setdefault((c[ROW_ENTITY_TYPE], c[ROW_ENTITY_ID]), []).append(c)
            for (etype, _), rows in by_entity.items():
                pk = keys(etype) or _guess_key(rows)
                for line in _entity_lines(rows, pk):
                    print(line)
            if not changes:
                print("    (no changes)")
    finally:
        engine.dispose()
    if not found:
        print("no transactions" + (" match" if args.author or args.table else ""))
    elif more:
        print(f"(older transactions not shown: --limit {args.limit}; --limit 0 shows all)")
    return 0


def _transaction_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise usage_error(f"not a transaction id: {text!r} (see `dimpledb log`)") from None


def _open_db(args: argparse.Namespace, engine: Engine) -> DimpleDb:
    """A ``DimpleDb`` without a remote over ``--models`` or the reflected tables."""
    from ..db import DimpleDb

    if args.models:
        models: Any = load_models(args.models)
        exclude: list[str] = list(args.exclude or [])
    else:
        models, exclude = reflect(engine, args.exclude or [], lambda _text: None)
    try:
        return DimpleDb(engine, models, exclude=exclude)
    except ConfigurationError as e:
        raise usage_error(str(e)) from None


def cmd_revert(args: argparse.Namespace) -> int:
    tx = _transaction_id(args.transaction)
    engine = open_engine(args.database, readonly=False)
    try:
        require_bookkeeping(engine)
        db = _open_db(args, engine)
        try:
            new_tx = db.revert(tx)
        except (HistoryError, RevertError) as e:
            raise CliError(str(e)) from None
        finally:
            db.close()
        undo: list[ChangeRow] = []
        if new_tx is not None:
            with engine.connect() as conn:
                undo = timeline.transaction_changes(conn, [new_tx]).get(new_tx, [])
    finally:
        engine.dispose()
    if args.json:
        print_json({"reverted": tx, "transaction_id": new_tx,
                    "changes": _tx_doc(new_tx, "", undo)["changes"] if new_tx else []})
    elif new_tx is None:
        print(f"nothing to undo in transaction {tx}: what it changed has been changed again, "
              "undone or deleted since")
    elif not args.quiet:
        rows = len({(c[ROW_ENTITY_TYPE], c[ROW_ENTITY_ID]) for c in undo})
        print(f"reverted transaction {tx} as transaction {new_tx} ({len(undo)} change(s) to "
              f"{rows} row(s)); sync to share it")
    return 0


def parse_time(text: str) -> datetime:
    """``now`` or an ISO-8601 time; without a UTC offset it is taken as UTC."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise usage_error(f"--as-of takes an ISO-8601 time such as 2026-11-26T10:30:00Z "
                          f"(UTC unless it has an offset) or `now`, not {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _entity_ids(entity_id: str) -> list[str]:
    try:
        canonical = str(uuid.UUID(entity_id))
    except ValueError:
        return [entity_id]
    return [entity_id] if canonical == entity_id else [entity_id, canonical]


def cmd_show(args: argparse.Namespace) -> int:
    when = parse_time(args.as_of)
    bound = timeline.id_bound(when)
    engine = open_engine(args.database, readonly=True)
    try:
        require_bookkeeping(engine)
        with engine.connect() as conn:
            changes: list[ChangeRow] = []
            for eid in _entity_ids(args.id):
                changes = timeline.entity_rows(conn, args.table, eid)
                if changes:
                    break
            if not changes:
                raise CliError(f"no history for {args.table} {args.id}")
            pk = _Keys(engine)(args.table) or _guess_key(changes)
            if pk is None:
                raise CliError(f"cannot tell the primary key of {args.table}")
            try:
                timeline.check_not_pruned(conn, bound, f"showing {args.table} {args.id}")
                state = timeline.state_at(changes, pk, bound)
            except HistoryError as e:
                raise CliError(str(e)) from None
    finally:
        engine.dispose()
    return _print_state(args, when, changes, pk, state)


def _print_state(args: argparse.Namespace, when: datetime, changes: list[ChangeRow], pk: str,
                 state: dict[str, str | None] | None) -> int:
    eid = changes[0][ROW_ENTITY_ID]
    shown_at = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    if args.json:
        print_json({"entity_type": args.table, "entity_id": eid,
                    "as_of": when.astimezone(UTC).isoformat(), "exists": state is not None,
                    "values": None if state is None else
                    {a: _json(v) for a, v in state.items()}})
        return 0
    keyed = [c for c in changes if c[ROW_ATTRIBUTE] == pk]
    if state is None:
        first = keyed[0][ROW_ID] if keyed else changes[0][ROW_ID]
        if first > timeline.id_bound(when):
            print(f"{args.table} {eid} did not exist yet at {shown_at} (created "
                  f"{_stamp(first)})")
        else:
            print(f"{args.table} {eid} did not exist at {shown_at} (deleted before then)")
        return 0
    print(f"{args.table} {eid} as of {shown_at}:")
    width = max(len(a) for a in state)
    for attr, value in sorted(state.items(), key=lambda kv: (kv[0] != pk, kv[0])):
        print(f"    {attr:<{width}}  {_shown(value, 200)}")
    return 0
