"""Our own author folder written by someone else: a copied database or a restored backup.

Before a push writes anything it reads our manifest afresh and asks :func:`foreign_bundles`
which listed bundles this database did not make: a bundle whose first or last transaction
is not one of this database's own. None is the normal case. Otherwise another database
pushes (or pushed) as our author: a copy of this file on another device, or this very
database before an older backup of it was restored. The two look the same; what is safe
differs, so :func:`resolve` fetches those bundles and decides on exact transaction ids:

- Every own transaction of ours is listed (in those bundles, in the ones we made, or at or
  below ``pushed_through``): nothing of ours would be uploaded, so nothing can be
  overwritten. This is how a restored backup looks; it *heals*: the transactions it lacks
  merge into the log and the tables (as our own, in one write transaction that checks again
  that nothing unlisted appeared), and ``pushed_through`` moves to the manifest's end.
- Some own transaction is not listed: two live databases write as one author. Pushing would
  hide one's bundles from readers whose cursor is past them, and rewriting the manifest
  would drop the other's entries. Nothing is written: :class:`CopyDetected` (a
  ``ConfigurationError``) tells how to give this database its own author id
  (``dimpledb reauthor DB``, :mod:`.reauthor`), and ``pushed_through`` is
  lowered to the last of our pushes still listed, so the command moves every transaction
  that no manifest lists to the new id and none is lost.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

from ..core import changelog, meta
from ..core.errors import ConfigurationError, RemoteFormatError
from .merge import APPLY_ERRORS, MergeResult, describe, merge
from .report_errors import fail
from .wire import decode_bundle

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from ..core.changes import TxRecord
    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .remote import Remote
    from .wire import BundleInfo, Manifest

__all__ = ["CopyDetected", "Healed", "database_name", "foreign_bundles", "resolve"]

logger = logging.getLogger(__name__)


class CopyDetected(ConfigurationError):
    """Another database pushes as this database's author: give one of them a new id."""


@dataclass
class Healed:
    """What healing merged: our own transactions this database lacked."""

    transactions: int
    result: MergeResult


def database_name(replica: Replica) -> str:
    """The database as the ``dimpledb`` command takes it: a SQLite path, else the URL."""
    url = replica.engine.url
    if url.get_backend_name() == "sqlite" and url.database and not url.query:
        return url.database
    return url.render_as_string(hide_password=True)


def _own_ids(conn: Connection, me: str, ids: Sequence[str]) -> set[str]:
    return set(changelog.transaction_authors(conn, ids, author=me))


def foreign_bundles(conn: Connection, me: str, manifest: Manifest) -> list[BundleInfo]:
    """The bundles of our manifest whose first or last transaction this database does not
    have as its own."""
    ends = [i for b in manifest.bundles for i in (b.first_transaction_id, b.last_transaction_id)]
    own = _own_ids(conn, me, ends)
    return [b for b in manifest.bundles
            if b.first_transaction_id not in own or b.last_transaction_id not in own]


def _fetch(remote: Remote, me: str, foreign: Sequence[BundleInfo]) -> list[TxRecord]:
    """The transactions of the foreign bundles, checked against their manifest entries."""
    blobs = remote.read_bundles(me, [b.filename for b in foreign])
    out: list[TxRecord] = []
    for info in foreign:
        blob = blobs.get(info.filename)
        if isinstance(blob, BaseException) or blob is None:
            raise blob or FileNotFoundError(info.filename)
        txs = decode_bundle(remote.cipher.decrypt(blob), me, name=info.filename)
        ids = [t[0] for t in txs]
        if (len(txs) != info.transaction_count or not ids
                or (min(ids), max(ids)) != (info.first_transaction_id,
                                             info.last_transaction_id)):
            raise RemoteFormatError(f"bundle {info.filename} does not hold what our manifest "
                                    "lists for it")
        out.extend(txs)
    return out


def _unlisted(conn: Connection, me: str, manifest: Manifest, foreign: Sequence[BundleInfo],
              listed: set[str] | None) -> tuple[list[str], str | None, str | None]:
    """(our own transactions no manifest entry lists, ``pushed_through`` as it should be,
    as it is). ``listed``: the ids in the foreign bundles, ``None`` when unknown."""
    pushed = meta.get(conn, meta.PUSHED_THROUGH)
    ours = [b for b in manifest.bundles if b not in foreign]
    base = pushed
    if pushed is not None and not any(b.last_transaction_id == pushed for b in ours) and (
            listed is None or pushed not in listed):
        # our last push is not listed any more (its manifest was overwritten): from the
        # last of ours that is
        base = max((b.last_transaction_id for b in ours if b.last_transaction_id <= pushed),
                   default=None)
    ranges = sorted((b.first_transaction_id, b.last_transaction_id) for b in ours)
    firsts = [r[0] for r in ranges]
    reach = list(accumulate((r[1] for r in ranges), max))  # furthest end among the first k

    def in_ours(t: str) -> bool:
        k = bisect_right(firsts, t)
        return k > 0 and reach[k - 1] >= t

    unlisted = [t for t in changelog.transaction_ids(conn, me, base)
                if (listed is None or t not in listed) and not in_ours(t)]
    return unlisted, base, pushed


def _copy_detected(replica: Replica, foreign: Sequence[BundleInfo], unlisted: int
                   ) -> CopyDetected:
    me = replica.author_id
    count = sum(b.transaction_count for b in foreign)
    return CopyDetected(
        f"another database also pushes as this database's author {me}: the remote lists "
        f"{count} transaction(s) of this author that this database does not have (bundle "
        f"{foreign[-1].filename}), while {unlisted} of its own are not listed. It is a copy "
        "of another device's database file (or a restored backup that has new changes). "
        "Nothing was uploaded. Give this database its own author id with "
        f"`dimpledb reauthor {database_name(replica)}` (close the app first): its "
        "transactions that were not pushed move to the new id, so nothing is lost; then "
        "sync again.")


def _lower(conn: Connection, base: str | None, pushed: str | None) -> None:
    if base != pushed:
        if base is None:
            meta.remove(conn, meta.PUSHED_THROUGH)
        else:
            meta.put(conn, meta.PUSHED_THROUGH, base)


def resolve(replica: Replica, remote: Remote, manifest: Manifest,
            foreign: Sequence[BundleInfo], report: SyncReport) -> Healed:
    """Heal from ``foreign`` (bundles of our folder this database did not make), or raise
    :class:`CopyDetected`; see the module docstring. Raises the storage or format error
    when they cannot be read and nothing of ours is unlisted."""
    me = replica.author_id
    try:
        txs = _fetch(remote, me, foreign)
    except (OSError, ValueError, RemoteFormatError) as exc:
        with replica.engine.begin() as conn:
            meta.take_write_lock(conn)
            unlisted, base, pushed = _unlisted(conn, me, manifest, foreign, None)
            if unlisted:
                _lower(conn, base, pushed)
        if unlisted:
            raise _copy_detected(replica, foreign, len(unlisted)) from exc
        raise
    listed = {t[0] for t in txs}
    with replica.engine.begin() as conn:
        meta.take_write_lock(conn)
        unlisted, base, pushed = _unlisted(conn, me, manifest, foreign, listed)
        if unlisted:
            _lower(conn, base, pushed)
        else:
            result = _merge_own(replica, conn, txs, report)
            if result is not None and manifest.last_transaction_id is not None:
                meta.put(conn, meta.PUSHED_THROUGH, manifest.last_transaction_id)
    if unlisted:
        raise _copy_detected(replica, foreign, len(unlisted))
    if result is None:
        return Healed(0, MergeResult())
    logger.warning("sync: our own folder lists %d transaction(s) this database lacked "
                   "(a restored backup?): merged them", result.stored)
    return Healed(result.stored, result)


def _merge_own(replica: Replica, conn: Connection, txs: Sequence[TxRecord],
               report: SyncReport) -> MergeResult | None:
    try:
        with conn.begin_nested():
            return merge(replica, conn, txs)
    except APPLY_ERRORS as exc:
        fail(report, replica.author_id, RemoteFormatError(
            f"our own transactions from the remote cannot be applied here: {describe(exc)}"))
        return None
