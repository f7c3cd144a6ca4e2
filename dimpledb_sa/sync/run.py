"""Sync: push local transactions as a bundle, pull the other authors' bundles, merge them.

One :func:`sync` call, under the database's sync lock (threads) and SQLite's write lock
(processes):

1. **Push.** Our transactions after ``pushed_through`` go into one bundle, encrypted and
   written *before* our manifest; ``pushed_through`` advances only after both writes, in
   the same database transaction that took the write lock. A crash in between leaves an
   unlisted bundle (harmless) and the next sync pushes the same transactions again. When
   our manifest is missing, unreadable or lists less than ``pushed_through``, the bundle
   holds every transaction it does not list, and the manifest is written anew.
2. **Pull.** One listing of the remote root, then each other author's manifest; bundles whose
   last transaction is after that author's cursor are fetched, decrypted and validated. An
   author whose folder name, manifest or bundle is bad, undecryptable or inconsistent is
   recorded in ``report.errors`` and skipped from that bundle on; the others go on.
3. **Merge** of everything readable in one database transaction, with the cursors, then
   the held changes the schema can now take; ``changes_committed`` (origin ``"sync"``)
   after the commit. Each author's transactions merge under a savepoint: an author whose
   changes cannot be applied here (a key that is not its entity's, a value no column can
   hold, a broken constraint) is rolled back and reported like an unreadable one. If any
   author failed, :class:`SyncError` (or its ``DecryptionError`` / ``RemoteFormatError``
   subclass when all failures are of that kind) carries the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from ..core import changelog, meta, schema
from ..core.changes import TxRecord
from ..core.errors import DecryptionError, DimpleError, RemoteFormatError, SyncError
from ..core.report import SyncReport
from ..core.rows import gc_paused
from .merge import APPLY_ERRORS, MergeResult, announce, describe, merge, replay_held_in
from .wire import (
    BundleInfo,
    Manifest,
    bundle_name,
    decode_bundle,
    decode_manifest,
    encode_bundle,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)

if TYPE_CHECKING:
    from ..core.replica import Replica
    from .remote import Remote

__all__ = ["pull", "push", "sync"]

logger = logging.getLogger(__name__)


def sync(replica: Replica, remote: Remote) -> SyncReport:
    """Push, pull and merge; see the module docstring."""
    storage = remote.storage
    report = SyncReport()
    start = dict(storage.requests)
    with replica.sync_lock:
        try:
            push(replica, remote, report)
            result = pull(replica, remote, report)
        finally:
            report.requests = {k: v - start.get(k, 0) for k, v in storage.requests.items()
                               if v - start.get(k, 0)}
    if result is not None:
        announce(replica, result)
    if report.errors:
        raise _error(report)
    return report


def _error(report: SyncReport) -> SyncError:
    kinds = set(report.error_kinds.values()) if report.error_kinds else set()
    names = ", ".join(f"{a}: {m}" for a, m in sorted(report.errors.items()))
    msg = f"sync finished with errors ({len(report.errors)}): {names}"
    if kinds == {"decrypt"}:
        return DecryptionError(msg, report)
    if kinds == {"format"}:
        return RemoteFormatError(msg, report)
    return SyncError(msg, report)


def _fail(report: SyncReport, who: str, exc: BaseException) -> None:
    kind = ("decrypt" if isinstance(exc, DecryptionError)
            else "format" if isinstance(exc, RemoteFormatError) else "other")
    report.errors[who] = str(exc) or type(exc).__name__
    report.error_kinds[who] = kind
    logger.warning("sync: %s: %s", who, report.errors[who])


# -- push --------------------------------------------------------------------------------------
def push(replica: Replica, remote: Remote, report: SyncReport) -> None:
    """Upload our transactions not pushed yet as one bundle, then the manifest."""
    storage, cipher, me = remote.storage, remote.cipher, replica.author_id
    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        changelog.fold(conn)
        since = meta.get(conn, meta.PUSHED_THROUGH)
        txs = changelog.transactions_since(conn, me, since)
        if not txs:
            return
        try:
            manifest = _own_manifest(replica, remote, since)
            listed = manifest.last_transaction_id if manifest is not None else None
            if since is not None and (listed is None or listed < since):
                logger.warning("sync: our manifest lists our transactions up to %s, not %s: "
                             "pushing the others again", listed, since)
                txs = changelog.transactions_since(conn, me, listed)
            data = cipher.encrypt(encode_bundle(txs))
            name = bundle_name(txs[0][0], txs[-1][0])
            storage.write_bundle(me, name, data)
            info = BundleInfo(name, txs[0][0], txs[-1][0], len(txs), utc_now_iso())
            manifest = manifest_with(manifest, me, info)
            storage.write_manifest(me, encode_manifest(manifest))
        except (OSError, DimpleError, ValueError) as exc:
            _fail(report, "push", exc)
            return
        remote.own_manifest = manifest
        meta.put(conn, meta.PUSHED_THROUGH, txs[-1][0])
        report.pushed = len(txs)


def _own_manifest(replica: Replica, remote: Remote, pushed_through: str | None
                  ) -> Manifest | None:
    """Our manifest: the one this handle last wrote while it still ends at
    ``pushed_through``, else read afresh (another handle on this database pushed since);
    ``None`` when there is none or it is unreadable (the push then writes it anew)."""
    cached = remote.own_manifest
    if cached is not None and cached.last_transaction_id == pushed_through:
        return cached
    data = remote.storage.read_manifest(replica.author_id)
    if data is None:
        return None
    try:
        return decode_manifest(data, replica.author_id)
    except RemoteFormatError as exc:
        logger.warning("sync: our own manifest is unreadable (%s): writing it anew", exc)
        return None


# -- pull --------------------------------------------------------------------------------------
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
        _fail(report, author, exc)
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
        _fail(report, name, RemoteFormatError(
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
        result = MergeResult()
        for author, txs in pulled.items():
            try:
                with conn.begin_nested():
                    part = merge(replica, conn, txs)
            except APPLY_ERRORS as exc:
                _fail(report, author, RemoteFormatError(
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
        replayed = replay_held_in(replica, conn)
        report.held = conn.execute(select(func.count()).select_from(schema.held)).scalar_one()
    result.add(replayed)
    report.applied = len(result.applied_changes)
    return result
