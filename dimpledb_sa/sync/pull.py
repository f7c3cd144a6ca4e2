"""Pull: fetch the other authors' new bundles and merge them, with their cursors.

One listing of the remote root, then each other author's manifest. An author's bundles are
read in manifest order, in batches of :data:`BATCH`, from the first one after its cursor;
each file is read, decrypted and decoded on its own (into the log's packed runs, :mod:`.runs`),
so one bad file never stops the others:

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

What is read merges as it is read, in bounded batches: first the rules look again at what
this replica changed itself since (:func:`.merge.settle_local`); then, once an author's
bundles read hold :data:`MERGE_CHANGES` changes (and after its last one), they merge in one
database transaction committed with that author's cursor, its quarantine and what its
notes say about our files (a snapshot, :mod:`.snapshot`, is committed on its own, first;
into an empty database, its pieces are stored in bulk by :mod:`.bootstrap`).
So a pull holds at most one batch of downloaded files and one batch of decoded changes,
whatever the history's size, and an interrupted pull keeps what it committed (the next one
starts after it; merging a transaction again is a no-op). Last, in a transaction of its
own, the held changes the schema can now take and the rows the database refused before.
Changes that break a constraint are kept out as conflicts, never errors. Each batch merges
under a savepoint; when it cannot be applied, it merges bundle by bundle, and only the
bundles that still fail are set aside. ``changes_committed`` is sent for what committed
every :data:`MERGE_CHANGES` applied changes and at the end (by :mod:`.run`). Last, our
notes file is published when it changed (:mod:`.notes`). An author whose manifest cannot
be read is reported and skipped; the others go on. ``progress`` hears of phases ``"pull"``
(files read of those queued) and ``"merge"`` (changes merged of those read).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from ..core import conflicts, meta, schema
from ..core.changes import TxRecord
from ..core.errors import DecryptionError, RemoteFormatError, SyncError
from ..core.rows import gc_paused
from . import ahead, bootstrap, notes, quarantine, snapshot
from .merge import (
    APPLY_ERRORS,
    MergeResult,
    announce,
    describe,
    merge,
    replay_held_in,
    retry_refused,
    settle_local,
)
from .progress import Phase, Progress
from .quarantine import Entry, Problem
from .report_errors import fail
from .runs import decode_runs
from .storage import TooLargeError
from .trust import RevokedSignature
from .wire import (
    BundleInfo,
    Manifest,
    decode_manifest,
    parse_bundle_name,
    utc_now_iso,
)

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .crypto import Cipher
    from .remote import Remote

__all__ = ["BATCH", "MERGE_CHANGES", "pull"]

BATCH = 16
"""Bundles of one author downloaded in one backend call."""

MERGE_CHANGES = 50_000
"""Changes read after which the pull merges and commits what it holds (with the cursor)."""

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
    """Files read and not merged yet."""
    pending: int = 0
    """Their changes."""
    queue: list[BundleInfo] = field(default_factory=list)
    """The files to read this sync: ``retry`` (behind the cursor), then the new ones."""
    retry: list[BundleInfo] = field(default_factory=list)
    saved: str | None = None
    """``advanced`` as last committed."""
    snapshot: tuple[BundleInfo, Iterator[list[TxRecord]]] | None = None
    """Its snapshot to merge first (the pieces are read as they merge)."""
    bulk: bootstrap.Bulk | None = None
    """While its snapshot merges into an empty database: the bulk merge's state."""
    stop: bool = False
    """Its snapshot could not be merged: nothing more of it this sync."""
    reported: list[Problem] = field(default_factory=list)
    """Problems recorded by a commit already, reported at the end."""
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
        txs = decode_runs(plain, author, name=name)
        _check_bundle(info, txs)
    except _PASS:
        raise
    except BaseException as exc:  # native panics (pyrage) are BaseExceptions too
        reason = (quarantine.DECRYPT if isinstance(exc, DecryptionError)
                  else quarantine.FORMAT if isinstance(exc, RemoteFormatError) else stage)
        return Problem(name, reason, _explain(exc))
    return txs


def _queue(ap: AuthorPull, manifest: Manifest, cursor: str | None) -> None:
    """``ap``'s quarantined files behind its cursor to retry, then its bundles after the
    cursor, in manifest order."""
    listed = {b.filename: b for b in manifest.bundles}
    names = quarantine.to_retry(ap.old) + _replaced(ap, manifest, listed)
    ap.retry = [listed[f] for f in dict.fromkeys(names)
                if f in listed and cursor is not None and listed[f].last_transaction_id <= cursor]
    ap.queue = ap.retry + [b for b in manifest.bundles
                           if cursor is None or b.last_transaction_id > cursor]


def _pull_bundles(replica: Replica, remote: Remote, ap: AuthorPull, run: _Run) -> None:
    """Read ``ap``'s queued bundles, :data:`BATCH` per backend call, up to the first that is
    missing or fails to download, committing every :data:`MERGE_CHANGES` changes."""
    queue, nretry = ap.queue, len(ap.retry)
    for start in range(0, len(queue), BATCH):
        batch = queue[start : start + BATCH]
        try:
            blobs = remote.read_bundles(ap.author, [b.filename for b in batch])
        except _PASS:
            raise
        except BaseException as exc:  # the backend call itself failed: keep what merged
            ap.errors.append(exc)
            return
        for i, info in enumerate(batch, start):
            got = _read_one(remote.cipher, ap.author, info, blobs.pop(info.filename, None))
            run.pull.advance()
            retrying = i < nretry
            if isinstance(got, list):
                _hold(ap, run, info, got)
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
            if ap.pending >= MERGE_CHANGES:
                _commit(replica, remote, ap, run)


def _hold(ap: AuthorPull, run: _Run, info: BundleInfo, txs: list[TxRecord]) -> None:
    """Keep a file read for the next commit."""
    n = sum(len(tx[2]) for tx in txs)
    ap.good.append((info, txs))
    ap.pending += n
    run.merge.grow(n)


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
    compaction removed, the author's newest snapshot goes first (merged piece by piece by
    :func:`_pull_snapshot`) and the bundles are read from its last transaction on."""
    found = snapshot.for_pull(remote, ap.author, manifest, cursor)
    if found is None:
        return cursor
    ap.snapshot = found
    return found[0].last_transaction_id


def _pull_snapshot(replica: Replica, remote: Remote, ap: AuthorPull, run: _Run) -> None:
    """Merge ``ap``'s snapshot piece by piece, committing every :data:`MERGE_CHANGES`
    changes; the cursor moves to its last transaction with the last piece only (an
    interrupted merge reads the snapshot again: what committed is skipped by id). When a
    piece is not sound or cannot be applied, nothing more of the author merges this sync."""
    assert ap.snapshot is not None
    info, pieces = ap.snapshot
    ap.snapshot = None
    ap.bulk = bootstrap.Bulk()  # used while the database holds only what it stored
    try:
        for txs in pieces:
            _hold(ap, run, info, txs)
            if ap.pending >= MERGE_CHANGES:
                _commit(replica, remote, ap, run)
                if ap.stop:
                    return
    except _PASS:
        raise
    except BaseException as exc:
        ap.errors.append(SyncError(f"snapshot {info.filename}: {_explain(exc)}"))
        ap.good, ap.pending, ap.stop, ap.bulk = [], 0, True, None
        return
    ap.advanced = info.last_transaction_id
    _commit(replica, remote, ap, run)
    ap.bulk = None


def _open_author(remote: Remote, run: _Run, me: str, author: str, cursor: str | None,
                 old: dict[str, Entry], digest: str | None) -> AuthorPull:
    """One author's manifest, notes, snapshot when it needs one, and queue of bundles to
    read; never raises but for ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit``."""
    ap = AuthorPull(author, dict(old))
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
        _queue(ap, manifest, cursor)
        run.pull.grow(len(ap.queue))
        now = notes.manifest_digest(data)
        if now != digest:  # its manifest changed since we last read its notes
            ap.notes, ap.digest = notes.read_peer(remote, author, me), now
    except _PASS:
        raise
    except BaseException as exc:
        ap.errors.append(exc)
    return ap


@dataclass
class _Run:
    """One pull's counters, progress phases and what committed but is not announced yet."""

    replica: Replica
    report: SyncReport
    pull: Phase
    merge: Phase
    result: MergeResult = field(default_factory=MergeResult)
    applied: int = 0

    def committed(self, part: MergeResult) -> None:
        """``part`` committed: counted, and announced once enough has gathered."""
        self.applied += part.applied
        self.result.add(part)
        if self.result.applied >= MERGE_CHANGES:
            announce(self.replica, self.result)
            self.result = MergeResult()


def _pull_author(replica: Replica, remote: Remote, ap: AuthorPull, run: _Run) -> None:
    """Merge ``ap``'s snapshot (when it has one to merge) first, then read and merge
    its queued bundles, committing as it goes (and once more for what is left: the last
    merges, the quarantine, the notes read)."""
    if ap.snapshot is not None:
        _pull_snapshot(replica, remote, ap, run)
    if not ap.stop:  # (the queue is empty when its manifest or snapshot failed)
        _pull_bundles(replica, remote, ap, run)
    _commit(replica, remote, ap, run)


def _commit(replica: Replica, remote: Remote, ap: AuthorPull, run: _Run) -> None:
    """Merge ``ap``'s bundles read so far in one database transaction with its cursor, its
    quarantine and its notes; then forget them. Nothing to store: no transaction."""
    if not (ap.good or ap.problems or ap.cleared or ap.notes is not None
            or ap.advanced != ap.saved):
        return
    pulled = sum(len(txs) for _, txs in ap.good)
    part = MergeResult()
    # a large merge builds only acyclic tuples/dicts; the cyclic GC would rescan them often
    with gc_paused(ap.pending > 1000), replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        conflicts.ensure_table(conn)
        _merge_author(replica, conn, ap, part)
        _save(conn, [ap])
        remote.trust.save_pins(conn)  # the keys first seen for the files merged
    run.committed(part)
    run.report.pulled += pulled
    run.merge.advance(ap.pending)
    for f in ap.cleared | {info.filename for info, _ in ap.good}:
        ap.old.pop(f, None)
    ap.reported += ap.problems
    ap.saved = ap.advanced
    ap.good, ap.problems, ap.cleared, ap.pending, ap.notes = [], [], set(), 0, None


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
    if ap.bulk is not None:  # hook for :mod:`.bootstrap`: a snapshot into an empty database
        try:
            with conn.begin_nested():
                part = bootstrap.merge_new(replica, conn,
                                           [tx for _, txs in ap.good for tx in txs], ap.bulk)
        except bootstrap.NotBulk:
            ap.bulk = None
        else:
            result.add(part)
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
                ap.good, ap.advanced, ap.stop = [], None, True
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


def pull(replica: Replica, remote: Remote, report: SyncReport,
         progress: Progress | None = None) -> MergeResult | None:
    """Fetch every other author's new bundles and merge them, committing as it goes (see
    the module docstring); returns what committed and was not announced yet."""
    # the bundles and merges build many short-lived acyclic tuples: collections that they
    # would trigger (one whenever a pause ends) scan them all and find nothing
    with gc_paused():
        return _pull(replica, remote, report, progress)


def _pull(replica: Replica, remote: Remote, report: SyncReport,
          progress: Progress | None) -> MergeResult | None:
    storage = remote.storage
    me = replica.author_id
    try:
        authors, bad = storage.list_authors()
    except OSError as exc:
        raise SyncError(f"cannot list the remote: {exc}", report) from exc
    for name in bad:
        fail(report, name, RemoteFormatError(
            f"folder {name!r:.80} in the remote is not an author id (a UUID)"))
    run = _Run(replica, report, Phase(progress, "pull"), Phase(progress, "merge"))
    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        notes.ensure_tables(conn)
        conflicts.ensure_table(conn)
        cursors, held_back = _cursors(conn), quarantine.load(conn)
        digests = notes.peer_digests(conn)
        settled = settle_local(replica, conn)
    run.committed(settled)
    pulls = []
    for a in authors:
        if a == me:
            continue
        ap = _open_author(remote, run, me, a, cursors.get(a), held_back.get(a, {}),
                          digests.get(a))
        pulls.append(ap)
        _pull_author(replica, remote, ap, run)
    run.pull.finish()
    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        remote.trust.save_pins(conn)
        replayed = replay_held_in(replica, conn)
        replayed.add(retry_refused(replica, conn))
        report.held = (conn.execute(select(func.count()).select_from(schema.held)).scalar_one()
                       + ahead.count(conn))
        report.conflicts = conflicts.count(conn)
    run.merge.finish()
    run.committed(replayed)
    for ap in pulls:
        ap.problems = ap.reported
        _report(report, ap)
    notes.publish(replica, remote, report)
    report.applied = run.applied
    return run.result
