"""The commands about one database: sync, status, history and conflicts.

This module owns ``sync`` (a ``DimpleDb`` over the reflected tables or ``--models``, with
bookkeeping tables created on first use, ``--recipient`` keys added to the database's
persisted recipients (which every later sync uses), optional adoption of rows written before
tracking,
push, pull and merge progress reported through ``db.sync(progress=...)``, and a report on stdout
with per-author errors on stderr), ``status`` (the author id, what was pushed and not yet
pushed, what was pulled from each author, held changes and, with ``--remote``, what waits
there to be pulled), ``history`` (every recorded change of one row, grouped by
transaction), ``conflicts`` (the changes merges keep out of the tables, each with the row
it collided with and the change kept out) and ``reauthor`` (a new author id for a copied
database, see :mod:`dimpledb_sa.sync.reauthor`). ``status``, ``history`` and ``conflicts``
open the database read-only (read-write only when a crash left it needing recovery) and
write nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..core import changelog, conflicts, schema
from ..core.errors import ConfigurationError, DimpleError, SyncError
from ..sync import ahead
from ..sync.wire import decode_manifest
from .database import (
    db_url,
    load_models,
    open_engine,
    read_author,
    reflect,
    require_bookkeeping,
    sa_message,
)
from .keys import Keys, read_keys
from .output import PROG, CliError, Progress, print_json, usage_error, when
from .recipients import persist_recipients
from .remote import is_folder, open_remote, remote_errors, storage_options

if TYPE_CHECKING:
    from ..core.changes import Change
    from ..core.report import SyncReport
    from ..db import DimpleDb
    from ..sync.storage import Storage

__all__ = ["cmd_conflicts", "cmd_history", "cmd_reauthor", "cmd_status", "cmd_sync"]


# -- sync --------------------------------------------------------------------------------------
def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


_PHASES = {"push": "transaction(s) uploaded", "pull": "bundle(s) read",
           "merge": "change(s) merged"}


def _on_progress(progress: Progress) -> Callable[[str, int, int], None]:
    """The ``progress=`` callback of ``db.sync``: a bar per phase on a terminal, one line at
    the end of each phase otherwise."""

    def report(phase: str, done: int, total: int) -> None:
        text = f"{phase}: {done} of {total} {_PHASES.get(phase, 'done')}"
        if progress.tty:
            progress.bar(done, total, text)
        elif done == total:
            progress.line(text)

    return report


def _unpushed(engine: Engine, me: str) -> tuple[int, str | None]:
    m = schema.meta
    with engine.connect() as conn:
        since = conn.execute(select(m.c.value).where(m.c.key == "pushed_through")).scalar()
        return changelog.count_transactions(conn, me, since)


def _report_doc(report: SyncReport) -> dict[str, Any]:
    return {"pushed": report.pushed, "pulled": report.pulled, "applied": report.applied,
            "held": report.held, "conflicts": report.conflicts, "errors": dict(report.errors),
            "requests": dict(report.requests), "push_skipped": report.push_skipped}


def cmd_sync(args: argparse.Namespace) -> int:
    keys = read_keys(args)
    if not keys.given:
        raise usage_error("sync needs a key: --identity-file PATH (or --identity, "
                          "$DIMPLEDB_IDENTITY_FILE, $DIMPLEDB_IDENTITY), --passphrase-env VAR, "
                          "or --no-encryption")
    keys.cipher()
    progress = Progress(sys.stderr, enabled=not args.quiet and not args.no_progress)

    def notes(text: str) -> None:
        if args.verbose:
            print(f"note: {text}", file=sys.stderr)

    engine = open_engine(args.database, readonly=False)
    fresh = not inspect(engine).has_table(schema.meta.name)
    db = _open_db(args, engine, keys, notes)
    try:
        storage = db.storage
        if is_folder(storage) and not storage.fs.exists(storage.root) and not args.quiet:
            print(f"note: remote folder {storage.root} does not exist yet; it is created "
                  "on the first push", file=sys.stderr)
        db.create_all(models=False)
        added = persist_recipients(engine, keys.recipients, args.database)
        if added and not args.quiet:
            print(f"note: added {len(added)} recipient(s) to {args.database}; later syncs "
                  "use them without -r (see `dimpledb recipients`)", file=sys.stderr)
        if fresh and not args.quiet:
            print(f"note: {args.database} had no dimpledb bookkeeping tables; created them "
                  f"(author {db.author_id})" + ("" if args.adopt else
                  "; rows written before are not synced unless you pass --adopt"),
                  file=sys.stderr)
        notes(f"tracking {', '.join(sorted(db.tracked))}")
        if args.adopt:
            adopted = db.adopt()
            if not args.quiet:
                print(f"adopted {adopted} existing row(s)", file=sys.stderr)
        me = db.author_id
        count, _ = _unpushed(engine, me)
        if count:
            progress.line(f"push: {count} local transaction(s)")
        before = dict(storage.transferred)
        started = time.perf_counter()
        error: SyncError | None = None
        with remote_errors(args.remote):
            try:
                report = db.sync(progress=_on_progress(progress))
            except SyncError as e:
                if e.report is None:
                    raise
                error, report = e, e.report
            except ConfigurationError as e:  # e.g. a copied database: not the command line
                raise CliError(str(e)) from None
            except SQLAlchemyError as e:  # the database's fault, not the remote's
                raise CliError(f"database {args.database}: {sa_message(e)}") from None
            finally:
                progress.finish()
        elapsed = time.perf_counter() - started
        stats = {k: v - before.get(k, 0) for k, v in storage.transferred.items()}
    finally:
        db.close()
        engine.dispose()
    _print_report(args, report, error, keys, stats, elapsed)
    return 0 if error is None else 1


def _open_db(args: argparse.Namespace, engine: Engine, keys: Keys,
             notes: Callable[[str], None]) -> DimpleDb:
    """The ``DimpleDb`` of ``sync``: the ``--models`` or the reflected tables."""
    from ..db import DimpleDb

    if args.models:
        models: Any = load_models(args.models)
        exclude: list[str] = list(args.exclude or [])
    else:
        models, exclude = reflect(engine, args.exclude or [], notes)
    try:
        # recipients= is not passed: the database's persisted list (which -r adds to) is used
        return DimpleDb(engine, models, exclude=exclude, remote=args.remote,
                        storage_options=storage_options(args.storage_option) or None,
                        **{**keys.kwargs(), "recipients": None},
                        require_signatures=False if args.allow_unsigned else None)
    except ConfigurationError as e:
        if "no tables to track" in str(e):
            raise CliError(f"nothing to sync in {args.database}: no table has a single string "
                           "or UUID primary key (see --models)") from None
        raise usage_error(str(e)) from None


def _print_report(args: argparse.Namespace, report: SyncReport, error: SyncError | None,
                  keys: Keys, stats: dict[str, int], elapsed: float) -> None:
    if args.json:
        print_json({**_report_doc(report), "ok": report.ok,
                    "bytes_downloaded": stats.get("down", 0),
                    "bytes_uploaded": stats.get("up", 0)})
    elif not args.quiet:
        print(f"pushed {report.pushed} transaction(s), pulled {report.pulled}, applied "
              f"{report.applied} change(s), {report.held} held, in {elapsed:.2f} s")
        if report.conflicts:
            print(f"{report.conflicts} conflict(s): changes kept out of the tables "
                  f"(`{PROG} conflicts {args.database}` lists them)")
    if report.push_skipped and not args.quiet:
        print(f"{PROG}: note: did not push: another sync of this database (the app, or "
              "another dimpledb) is pushing right now; its push or the next sync takes "
              "this database's transactions", file=sys.stderr)
    for who, message in sorted(report.errors.items()):
        kind = report.error_kinds.get(who)
        if who == "push":
            print(f"{PROG}: push failed: {message}", file=sys.stderr)
        elif kind == "decrypt":
            print(f"{PROG}: cannot decrypt the bundles of author {who} with the given "
                  f"{keys.what}: {message}", file=sys.stderr)
        else:
            print(f"{PROG}: author {who}: {message}", file=sys.stderr)
    if error is not None and not str(error).startswith("sync finished with errors"):
        print(f"{PROG}: {error}", file=sys.stderr)  # e.g. the remote could not be listed


# -- status -----------------------------------------------------------------------------------
def _remote_status(storage: Storage, me: str, cursors: dict[str, str],
                   pushed_through: str | None) -> dict[str, Any]:
    authors, bad = storage.list_authors()
    out: dict[str, Any] = {"authors": [], "bad_entries": bad}
    for author in authors:
        entry: dict[str, Any] = {"author": author, "is_me": author == me}
        try:
            data = storage.read_manifest(author)
            if data is None:
                entry["error"] = "no manifest"
            else:
                m = decode_manifest(data, author)
                cursor = cursors.get(author) if author != me else pushed_through
                entry["last_transaction_id"] = m.last_transaction_id
                entry["last_sync_timestamp"] = m.last_sync_timestamp
                entry["pending"] = sum(b.transaction_count for b in m.bundles
                                       if cursor is None or b.last_transaction_id > cursor)
        except DimpleError as e:
            entry["error"] = str(e)
        out["authors"].append(entry)
    return out


def cmd_status(args: argparse.Namespace) -> int:
    engine = open_engine(args.database, readonly=True)
    try:
        require_bookkeeping(engine)
        me = read_author(engine) or ""
        m, c, h = schema.meta, schema.cursors, schema.held
        with engine.connect() as conn:
            pushed = conn.execute(select(m.c.value).where(m.c.key == "pushed_through")
                                  ).scalar()
            local, _ = changelog.count_transactions(conn, me)
            cursors = list(conn.execute(select(c.c.author, c.c.last_transaction_id,
                                               c.c.synced_at).order_by(c.c.author)))
            held = list(conn.execute(select(h.c.entity_type, h.c.attribute, h.c.reason,
                                            func.count()).group_by(
                h.c.entity_type, h.c.attribute, h.c.reason).order_by(h.c.entity_type,
                                                                     h.c.attribute)))
            kept_out = conflicts.count(conn)
            early, due = ahead.count(conn), ahead.first_due(conn)
        unpushed, oldest = _unpushed(engine, me)
    finally:
        engine.dispose()
    remote: dict[str, Any] | None = None
    if args.remote:
        storage = open_remote(args.remote, args.storage_option, must_exist=True)
        with remote_errors(args.remote):
            remote = _remote_status(storage, me, {a: tx for a, tx, _ in cursors}, pushed)
    if args.json:
        print_json({
            "database": make_url(db_url(args.database)).render_as_string(hide_password=True),
            "author_id": me, "local_transactions": local, "pushed_through": pushed,
            "unpushed": unpushed,
            "held": [{"entity_type": e, "attribute": a, "reason": r, "count": n}
                     for e, a, r, n in held],
            "held_ahead": {"changes": early, "first_due": due},
            "conflicts": kept_out,
            "cursors": [{"author": a, "last_transaction_id": tx, "synced_at": at}
                        for a, tx, at in cursors],
            "remote": remote,
        })
        return 0
    print(f"author       {me}")
    print(f"pushed       {pushed or 'nothing yet'}"
          + (f" ({when(pushed)})" if pushed else ""))
    print(f"not pushed   {unpushed} of {local} local transaction(s)"
          + (f", oldest from {when(oldest)}" if unpushed else ""))
    total_held = sum(n for *_, n in held) + early
    print(f"held         {total_held} change(s)")
    for e, a, r, n in held:
        print(f"               {e}.{a}: {n} ({r})")
    if early:
        print(f"               {early} from a clock ahead of this device's (more than "
              f"max_drift), applied from {when(due)} on")
    print(f"conflicts    {kept_out} change(s) kept out"
          + (f" (`{PROG} conflicts` lists them)" if kept_out else ""))
    print(f"authors      {len(cursors)} pulled from")
    for a, tx, at in cursors:
        print(f"  {a}  through {tx} ({when(tx)}), last pulled {at}")
    if remote is not None:
        print(f"remote       {args.remote}: {len(remote['authors'])} author(s)")
        for entry in remote["authors"]:
            who = entry["author"] + (" (this database)" if entry["is_me"] else "")
            if "error" in entry:
                print(f"  {who}: {entry['error']}")
            elif entry["is_me"]:
                print(f"  {who}: {entry['pending']} transaction(s) on the remote not "
                      "recorded as pushed here")
            else:
                print(f"  {who}: {entry['pending']} transaction(s) to pull, last sync "
                      f"{entry['last_sync_timestamp']}")
        for name in remote["bad_entries"]:
            print(f"  {name!r}: not an author folder (sync reports it as an error)")
    return 0


# -- history ----------------------------------------------------------------------------------
def _history_ids(entity_id: str) -> list[str]:
    ids = [entity_id]
    try:
        canonical = str(uuid.UUID(entity_id))
    except ValueError:
        return ids
    if canonical != entity_id:
        ids.append(canonical)
    return ids


def _value(v: Any, limit: int = 60) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cmd_history(args: argparse.Namespace) -> int:
    engine = open_engine(args.database, readonly=True)
    try:
        require_bookkeeping(engine)
        me = read_author(engine)
        changes: list[Change] = []
        with engine.connect() as conn:
            for entity_id in _history_ids(args.id):
                changes = changelog.history(conn, args.table, entity_id)
                if changes:
                    break
            p = schema.pending
            known = changes or changelog.has_changes_of(conn, args.table) or conn.execute(
                select(p.c.seq).where(p.c.tables.contains(json.dumps(args.table),
                                                          autoescape=True)).limit(1)
                ).first() is not None
    finally:
        engine.dispose()
    if not changes:
        hint = "" if known else f" (no change of any row of table {args.table!r} is recorded)"
        raise CliError(f"no history for {args.table} {args.id}{hint}")
    if args.json:
        print_json([{"id": ch.id, "transaction_id": ch.transaction_id, "author": ch.author,
                     "timestamp": ch.timestamp.isoformat(), "entity_type": ch.entity_type,
                     "entity_id": ch.entity_id, "attribute": ch.attribute,
                     "old_value": ch.old_value, "new_value": ch.new_value}
                    for ch in changes])
        return 0
    pk_names = {ch.attribute for ch in changes if ch.new_value == ch.entity_id
                and ch.old_value is None}
    print(f"{args.table} {changes[0].entity_id}: {len(changes)} change(s)")
    width = max(len(ch.attribute) for ch in changes)
    tx = None
    for ch in changes:
        if ch.transaction_id != tx:
            tx = ch.transaction_id
            who = ch.author + (" (this database)" if ch.author == me else "")
            print(f"{ch.timestamp.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC  "
                  f"transaction {tx}  by {who}")
        if ch.attribute in pk_names and ch.new_value is None:
            print(f"    {'(deleted)':<{width}}")
        elif ch.attribute in pk_names and ch.old_value is None:
            print(f"    {'(created)':<{width}}")
        else:
            print(f"    {ch.attribute:<{width}}  {_value(ch.old_value)} -> "
                  f"{_value(ch.new_value)}")
    return 0


# -- conflicts --------------------------------------------------------------------------------
def _conflict_doc(c: conflicts.Conflict) -> dict[str, Any]:
    ch = c.change
    return {"kind": c.kind, "entity_type": c.entity_type, "entity_id": c.entity_id,
            "attribute": c.attribute, "other_entity_type": c.other_entity_type,
            "other_entity_id": c.other_entity_id, "detail": c.detail,
            "change": {"id": ch.id, "transaction_id": ch.transaction_id, "author": ch.author,
                       "timestamp": ch.timestamp.isoformat(), "attribute": ch.attribute,
                       "old_value": ch.old_value, "new_value": ch.new_value}}


def cmd_conflicts(args: argparse.Namespace) -> int:
    engine = open_engine(args.database, readonly=True)
    try:
        require_bookkeeping(engine)
        me = read_author(engine)
        with engine.connect() as conn:
            found = conflicts.read(conn)
    finally:
        engine.dispose()
    if args.table:
        found = [c for c in found if c.entity_type == args.table]
    if args.json:
        print_json([_conflict_doc(c) for c in found])
        return 0
    if not found:
        print("no conflicts: every change merged is in the tables")
        return 0
    print(f"{len(found)} conflict(s): changes kept out of the tables")
    for c in found:
        ch = c.change
        where = f"{c.entity_type} {c.entity_id}" + (f" .{c.attribute}" if c.attribute else "")
        who = ch.author + (" (this database)" if ch.author == me else "")
        print(f"{c.kind:<12} {where}")
        print(f"    {c.detail}")
        print(f"    kept out: {ch.attribute} -> {_value(ch.new_value)}, change {ch.id} "
              f"({when(ch.id)}) by {who}")
    return 0


# -- reauthor ---------------------------------------------------------------------------------
def cmd_reauthor(args: argparse.Namespace) -> int:
    from ..sync.reauthor import reauthor

    engine = open_engine(args.database, readonly=False)
    try:
        require_bookkeeping(engine)
        done = reauthor(engine)
    finally:
        engine.dispose()
    if args.json:
        print_json({"database": make_url(db_url(args.database)).render_as_string(
            hide_password=True), "old_author_id": done.old, "author_id": done.new,
            "moved_transactions": done.moved})
        return 0
    print(f"author       {done.new} (was {done.old or 'none'})")
    print(f"moved        {done.moved} transaction(s) not pushed yet to the new author id")
    print("next         sync this database: it pushes them under the new id, and pulls the "
          "old author's like another device's", file=sys.stderr)
    return 0
