"""Pull: fetch the other authors' new bundles and merge them, with their cursors.

One listing of the remote root, then each other author's manifest; bundles whose last
transaction is after that author's cursor are fetched, decrypted and validated. An author
whose folder name, manifest or bundle is bad, undecryptable or inconsistent is recorded in
``report.errors`` and skipped from that bundle on; the others go on. Everything readable
merges in one database transaction, with the cursors: first the rules look again at what
this replica changed itself since (:func:`.merge.settle_local`), then each author's
transactions, then the held changes the schema can now take and the rows the database
refused before. Changes that break a constraint are kept out as conflicts, never errors.
Each author's transactions merge under a savepoint: an author whose changes cannot be
applied here at all (a key that is not its entity's, a value no column can hold) is rolled
back and reported like an unreadable one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from ..core import conflicts, meta, schema
from ..core.changes import TxRecord
from ..core.errors import DimpleError, RemoteFormatError, SyncError
from ..core.rows import gc_paused
from .merge import (
    APPLY_ERRORS,
    MergeResult,
    describe,
    merge,
    replay_held_in,
    retry_refused,
    settle_local,
)
from .report_errors import fail
from .wire import BundleInfo, decode_bundle, decode_manifest, utc_now_iso

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .remote import Remote

__all__ = ["pull"]


def _cursors(conn: Connection) -> dict[str, str]:
    c = schema.cursors
    return {a: t for a, t in conn.execute(select(c.c.author, c.c.last_transaction_id))}


def _fetch_author(remote: Remote, author: str, cursor: str | None,
                  report: SyncReport) -> tuple[list[TxRecord], str | None]:
    """The new transactions of one author, up to its first unreadable bundle."""
    storage, cipher = remote.storage, remote.cipher
    out: list[TxRecord] = []
    last: str | None = None
    try:
        data = storage.read_manifest(author)
        if data is None:
            return out, last
        manifest = decode_manifest(data, author)
        wanted = [b for b in manifest.bundles
                  if cursor is None or b.last_transaction_id > cursor]
        if not wanted:
            return out, last
        blobs = storage.read_bundles(author, [b.filename for b in wanted])
        for info in wanted:
            blob = blobs.get(info.filename)
            if isinstance(blob, BaseException) or blob is None:
                raise blob or FileNotFoundError(info.filename)
            txs = decode_bundle(cipher.decrypt(blob), author, name=info.filename)
            _check_bundle(info, txs)
            out.extend(txs)
            last = info.last_transaction_id
    except (OSError, DimpleError, ValueError) as exc:
        fail(report, author, exc)
    return out, last


def _check_bundle(info: BundleInfo, txs: Sequence[TxRecord]) -> None:
    """A bundle must hold what its manifest entry says (count and id range)."""
    where = f"bundle {info.filename}"
    if len(txs) != info.transaction_count:
        raise RemoteFormatError(
            f"{where} holds {len(txs)} transactions, its manifest says {info.transaction_count}"
        )
    ids = [t[0] for t in txs]
    if ids and (min(ids) != info.first_transaction_id or max(ids) != info.last_transaction_id):
        raise RemoteFormatError(f"{where}: transaction ids do not match its file name")


def pull(replica: Replica, remote: Remote, report: SyncReport) -> MergeResult | None:
    """Fetch every other author's new bundles and merge them; returns the merge result."""
    storage = remote.storage
    me = replica.author_id
    try:
        authors, bad = storage.list_authors()
    except OSError as exc:
        raise SyncError(f"cannot list the remote: {exc}", report) from exc
    for name in bad:
        fail(report, name, RemoteFormatError(
            f"folder {name!r:.80} in the remote is not an author id (a UUID)"))
    with replica.engine.connect() as conn:
        cursors = _cursors(conn)
        conn.rollback()
    pulled: dict[str, list[TxRecord]] = {}
    advanced: dict[str, str] = {}
    for author in authors:
        if author == me:
            continue
        txs, last = _fetch_author(remote, author, cursors.get(author), report)
        if txs:
            pulled[author] = txs
        if last is not None:
            advanced[author] = last
    report.pulled = sum(map(len, pulled.values()))
    # a large merge builds only acyclic tuples/dicts; the cyclic GC would rescan them often
    with gc_paused(report.pulled > 1000), replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        conflicts.ensure_table(conn)
        result = settle_local(replica, conn)
        for author, txs in pulled.items():
            try:
                with conn.begin_nested():
                    part = merge(replica, conn, txs)
            except APPLY_ERRORS as exc:
                fail(report, author, RemoteFormatError(
                    f"its changes cannot be applied here: {describe(exc)}"))
                advanced.pop(author, None)
                continue
            result.add(part)
        c = schema.cursors
        now = utc_now_iso()
        current = _cursors(conn)
        for author, last in advanced.items():
            if author in current:
                if last > current[author]:
                    conn.execute(update(c).where(c.c.author == author)
                                 .values(last_transaction_id=last, synced_at=now))
            else:
                conn.execute(insert(c).values(author=author, last_transaction_id=last,
                                              synced_at=now))
        result.add(replay_held_in(replica, conn))
        result.add(retry_refused(replica, conn))
        report.held = conn.execute(select(func.count()).select_from(schema.held)).scalar_one()
        report.conflicts = conflicts.count(conn)
    report.applied = len(result.applied_changes)
    return result
