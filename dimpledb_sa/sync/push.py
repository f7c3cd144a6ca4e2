"""Push: upload this replica's transactions that our manifest does not list yet, without
ever holding a database transaction open while talking to the remote.

Steps, each database access its own short transaction:

1. Take the push lease (:mod:`.lease`); when another push of this database holds it, skip
   (``report.push_skipped``) instead of waiting. While it works (steps 2 and 3), the push
   folds what was pending when it began into the indexed log (so that no commit of the app
   has a large backlog to fold), in short write transactions (sized by how long they hold
   the lock) with gaps of :data:`_FOLD_GAP` between them in which a waiting commit gets
   in, one between two of its reads or uploads; what is left is folded at the end, then,
   in SQLite's WAL mode, the database is checkpointed passively.
2. Read our manifest afresh (a cached one only answers "nothing to do" when nothing is
   new); a missing or unreadable manifest lists nothing, so the whole history goes (a new,
   empty remote gets everything on the first sync). Bundles this database did not make
   mean a copy or a restored backup (:mod:`.own`): heal, or stop with ``CopyDetected``.
3. Upload our transactions after the manifest's last one, in bundles of at most
   :data:`MAX_BUNDLE_CHANGES` changes and about :data:`MAX_BUNDLE_BYTES` of JSON, each
   stored (format 3: the log's packed rows as runs, gzipped, then encrypted; see
   :mod:`.packed`) in at most ``Storage.max_stored_bundle_bytes`` (a bundle that comes out
   larger is cut in two; a transaction is never split), read as packed rows in short read
   transactions (pending transactions straight from ``dimple_pending``), so a push holds
   one bundle at a time whatever it has to send and makes no record per change.
   For each bundle: renew the lease, write the bundle, renew, write the manifest, then
   advance ``pushed_through`` if the lease is still ours; ``progress`` hears of it.
4. Remove stale temporary files of dead writes from our folder (folder backends), release
   the lease.

A crash leaves an expired lease, at worst an unlisted bundle, or a listed bundle that
``pushed_through`` does not know about: the next push starts after the manifest's last
transaction, so nothing is lost and nothing is sent twice. Two pushers of one database take
turns by the lease, so each transaction is uploaded once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..core import changelog, meta
from ..core.errors import ConfigurationError, DimpleError, RemoteFormatError
from ..core.rows import gc_paused
from . import lease
from .notes import resend
from .own import Healed, foreign_bundles, resolve
from .packed import PackedTx, check_format, in_run_order, names_count, pack_bundle_as
from .progress import Phase, Progress
from .report_errors import fail
from .wire import (
    BundleInfo,
    Manifest,
    bundle_name,
    decode_manifest,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .remote import Remote

__all__ = ["MAX_BUNDLE_BYTES", "MAX_BUNDLE_CHANGES", "push"]

logger = logging.getLogger(__name__)

MAX_BUNDLE_CHANGES = 50_000
"""A push starts a new bundle before one would hold more changes than this, or about
:data:`MAX_BUNDLE_BYTES` of JSON (a single larger transaction gets a bundle of its own)."""

MAX_BUNDLE_BYTES = 8 << 20
"""About how many bytes of bundle JSON (before compression) a push puts in one bundle, and
at most half of ``Storage.max_stored_bundle_bytes``."""

_RUN_OVERHEAD = 60
"""The bytes of one run's JSON besides its entity type, id, names and values."""

_READ_CHANGES = 10_000
"""About how many changes one read transaction of a push reads."""

_FOLD_HOLD = 0.04
"""About how long (seconds) one of a push's fold transactions may hold the write lock: the
number of pending transactions each one folds doubles while they take less than half of
this, and halves when one takes more."""

_FOLD_GAP = 0.05
"""Seconds from the end of a push's fold transaction (one that held the lock for more than
a quarter of :data:`_FOLD_HOLD`) to the start of the next. SQLite's default busy handler
retries a waiting writer after 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then every 100 ms:
a commit that has waited less than 228 ms (one fold transaction, at most) retries within
any 50 ms, so it gets in during the gap. The push sleeps through the gap (filling it with
its own work instead let the app's commits in, but, with the push in a thread of the app,
made them wait for the GIL: 205 ms at worst under load)."""

CLEAN_EVERY = 3600.0
"""Seconds between two clean-ups of stale temporary files by the same handle."""


class _LeaseLost(Exception):
    """Another push took the lease over (ours outlived ``LEASE_SECONDS`` between steps)."""


def push(replica: Replica, remote: Remote, report: SyncReport,
         progress: Progress | None = None) -> Healed | None:
    """Upload what our manifest does not list yet; see the module docstring. Returns what
    healing merged (a restored backup), if anything. ``progress`` hears of phase
    ``"push"`` (transactions uploaded of those to upload)."""
    check_format(remote.storage.bundle_format)
    phase = Phase(progress, "push")
    try:
        return _push(replica, remote, report, phase)
    finally:
        phase.finish()


def _push(replica: Replica, remote: Remote, report: SyncReport, phase: Phase
          ) -> Healed | None:
    # Bundles of ours that other authors noted as unreadable: uploaded again (see .notes).
    resend(replica, remote, report)
    engine = replica.engine
    holder = lease.new_holder()
    other = lease.take(engine, holder)
    if other is not None:
        report.push_skipped = True
        logger.info("sync: another push of this database holds the lease (%s): not pushing "
                    "now; its push or the next one takes our transactions", other.describe())
        return None
    try:
        # the bundles are many short-lived acyclic tuples: collections of the whole heap that
        # they would trigger find nothing and stall every thread of the app (the GIL)
        with gc_paused():
            return _push_leased(replica, remote, report, holder, phase)
    finally:
        lease.release(engine, holder)


def _push_leased(replica: Replica, remote: Remote, report: SyncReport, holder: str,
                 phase: Phase) -> Healed | None:
    folder = _Folder(replica.engine)
    try:
        return _push_folding(replica, remote, report, holder, phase, folder)
    finally:
        folder.finish()


def _push_folding(replica: Replica, remote: Remote, report: SyncReport, holder: str,
                  phase: Phase, folder: _Folder) -> Healed | None:
    healed: Healed | None = None
    folder.step()
    try:
        with replica.engine.connect() as conn:
            stored = meta.get(conn, meta.AUTHOR_ID)
            if stored is not None:
                replica.author_on(conn, stored)  # the id as stored now (after a reauthor)
            pushed = meta.get(conn, meta.PUSHED_THROUGH)
            conn.rollback()
        me = replica.author_id  # created, in a transaction of its own, when not stored yet
        with replica.engine.connect() as conn:
            new = changelog.transaction_ids(conn, me, pushed)
            conn.rollback()
        cached = remote.own_manifest
        if not new and remote.own_known and (cached is None or cached.author_id == me) and (
                cached.last_transaction_id if cached is not None else None) == pushed:
            return None  # nothing new, and this handle knows the remote has what we pushed
        manifest = _read_manifest(replica, remote)
        if manifest is not None:
            with replica.engine.connect() as conn:
                foreign = foreign_bundles(conn, me, manifest)
                conn.rollback()
            if foreign:
                healed = resolve(replica, remote, manifest, foreign, report)
        _upload(replica, remote, manifest, pushed, holder, report, phase, folder)
    except ConfigurationError:
        raise
    except _LeaseLost:
        report.push_skipped = True
        logger.warning("sync: this push outlived its lease and another push took it over; "
                       "that push takes the rest")
    except (OSError, DimpleError, ValueError) as exc:
        fail(report, "push", exc)
    return healed


def _read_manifest(replica: Replica, remote: Remote) -> Manifest | None:
    """Our manifest as the remote has it now; ``None`` when there is none or it is
    unreadable (the push then lists every transaction of ours anew)."""
    me = replica.author_id
    try:
        data = remote.read_manifest(me)  # a bad signature is a RemoteFormatError too
        return None if data is None else decode_manifest(data, me)
    except RemoteFormatError as exc:
        logger.warning("sync: our own manifest is unreadable (%s): writing it anew", exc)
        return None


def _upload(replica: Replica, remote: Remote, manifest: Manifest | None,
            pushed: str | None, holder: str, report: SyncReport, phase: Phase,
            folder: _Folder) -> None:
    """Upload our transactions after ``manifest``'s last one, bundle by bundle (``folder``
    folds between reads and uploads)."""
    engine, me = replica.engine, replica.author_id
    listed = manifest.last_transaction_id if manifest is not None else None
    with engine.connect() as conn:
        ids = changelog.transaction_ids(conn, me, listed)
        conn.rollback()
    if pushed is not None and (listed is None or listed < pushed):
        logger.warning("sync: our manifest lists our transactions up to %s, not %s: "
                       "pushing the others again", listed, pushed)
    remote.own_manifest, remote.own_known = manifest, True
    if not ids:
        if listed is not None and listed != pushed and not lease.record(engine, holder, listed):
            raise _LeaseLost
        return
    phase.grow(len(ids))
    limit = remote.storage.max_stored_bundle_bytes
    for txs, data in _stored(remote, me, _bundles(replica, ids, limit // 2, folder), limit):
        first, last = txs[0][0], txs[-1][0]
        name = bundle_name(first, last)
        _renew(engine, holder)
        remote.write_bundle(me, name, data)
        manifest = manifest_with(manifest, me, BundleInfo(name, first, last, len(txs),
                                                          utc_now_iso()))
        _renew(engine, holder)
        remote.write_manifest(me, encode_manifest(manifest))
        remote.own_manifest = manifest
        if not lease.record(engine, holder, last):
            raise _LeaseLost
        report.pushed += len(txs)
        phase.advance(len(txs))
        folder.step()
    _clean(remote, me)


def _renew(engine: Engine, holder: str) -> None:
    if not lease.renew(engine, holder):
        raise _LeaseLost


def _stored(remote: Remote, me: str, bundles: Iterable[list[PackedTx]], limit: int
            ) -> Iterator[tuple[list[PackedTx], bytes]]:
    """Each of ``bundles`` with its stored bytes (in ``Storage.bundle_format``, gzipped,
    encrypted); one that comes out larger than ``limit`` bytes is cut in two, again and
    again, down to one transaction."""
    version = remote.storage.bundle_format
    for txs in bundles:
        todo = [txs]
        while todo:
            part = todo.pop()
            data = remote.cipher.encrypt(pack_bundle_as(version, me, part))
            if len(data) > limit and len(part) > 1:
                half = len(part) // 2
                todo += [part[half:], part[:half]]  # the first half goes first
                continue
            yield part, data


def _bundles(replica: Replica, ids: Sequence[str], max_bytes: int = MAX_BUNDLE_BYTES,
             folder: _Folder | None = None) -> Iterator[list[PackedTx]]:
    """The transactions ``ids`` with their packed rows (in run order, see
    :func:`.packed.in_run_order`) as bundles of at most ``MAX_BUNDLE_CHANGES`` changes and
    about ``min(MAX_BUNDLE_BYTES, max_bytes)`` bytes of JSON, read a few at a time, each
    read on its own (no transaction is held between reads; ``folder`` folds between
    them)."""
    max_bytes = min(MAX_BUNDLE_BYTES, max_bytes)
    engine = replica.engine
    batch: list[PackedTx] = []
    size = volume = 0
    step, i = 1, 0  # grows while reads stay small: a first read never reads much
    while i < len(ids):
        chunk = ids[i:i + step]
        i += len(chunk)
        with engine.connect() as conn:
            txs = changelog.packed_transactions_of(conn, chunk)
            conn.rollback()
        if folder is not None:
            folder.step()
        counts = [sum(map(names_count, [r[4] for r in rows])) for _, rows in txs]
        read = sum(counts)
        if read > 2 * _READ_CHANGES:
            step = max(1, step // 2)
        elif read < _READ_CHANGES // 2:
            step = min(4096, step * 2)
        for (tx, rows), n in zip(txs, counts, strict=True):
            nbytes = _json_size(rows)
            if batch and (size + n > MAX_BUNDLE_CHANGES or volume + nbytes > max_bytes):
                yield batch
                batch, size, volume = [], 0, 0
            batch.append((tx, in_run_order(rows)))
            size += n
            volume += nbytes
    if batch:
        yield batch


def _json_size(rows: Sequence[changelog.PackedRow]) -> int:
    """About how many bytes a transaction of packed ``rows`` takes in a format-3 bundle's
    JSON: per run its entity type, id, names and values and :data:`_RUN_OVERHEAD` (summed
    column by column), plus 100."""
    if not rows:
        return 100
    size = 100 + _RUN_OVERHEAD * len(rows)
    for col in list(zip(*rows, strict=True))[2:]:
        size += sum(map(len, col))
    return size


class _Folder:
    """Folds what was pending when the push began into the indexed log, in short write
    transactions (a few pending transactions each, unpacked before the lock is taken) with
    gaps of :data:`_FOLD_GAP` between them, so that no later commit has a large backlog to
    fold and a waiting commit gets in between two of them. :meth:`step` folds once (the
    push calls it between its reads and uploads, so that it does not fold all first);
    :meth:`finish` folds the rest, then, in SQLite's WAL mode, checkpoints passively."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            self.through = changelog.last_pending(conn)  # what was pending at the start
            conn.rollback()
        self.done = self.through is None  # nothing pending: no write transaction at all
        self.size = 1  # pending transactions per fold transaction
        self.folded = False

    def step(self) -> bool:
        """Fold once (then sleep through the gap); returns whether anything may be left."""
        if self.done:
            return False
        with self.engine.connect() as conn:  # unpacked with no lock held
            unpacked = changelog.unpacked_pending(conn, self.size, self.through)
            conn.rollback()
        if not unpacked:
            self.done = True
            if self.folded:
                _checkpoint(self.engine)
            return False
        start = time.monotonic()
        with self.engine.begin() as conn:
            meta.take_write_lock(conn)
            changelog.fold_unpacked(conn, unpacked)
        end = time.monotonic()
        self.folded = True
        held = end - start
        if held < _FOLD_HOLD / 2:
            self.size = min(256, self.size * 2)
        elif held > _FOLD_HOLD:
            self.size = max(1, self.size // 2)
        # a short transaction may be followed at once (the size doubles, so few are); after
        # a longer one the push sleeps through the gap: a commit that gets the lock in it
        # then has the GIL too (the push in a thread of the app), so it ends at once
        if held > _FOLD_HOLD / 4:
            time.sleep(_FOLD_GAP)
        return True

    def finish(self) -> None:
        """Fold the rest (see the class docstring)."""
        while self.step():
            pass


def _checkpoint(engine: Engine) -> None:
    """SQLite in WAL mode: copy what the fold wrote into the database file now (a passive
    checkpoint, which blocks no one), so that the app's next commit does not."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            conn.rollback()


def _clean(remote: Remote, me: str) -> None:
    """Remove stale temporary files from our folder, at most every ``CLEAN_EVERY`` s."""
    now = time.monotonic()
    if remote.storage.uses_temporaries and now - remote.cleaned_at >= CLEAN_EVERY:
        remote.cleaned_at = now
        try:
            removed = remote.storage.remove_stale_temporaries(me)
        except OSError as exc:
            logger.info("sync: could not remove stale temporary files: %s", exc)
            return
        if removed:
            logger.info("sync: removed %d stale temporary file(s) of writes that died: %s",
                        len(removed), ", ".join(removed))
