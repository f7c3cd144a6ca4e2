"""Pull: fetch the other authors' new bundles and merge them, with their cursors.

One listing of the remote root, then each other author's manifest. An author's bundles are
read in manifest order, in batches of :data:`BATCH`, from the first one after its cursor;
each file is read, decrypted and decoded on its own, so one bad file never stops the others:

- a bundle that does not decrypt or decode (any exception, native panics included; only
  ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass), that is larger than
  the read limit, or whose changes cannot be applied here is set aside in
  ``dimple_unreadable`` (:mod:`.quarantine`), counted in ``report.quarantined``, named in
  ``report.errors``, and retried on every later sync; the cursor moves past it, so the
  author's later bundles still merge;
- a bundle its manifest lists but that is missing, or that fails to download, ends the
  reading of that author for this sync: the cursor stays before it and the next sync starts
  there (so a manifest listing thousands of missing files costs one batch of requests); a
  missing one is also recorded, so that its writer hears of it.

Everything readable merges in one database transaction with the cursors, the quarantine and
what other authors' notes say about our files: first the rules look again at what this
replica changed itself since (:func:`.merge.settle_local`), then each author's transactions,
then the held changes the schema can now take and the rows the database refused before.
Changes that break a constraint are kept out as conflicts, never errors. Each author's
transactions merge under a savepoint; when they cannot be applied, they merge bundle by
bundle, and only the bundles that still fail are set aside. Last, our notes file is
published when it changed (:mod:`.notes`). An author whose manifest cannot be read is
reported and skipped; the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from ..core import conflicts, meta, schema
from ..core.changes import TxRecord
from ..core.errors import DecryptionError, RemoteFormatError, SyncError
from ..core.rows import gc_paused
from . import ahead, notes, quarantine, snapshot
from .merge import (
    APPLY_ERRORS,
    MergeResult,
    describe,
    merge,
    replay_held_in,
    retry_refused,
    settle_local,
)
from .quarantine import Entry, Problem
from .report_errors import fail
from .storage import TooLargeError
from .trust import RevokedSignature
from .wire import (
    BundleInfo,
    Manifest,
    decode_bundle,
    decode_manifest,
    parse_bundle_name,
    utc_now_iso,
)

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .crypto import Cipher
    from .remote import Remote

__all__ = ["BATCH", "pull"]

BATCH = 16
"""Bundles of one author downloaded in one backend call."""

_PASS = (KeyboardInterrupt, SystemExit, GeneratorExit)
"""What reading a remote file lets through; every other exception fails only that file."""

_UNAPPLIABLE = (*APPLY_ERRORS, RecursionError)


@dataclass
class AuthorPull:
    """What one author's fetch found, and what merging it then did."""

    author: str
    old: dict[str, Entry]
    """Its files quarantined before this sync."""
    good: list[tuple[BundleInfo, list[TxRecord]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Files set aside this sync (recorded in ``dimple_unreadable``)."""
    failed_reads: list[Problem] = field(default_factory=list)
    """Downloads that failed (network, permissions): reported, not recorded."""
    cleared: set[str] = field(default_factory=set)
    """Quarantined files that its manifest no longer lists, or that merged this time."""
    advanced: str | None = None
    errors: list[BaseException] = field(default_factory=list)
    """Its manifest or notes file could not be read."""
    digest: str | None = None
    notes: list[notes.Note] | None = None
    """What its notes file says about our bundles, when read this sync (at ``digest``)."""


def _cursors(conn: Connection) -> dict[str, str]:
    c = schema.cursors
    return {a: t for a, t in conn.execute(select(c.c.author, c.c.last_transaction_id))}


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


def _explain(exc: BaseException) -> str:
    if isinstance(exc, SyncError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_one(cipher: Cipher, author: str, info: BundleInfo,
              blob: bytes | BaseException | None) -> list[TxRecord] | Problem:
    """One downloaded bundle decrypted, decoded and checked, or why it cannot be used."""
    name = info.filename
    if blob is None or isinstance(blob, FileNotFoundError):
        return Problem(name, quarantine.MISSING, "listed in the manifest, but not there")
    if isinstance(blob, TooLargeError):
        return Problem(name, quarantine.TOO_LARGE, str(blob))
    if isinstance(blob, SyncError):  # refused on the way in (a signature check, say)
        reason = quarantine.DECRYPT if isinstance(blob, DecryptionError) else quarantine.FORMAT
        return Problem(name, reason, _explain(blob))
    if isinstance(blob, BaseException):
        return Problem(name, quarantine.READ, _explain(blob))
    stage = quarantine.DECRYPT
    try:
        plain = cipher.decrypt(blob)
        stage = quarantine.FORMAT
        txs = decode_bundle(plain, author, name=name)
        _check_bundle(info, txs)
    except _PASS:
        raise
    except BaseException as exc:  # native panics (pyrage) are BaseExceptions too
        reason = (quarantine.DECRYPT if isinstance(exc, DecryptionError)
                  else quarantine.FORMAT if isinstance(exc, RemoteFormatError) else stage)
        return Problem(name, reason, _explain(exc))
    return txs


def _fetch_bundles(remote: Remote, ap: AuthorPull, manifest: Manifest,
                   cursor: str | None) -> None:
    """Retry ``ap``'s quarantined files behind its cursor, then read its bundles after the
    cursor in manifest order, up to the first that is missing or fails to download."""
    listed = {b.filename: b for b in manifest.bundles}
    names = quarantine.to_retry(ap.old) + _replaced(ap, manifest, listed)
    retry = [listed[f] for f in dict.fromkeys(names)
             if f in listed and cursor is not None and listed[f].last_transaction_id <= cursor]
    wanted = [b for b in manifest.bundles if cursor is None or b.last_transaction_id > cursor]
    queue = retry + wanted
    for start in range(0, len(queue), BATCH):
        batch = queue[start : start + BATCH]
        blobs = remote.read_bundles(ap.author, [b.filename for b in batch])
        for i, info in enumerate(batch, start):
            got = _read_one(remote.cipher, ap.author, info, blobs.get(info.filename))
            retrying = i < len(retry)
            if isinstance(got, list):
                ap.good.append((info, got))
            elif got.reason == quarantine.READ:
                ap.failed_reads.append(got)
                if not retrying:
                    return
                continue
            else:
                ap.problems.append(got)
                if got.reason == quarantine.MISSING and not retrying:
                    return
            if not retrying:
                ap.advanced = info.last_transaction_id


def _replaced(ap: AuthorPull, manifest: Manifest, listed: dict[str, BundleInfo]
              ) -> list[str]:
    """Quarantined files that ``manifest`` no longer lists are forgotten; the listed bundles
    that hold any of their transactions now (a manifest written anew) are read instead."""
    out: list[str] = []
    for name in ap.old:
        if name in listed:
            continue
        ap.cleared.add(name)
        first, last = parse_bundle_name(name)
        out += [b.filename for b in manifest.bundles
                if b.first_transaction_id <= last and b.last_transaction_id >= first]
    return out


def _from_snapshot(remote: Remote, ap: AuthorPull, manifest: Manifest,
                   cursor: str | None) -> str | None:
    """Hook for :mod:`.snapshot`: when the cursor is unset or points into bundles that a
    compaction removed, the author's newest snapshot goes first (as one pseudo bundle) and
    the bundles are read from its last transaction on."""
    found = snapshot.for_pull(remote, ap.author, manifest, cursor)
    if found is None:
        return cursor
    ap.good.append(found)
    ap.advanced = found[0].last_transaction_id
    return ap.advanced


def _fetch_author(remote: Remote, me: str, author: str, cursor: str | None,
                  old: dict[str, Entry], digest: str | None) -> AuthorPull:
    """Everything one author's folder holds for us this sync; never raises but for
    ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit``."""
    ap = AuthorPull(author, old)
    try:
        try:
            data = remote.read_manifest(author)
        except RevokedSignature:
            if not _revoked_wrote_since(remote, author, cursor):
                return ap  # a revoked device that wrote nothing we lack: nothing to reject
            raise
        if data is None:
            return ap
        manifest = decode_manifest(data, author)
        cursor = _from_snapshot(remote, ap, manifest, cursor)
        _fetch_bundles(remote, ap, manifest, cursor)
        now = notes.manifest_digest(data)
        if now != digest:  # its manifest changed since we last read its notes
            ap.notes, ap.digest = notes.read_peer(remote, author, me), now
    except _PASS:
        raise
    except BaseException as exc:
        ap.errors.append(exc)
    return ap


def _revoked_wrote_since(remote: Remote, author: str, cursor: str | None) -> bool:
    """Whether the manifest of ``author``, signed by a revoked key, lists bundles after our
    cursor (read unchecked, for that question alone)."""
    data = remote.storage.read_manifest(author)
    if data is None:
        return False
    manifest = decode_manifest(data, author)
    return any(cursor is None or b.last_transaction_id > cursor for b in manifest.bundles)


def _merge_author(replica: Replica, conn: Connection, ap: AuthorPull,
                  result: MergeResult) -> None:
    """Merge ``ap``'s bundles under a savepoint; when that fails, bundle by bundle, setting
    aside those that cannot be applied here."""
    if not ap.good:
        return
    try:
        with conn.begin_nested():
            part = merge(replica, conn, [tx for _, txs in ap.good for tx in txs])
    except _UNAPPLIABLE:
        pass
    else:
        result.add(part)
        return
    kept = []
    for info, txs in ap.good:
        try:
            with conn.begin_nested():
                part = merge(replica, conn, txs)
        except _UNAPPLIABLE as exc:
            if snapshot.is_snapshot_name(info.filename):  # hook: never step past a snapshot
                ap.errors.append(SyncError(f"snapshot {info.filename}: its changes cannot be "
                                           f"applied here: {describe(exc)}"))
                ap.good, ap.advanced = [], None
                return
            ap.problems.append(Problem(info.filename, quarantine.APPLY,
                                       f"its changes cannot be applied here: {describe(exc)}"))
            continue
        result.add(part)
        kept.append((info, txs))
    ap.good = kept


def _save(conn: Connection, pulls: Sequence[AuthorPull]) -> None:
    """Cursors, quarantine and the notes read, in the merge's transaction."""
    c = schema.cursors
    now = utc_now_iso()
    current = _cursors(conn)
    for ap in pulls:
        healed = {info.filename for info, _ in ap.good if info.filename in ap.old}
        quarantine.record(conn, ap.author, ap.old, ap.problems, ap.cleared | healed, now)
        if ap.notes is not None and ap.digest is not None:
            notes.store_peer(conn, ap.author, ap.digest, ap.notes)
        last = ap.advanced
        if last is None:
            continue
        if ap.author not in current:
            conn.execute(insert(c).values(author=ap.author, last_transaction_id=last,
                                          synced_at=now))
        elif last > current[ap.author]:
            conn.execute(update(c).where(c.c.author == ap.author)
                         .values(last_transaction_id=last, synced_at=now))


def _report(report: SyncReport, ap: AuthorPull) -> None:
    """Count and name what of ``ap`` could not be used."""
    problems = ap.problems + ap.failed_reads
    report.quarantined += len(problems) + len(ap.errors)
    errors = list(ap.errors)
    if problems:
        errors.append(quarantine.error_for_author(problems))
    if len(errors) == 1:
        fail(report, ap.author, errors[0])
    elif errors:
        kinds = {type(e) for e in errors}
        cls = kinds.pop() if len(kinds) == 1 else SyncError
        if not issubclass(cls, SyncError):
            cls = SyncError
        fail(report, ap.author, cls("; ".join(_explain(e) for e in errors)))


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
    with replica.engine.begin() as conn:
        notes.ensure_tables(conn)
        cursors, held_back = _cursors(conn), quarantine.load(conn)
        digests = notes.peer_digests(conn)
    pulls = [_fetch_author(remote, me, a, cursors.get(a), held_back.get(a, {}), digests.get(a))
             for a in authors if a != me]
    report.pulled = sum(len(txs) for ap in pulls for _, txs in ap.good)
    # a large merge builds only acyclic tuples/dicts; the cyclic GC would rescan them often
    with gc_paused(report.pulled > 1000), replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        conflicts.ensure_table(conn)
        result = settle_local(replica, conn)
        for ap in pulls:
            _merge_author(replica, conn, ap, result)
        _save(conn, pulls)
        remote.trust.save_pins(conn)
        replayed = replay_held_in(replica, conn)
        replayed.add(retry_refused(replica, conn))
        report.held = (conn.execute(select(func.count()).select_from(schema.held)).scalar_one()
                       + ahead.count(conn))
        report.conflicts = conflicts.count(conn)
    for ap in pulls:
        _report(report, ap)
    notes.publish(replica, remote, report)
    result.add(replayed)
    report.applied = len(result.applied_changes)
    return result
