"""Push: upload this replica's transactions not pushed yet as a bundle, then its manifest.

Our transactions after ``pushed_through`` (kept in ``dimple_meta``) go into one bundle,
encrypted and written *before* our manifest; ``pushed_through`` advances only after both
writes, in the database transaction that took the write lock. A crash in between leaves
an unlisted bundle (harmless) and the next push sends the same transactions again. When
our manifest is missing, unreadable or lists less than ``pushed_through``, the bundle holds
every transaction it does not list, and the manifest is written anew.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core import changelog, meta
from ..core.errors import DimpleError, RemoteFormatError
from .notes import resend
from .report_errors import fail
from .wire import (
    BundleInfo,
    Manifest,
    bundle_name,
    decode_manifest,
    encode_bundle,
    encode_manifest,
    manifest_with,
    utc_now_iso,
)

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .remote import Remote

__all__ = ["push"]

logger = logging.getLogger(__name__)


def push(replica: Replica, remote: Remote, report: SyncReport) -> None:
    """Upload our transactions not pushed yet as one bundle, then the manifest."""
    # Bundles of ours that other authors noted as unreadable: uploaded again (see .notes).
    resend(replica, remote, report)

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
            fail(report, "push", exc)
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
