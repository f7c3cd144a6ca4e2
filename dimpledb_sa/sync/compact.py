"""Compaction: replace this device's old bundles by a snapshot (:mod:`.snapshot`).

:func:`compact`, under the sync lock:

1. pushes what is not pushed yet (so the snapshot can cover everything pushed);
2. writes a snapshot of our transactions through ``pushed_through`` and checks that our
   manifest ends there (else nothing is removed);
3. rewrites our manifest without the bundles the snapshot covers, except the newest one
   (it keeps ``last_transaction_id`` what push expects, and gives a reader whose cursor
   is there a bundle to find);
4. only then removes those bundle files, and older snapshots.

A crash between any two steps leaves a remote that reads correctly: before step 3 nothing
was removed; after it, readers whose cursor is not a listed bundle's last transaction merge
the snapshot (which covers every removed bundle) and then the listed bundles after it;
files left behind by a crash in step 4 are unlisted and removed by the next compaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import SyncError
from ..core.report import SyncReport
from . import snapshot
from .push import push
from .report_errors import error_for
from .wire import Manifest, decode_manifest, encode_manifest, is_bundle_name, utc_now_iso

if TYPE_CHECKING:
    from ..core.replica import Replica
    from .remote import Remote

__all__ = ["compact", "take_snapshot"]


def _push_and_snapshot(replica: Replica, remote: Remote) -> str | None:
    """Under the caller's sync lock: push what is not pushed yet, then write a snapshot of
    everything pushed; its file name (``None``: nothing pushed yet)."""
    remote.prepare(replica)
    report = SyncReport()
    push(replica, remote, report)
    if report.errors:
        raise error_for(report)
    return snapshot.write(replica, remote)


def take_snapshot(replica: Replica, remote: Remote) -> str:
    """Push, then write a snapshot of everything we pushed; returns its file name."""
    with replica.sync_lock:
        name = _push_and_snapshot(replica, remote)
    if name is None:
        raise SyncError("nothing to snapshot: this device has pushed nothing yet")
    return name


def compact(replica: Replica, remote: Remote) -> int:
    """Snapshot, then remove our bundles it covers; returns how many bundles were removed."""
    with replica.sync_lock:
        name = _push_and_snapshot(replica, remote)
        if name is None:
            return 0
        return _remove_covered(replica, remote, snapshot.parse_snapshot_name(name))


def _remove_covered(replica: Replica, remote: Remote, last: str) -> int:
    me, storage = replica.author_id, remote.storage
    data = remote.read_manifest(me)
    if data is None:
        return 0
    manifest = decode_manifest(data, me)
    if manifest.last_transaction_id != last:  # another handle pushed meanwhile: next time
        return 0
    covered = [b for b in manifest.bundles[:-1] if b.last_transaction_id <= last]
    if covered:
        kept = tuple(b for b in manifest.bundles if b not in covered)
        new = Manifest(me, manifest.last_transaction_id, utc_now_iso(), kept)
        remote.write_manifest(me, encode_manifest(new))
        remote.own_manifest = new
    listed = {b.filename for b in manifest.bundles if b not in covered}
    removed = 0
    for f in storage.list_files(me):
        if is_bundle_name(f) and f not in listed and f.split("_")[1][:36] <= last:
            storage.remove_file(me, f)
            removed += 1
        elif snapshot.is_snapshot_name(f) and snapshot.parse_snapshot_name(f) < last:
            storage.remove_file(me, f)
    return removed
