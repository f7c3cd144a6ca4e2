"""Notes: telling a writer which of its bundles we could not read, so it uploads them again.

A reader keeps the bundles it could not use in ``dimple_unreadable`` (:mod:`.quarantine`).
Those a writer can do something about (``decrypt``, ``format``, ``missing``; ``too_large``
for its information) it publishes in its own folder as ``{reader}/dimple_unreadable.json``
(plaintext JSON, see ``docs/FORMAT.md``): :func:`publish`, at the end of each pull, writes it
only when its entries changed, and when an entry is new also rewrites the reader's manifest
unchanged but for ``last_sync_timestamp``, because that is how writers notice: a pull reads
another author's notes file only when that author's manifest differs from the one it saw
when it last read them (:func:`read_peer`, :func:`store_peer`, digests in ``dimple_peers``),
so a sync in which nothing changed costs no extra request. On its next push the writer
(:func:`resend`, the push's hook) encodes each noted bundle again from its own log,
encrypts it to its *current* recipients and overwrites the file under the same name (the
manifest entry stays valid: same ids, same count; readers that merged it before skip its
transactions by id). It re-sends a noted file once per note and set of recipients, so a file
that a reader still cannot read (its key is not among them yet) is sent again only after
the writer's recipients change, never in a loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from ..core import changelog, schema
from ..core.errors import DimpleError, RemoteFormatError
from ..core.rows import insert_many
from . import quarantine
from .packed import PackedTx, in_run_order, pack_bundle_as
from .wire import (
    NOTES_NAME,
    BundleInfo,
    Manifest,
    decode_manifest,
    encode_manifest,
    is_bundle_name,
    is_timestamp,
    is_uuid,
    load_json,
    utc_now_iso,
)

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.report import SyncReport
    from .crypto import Cipher
    from .remote import Remote

__all__ = [
    "NOTES_LIMIT",
    "Note",
    "decode_notes",
    "encode_notes",
    "ensure_tables",
    "manifest_digest",
    "peer_digests",
    "publish",
    "read_peer",
    "resend",
    "store_peer",
]

logger = logging.getLogger(__name__)

NOTES_LIMIT = 1000
"""Most entries in one notes file (a reader publishes its oldest ones first)."""

_KEYS = ("author_id", "updated_at", "unreadable")
_ENTRY_KEYS = ("author", "filename", "reason", "since")


@dataclass(frozen=True)
class Note:
    """One entry of a notes file: ``author``'s bundle ``filename`` could not be read."""

    author: str
    filename: str
    reason: str
    since: str


def ensure_tables(conn: Connection) -> None:
    """Create ``dimple_unreadable`` and ``dimple_peers`` when missing (a database whose
    bookkeeping tables an earlier release made, and no ``create_all()`` or migration since)."""
    for table in (schema.unreadable, schema.peers):
        table.create(conn, checkfirst=True)


# --------------------------------------------------------------------------- the file


def encode_notes(reader: str, notes: Sequence[Note], now: str | None = None) -> bytes:
    """The notes file of ``reader`` (UTF-8 JSON, indented like the manifest)."""
    doc = {
        "author_id": reader,
        "updated_at": now or utc_now_iso(),
        "unreadable": [{"author": n.author, "filename": n.filename, "reason": n.reason,
                        "since": n.since} for n in notes],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _fields(obj: Any, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if type(obj) is not dict or set(obj) != set(keys):
        raise RemoteFormatError(f"{what} is not an object with exactly the fields "
                                f"{', '.join(keys)}")
    return obj


def decode_notes(data: bytes, reader: str) -> list[Note]:
    """Parse and validate ``reader``'s notes file; ``RemoteFormatError`` when it is not
    sound."""
    what = f"{reader}/{NOTES_NAME}"
    doc = _fields(load_json(data, what), _KEYS, what)
    if doc["author_id"] != reader:
        raise RemoteFormatError(f"{what} has an author_id that is not its folder's")
    if not is_timestamp(doc["updated_at"]):
        raise RemoteFormatError(f"{what} has an updated_at that is not an ISO-8601 UTC time")
    entries = doc["unreadable"]
    if type(entries) is not list or len(entries) > NOTES_LIMIT:
        raise RemoteFormatError(f"{what}: unreadable is not a list of at most "
                                f"{NOTES_LIMIT} entries")
    out: list[Note] = []
    for i, entry in enumerate(entries):
        e = _fields(entry, _ENTRY_KEYS, f"{what} entry #{i}")
        note = Note(e["author"], e["filename"], e["reason"], e["since"])
        if not (is_uuid(note.author) and is_bundle_name(note.filename)
                and note.reason in quarantine.NOTED and is_timestamp(note.since)):
            raise RemoteFormatError(f"{what} entry #{i} has a malformed author, filename, "
                                    "reason or since")
        out.append(note)
    return out


# --------------------------------------------------------------------------- reader side


def _published(conn: Connection, me: str) -> list[list[str]] | None:
    p = schema.peers
    text = conn.execute(select(p.c.notes).where(p.c.author == me)).scalar()
    return None if text is None else list(json.loads(text))


def _store(conn: Connection, author: str, digest: str | None, notes: list[list[Any]]) -> None:
    p = schema.peers
    text = json.dumps(notes)
    values = {"manifest_digest": digest, "notes": text}
    if conn.execute(update(p).where(p.c.author == author).values(**values)).rowcount == 0:
        insert_many(conn, p, [(author, digest, text)])


def publish(replica: Replica, remote: Remote, report: SyncReport) -> None:
    """Write our notes file when what it should say changed (see the module docstring)."""
    me = replica.author_id
    u = schema.unreadable
    with replica.engine.connect() as conn:
        rows = conn.execute(select(u.c.author, u.c.filename, u.c.reason, u.c.first_seen)
                            .where(u.c.reason.in_(sorted(quarantine.NOTED)))
                            .order_by(u.c.first_seen, u.c.author, u.c.filename)
                            .limit(NOTES_LIMIT)).all()
        before = _published(conn, me)
        conn.rollback()
    now = sorted([list(r) for r in rows])
    if now == before or (before is None and not now):
        return
    news = {tuple(n) for n in now} - {tuple(n) for n in before or []}
    try:
        remote.write_notes(me, encode_notes(me, [Note(*n) for n in now]))
        if news:
            _touch_manifest(replica, remote)
    except (OSError, DimpleError, ValueError) as exc:
        _push_failed(report, f"cannot publish our notes on unreadable files: {exc}")
        return
    with replica.engine.begin() as conn:
        _store(conn, me, None, now)


def _touch_manifest(replica: Replica, remote: Remote) -> None:
    """Write our manifest again, unchanged but for ``last_sync_timestamp``, so that the
    other authors notice our new notes (an unreadable manifest is left to the next push)."""
    me = replica.author_id
    data = remote.read_manifest(me)
    try:
        old = decode_manifest(data, me) if data is not None else None
    except RemoteFormatError:
        logger.warning("sync: our manifest is unreadable; the next push rewrites it")
        return
    manifest = Manifest(me, old.last_transaction_id if old else None, utc_now_iso(),
                        old.bundles if old else ())
    remote.write_manifest(me, encode_manifest(manifest))
    remote.own_manifest = manifest


def _push_failed(report: SyncReport, message: str) -> None:
    logger.warning("sync: %s", message)
    had = report.errors.get("push")
    report.errors["push"] = f"{had}; {message}" if had else message
    report.error_kinds.setdefault("push", "other")


# --------------------------------------------------------------------------- writer side


def manifest_digest(data: bytes) -> str:
    """What identifies one version of a manifest: the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def peer_digests(conn: Connection) -> dict[str, str | None]:
    """Per other author, the digest of its manifest when we last read its notes."""
    p = schema.peers
    return {a: d for a, d in conn.execute(select(p.c.author, p.c.manifest_digest))}


def read_peer(remote: Remote, author: str, me: str) -> list[Note]:
    """``author``'s notes about our bundles (none when it has no notes file); raises
    ``RemoteFormatError`` (or ``OSError``) when they cannot be read."""
    data = remote.read_notes(author)
    if data is None:
        return []
    return [n for n in decode_notes(data, author) if n.author == me]


def store_peer(conn: Connection, author: str, digest: str, notes: Sequence[Note]) -> None:
    """Keep what ``author``'s notes say about us, read at manifest ``digest``; an entry
    that was already there keeps its re-send state."""
    p = schema.peers
    text = conn.execute(select(p.c.notes).where(p.c.author == author)).scalar()
    sent = {(f, r, s): done for f, r, s, done in (json.loads(text) if text else [])}
    _store(conn, author, digest, [[n.filename, n.reason, n.since,
                                   sent.get((n.filename, n.reason, n.since))] for n in notes])


def _fingerprint(cipher: Cipher) -> str:
    """Names the recipients our bundles are encrypted to now."""
    keys = getattr(cipher, "recipients", None)
    basis = "x25519:" + ",".join(sorted(keys)) if keys else type(cipher).__name__
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def resend(replica: Replica, remote: Remote, report: SyncReport) -> int:
    """The push's hook: upload again every bundle of ours that another author noted as
    unreadable and that we have not re-sent for that note to our current recipients.
    Returns how many files were written. Costs one small local query when there is none;
    no database transaction is open while it talks to the remote."""
    me, mark = replica.author_id, _fingerprint(remote.cipher)
    p = schema.peers
    with replica.engine.begin() as conn:
        ensure_tables(conn)
        peers = {a: (d, json.loads(t)) for a, d, t in conn.execute(
            select(p.c.author, p.c.manifest_digest, p.c.notes).where(p.c.author != me))}
    todo = sorted({f for _, notes in peers.values() for f, reason, _, done in notes
                   if done != mark and reason != quarantine.TOO_LARGE})
    if not todo:
        return 0
    try:
        sent = _send(replica, remote, todo)
    except (OSError, DimpleError, ValueError) as exc:
        _push_failed(report, f"cannot upload again the bundles others could not read: {exc}")
        return 0
    with replica.engine.begin() as conn:
        for author, (digest, notes) in peers.items():
            new = [[f, r, s, mark if f in todo else done] for f, r, s, done in notes]
            if new != notes:
                _store(conn, author, digest, new)
    return sent


def _own_listing(remote: Remote, me: str, names: Sequence[str]) -> dict[str, BundleInfo]:
    """Our manifest's entries: the one this handle last wrote, read afresh when it lacks
    any of ``names`` (another handle may have pushed since)."""
    manifest = remote.own_manifest
    if manifest is None or not set(names) <= {b.filename for b in manifest.bundles}:
        data = remote.read_manifest(me)
        manifest = decode_manifest(data, me) if data is not None else None
    return {b.filename: b for b in (manifest.bundles if manifest else ())}


def _send(replica: Replica, remote: Remote, names: Sequence[str]) -> int:
    """Encode, encrypt and overwrite each named bundle of ours that our manifest lists and
    our log can rebuild exactly; the others are logged and skipped."""
    me = replica.author_id
    listed = _own_listing(remote, me, names)
    bundles: list[tuple[str, list[PackedTx]]] = []
    with replica.engine.connect() as conn:
        for name in names:
            info = listed.get(name)
            if info is None:
                logger.info("sync: a reader could not read our %s, which our manifest no "
                            "longer lists", name)
                continue
            ids = changelog.transaction_ids(conn, me, first=info.first_transaction_id,
                                            last=info.last_transaction_id)
            txs: list[PackedTx] = [(t, in_run_order(rows)) for t, rows
                                   in changelog.packed_transactions_of(conn, ids)]
            if len(txs) != info.transaction_count:
                logger.warning("sync: cannot upload %s again: our log holds %d of its %d "
                               "transactions", name, len(txs), info.transaction_count)
                continue
            bundles.append((name, txs))
        conn.rollback()
    for name, packed in bundles:
        data = pack_bundle_as(remote.storage.bundle_format, me, packed)
        remote.write_bundle(me, name, remote.cipher.encrypt(data))
    if bundles:
        logger.info("sync: uploaded again %d bundle(s) that other authors could not read",
                    len(bundles))
    return len(bundles)
