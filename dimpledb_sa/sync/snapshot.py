"""Snapshots: this author's pushed changes that still decide anything, in one file.

A snapshot is written to our own folder as ``snapshot_{last_transaction_id}.json``
(gzipped, then age-encrypted to the current recipients, like a bundle). It holds, for every (entity,
attribute) this author ever changed in a pushed transaction (id ``<= last_transaction_id``),
that author's *latest* such change, with its original change id, transaction id and old
and new values; a delete is such a change on the primary key (id -> null), so delete
markers are part of it. Changes are grouped under their original transactions (in
ascending id order), plus the held list of the writer for information. Version 2 (written
here) lists each transaction's changes as packed runs, one per entity (:mod:`.packed`);
version 1 (earlier releases; still read) as a bundle does. It is written as a stream
(:func:`stream`): the log's packed rows are read entity by entity, each entity's latest
changes kept as runs in a scratch SQLite file, read back in transaction order, encoded and
gzipped chunk by chunk, so that writing it holds only the compressed file whole, whatever
the history's size.

Merging a snapshot is merging those transactions with the ordinary merge
(:func:`.merge.merge`): last write wins per attribute depends only on each attribute's
latest change, and the latest change among all authors is the latest among the latest of
each author, so a snapshot and the bundles it replaces give the same rows. The merge skips
transactions it knows by id; that is sound because a transaction known here holds every
change of it that still wins among its author's changes (a pruned or snapshot-merged
transaction lost only changes superseded by a later change of the same author, which stays
superseded).

Readers (:func:`for_pull`): when the cursor for an author is unset, or sorts before the
first transaction of the first bundle its manifest still lists (compaction removes a prefix
of bundles and keeps the newest, see :mod:`.compact`, so such a cursor points into removed
bundles) and before its newest snapshot's last transaction, they merge the newest snapshot
and then the bundles after it. Only then is the author's folder listed (one request).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..core import changelog, meta, schema
from ..core.changes import (
    ROW_ATTRIBUTE,
    ROW_ENTITY_ID,
    ROW_ENTITY_TYPE,
    ROW_ID,
    ROW_TRANSACTION,
    ChangeRow,
    TxRecord,
)
from ..core.errors import RemoteFormatError
from .compress import gunzip_bounded, gunzip_chunks, gzip_chunks, is_gzip
from .packed import decode_piece, encode_runs
from .wire import (
    BundleInfo,
    Manifest,
    decode_bundle,
    encode_bundle,
    is_uuid,
    load_json,
    utc_now_iso,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from ..core.replica import Replica
    from .remote import Remote

__all__ = ["FORMAT", "VERSION", "VERSIONS", "Snapshot", "decode", "decode_in_pieces", "encode",
           "for_pull", "is_snapshot_name", "newest", "parse_snapshot_name", "snapshot_name",
           "stream", "write"]

FORMAT = "dimpledb-snapshot"
VERSION = 2
"""The version written: transactions of packed runs (:mod:`.packed`)."""
VERSIONS = (1, 2)
"""The versions read: 1 lists each transaction's changes as a bundle does."""
_UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAME = re.compile(rf"snapshot_({_UUID_RE})\.json")
_KEYS = ("format", "version", "author_id", "last_transaction_id", "created_at", "held",
         "transactions")


def snapshot_name(last: str) -> str:
    return f"snapshot_{last}.json"


def is_snapshot_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def parse_snapshot_name(name: str) -> str:
    """The last transaction id a snapshot file name states."""
    m = _NAME.fullmatch(name)
    if m is None:
        raise RemoteFormatError(f"not a snapshot file name: {name!r:.120}")
    return m.group(1)


class Snapshot:
    """A decoded snapshot: its transactions (own changes that win) and held list."""

    def __init__(self, author: str, last: str, transactions: list[TxRecord],
                 held: list[tuple[str, str, str, str]]) -> None:
        self.author = author
        self.last = last
        self.transactions = transactions
        self.held = held

    @property
    def name(self) -> str:
        return snapshot_name(self.last)


def _header(author: str, last: str, held: Sequence[tuple[str, str, str, str]],
            version: int = VERSION) -> bytes:
    """The snapshot's JSON up to its ``transactions`` array (the header fields first)."""
    head = {
        "format": FORMAT,
        "version": version,
        "author_id": author,
        "last_transaction_id": last,
        "created_at": utc_now_iso(),
        "held": [{"entity_type": a, "entity_id": b, "attribute": x, "reason": r}
                 for a, b, x, r in held],
    }
    return (json.dumps(head)[:-1] + ',"transactions":').encode("utf-8")


def encode(snap: Snapshot, version: int = VERSION) -> bytes:
    """The snapshot's JSON (UTF-8): a header object whose ``transactions`` are packed runs
    (version 2, :mod:`.packed`) or a bundle's array (version 1, as earlier releases wrote)."""
    head = _header(snap.author, snap.last, snap.held, version)
    if version == 1:
        return head + encode_bundle(snap.transactions) + b"}"
    body = ",\n".join(encode_runs(tx, changelog.pack(sorted(changes)))
                      for tx, _, changes in snap.transactions)
    return head + b"[" + body.encode("utf-8") + b"]}"


READ_ROWS = 20_000
"""How many rows of the log :func:`stream` reads at a time."""

ENCODE_RUNS = 5_000
"""About how many packed runs :func:`stream` encodes into one chunk of JSON."""

_SCRATCH = ("CREATE TABLE r (transaction_id TEXT, id TEXT, entity_type TEXT, entity_id TEXT, "
            "names TEXT, olds TEXT, news TEXT, PRIMARY KEY (transaction_id, id)) WITHOUT ROWID")
_RUN = "INSERT INTO r VALUES (?, ?, ?, ?, ?, ?, ?)"
_RUNS = ("SELECT id, transaction_id, entity_type, entity_id, names, olds, news FROM r "
         "ORDER BY transaction_id, id")


def _entity_runs(conn: Connection, mine: set[str]) -> Iterator[list[changelog.PackedRow]]:
    """The log's packed rows of the transactions ``mine``, a batch at a time in key order
    (entity, then id), every entity's rows in one batch."""
    over: list[changelog.PackedRow] = []
    for batch in changelog.iter_rows(conn, batch=READ_ROWS):
        rows = over + [r for r in batch if r[ROW_TRANSACTION] in mine]
        cut = len(rows)
        if cut:  # the last entity may go on in the next batch
            etype, eid = rows[-1][ROW_ENTITY_TYPE], rows[-1][ROW_ENTITY_ID]
            while cut and rows[cut - 1][ROW_ENTITY_ID] == eid \
                    and rows[cut - 1][ROW_ENTITY_TYPE] == etype:
                cut -= 1
        over = rows[cut:]
        yield rows[:cut]
    yield over


def _winning(rows: list[changelog.PackedRow]) -> list[changelog.PackedRow]:
    """The runs of the latest change of each (entity, attribute) among ``rows`` (in key
    order): an entity's rows as they are when their attributes do not overlap (an
    insert-only history: one row each), else its winners packed again."""
    out: list[changelog.PackedRow] = []
    i, n = 0, len(rows)
    while i < n:
        etype, eid = rows[i][ROW_ENTITY_TYPE], rows[i][ROW_ENTITY_ID]
        j = i + 1
        while j < n and rows[j][ROW_ENTITY_ID] == eid and rows[j][ROW_ENTITY_TYPE] == etype:
            j += 1
        if j == i + 1 and _distinct(rows[i][changelog.PACKED_ATTRIBUTES]):
            out.append(rows[i])
        else:
            out.extend(_latest(rows[i:j]))
        i = j
    return out


_DISTINCT: dict[str, bool] = {}


def _distinct(names_json: str) -> bool:
    """Whether a names list names each attribute once (as every local commit's rows do)."""
    got = _DISTINCT.get(names_json)
    if got is None:
        if len(_DISTINCT) >= 4096:
            _DISTINCT.clear()
        names = json.loads(names_json)
        got = _DISTINCT[names_json] = len(set(names)) == len(names)
    return got


def _latest(rows: list[changelog.PackedRow]) -> list[changelog.PackedRow]:
    """One entity's rows reduced to the latest change of each attribute, packed."""
    names = [json.loads(r[changelog.PACKED_ATTRIBUTES]) for r in rows]
    if sum(map(len, names)) == len(set().union(*names)):  # no attribute twice
        return rows
    win: dict[str, ChangeRow] = {}
    for ch in changelog.expand_all(rows):
        w = win.get(ch[ROW_ATTRIBUTE])
        if w is None or ch[ROW_ID] > w[ROW_ID]:
            win[ch[ROW_ATTRIBUTE]] = ch
    return changelog.pack(sorted(win.values(), key=itemgetter(ROW_TRANSACTION, ROW_ID)))


def stream(conn: Connection, me: str, last: str) -> Iterator[bytes]:
    """The snapshot JSON of ``me``'s transactions up to ``last`` from the log, in chunks
    (``conn`` is a write transaction: pending transactions are folded first).

    The log is read in key order (each entity's rows together), each entity's latest
    changes are kept as packed runs in a scratch SQLite database (a private temporary file,
    deleted when closed) and read back in transaction order, so that neither the log nor
    the snapshot is ever held whole in memory."""
    changelog.fold(conn)
    h = schema.held
    held = [(str(a), str(b), str(x), str(r)) for a, b, x, r in conn.execute(select(h))]
    yield _header(me, last, held)
    mine = {tx for tx in changelog.transaction_ids(conn, me) if tx <= last}
    scratch = sqlite3.connect("")
    try:
        scratch.execute("PRAGMA journal_mode = OFF")
        scratch.execute("PRAGMA synchronous = OFF")
        scratch.execute(_SCRATCH)
        for rows in _entity_runs(conn, mine):
            scratch.executemany(_RUN, [(tx, first, et, ei, names, olds, news)
                                       for first, tx, et, ei, names, olds, news
                                       in _winning(rows)])
        del mine
        sep = b"["
        batch: list[str] = []
        n = 0
        for tx, group in groupby(scratch.execute(_RUNS), key=itemgetter(ROW_TRANSACTION)):
            runs = list(group)
            batch.append(encode_runs(tx, runs))
            n += len(runs)
            if n >= ENCODE_RUNS:
                yield sep + ",\n".join(batch).encode("utf-8")
                sep, batch, n = b",\n", [], 0
        if batch:
            yield sep + ",\n".join(batch).encode("utf-8")
            sep = b""
        yield b"[]}" if sep == b"[" else b"]}"
    finally:
        scratch.close()


def _held(doc: Any) -> list[tuple[str, str, str, str]]:
    if type(doc) is not list:
        raise RemoteFormatError("snapshot held is not a list")
    out = []
    for h in doc:
        if type(h) is not dict or not all(
                type(h.get(k)) is str for k in ("entity_type", "entity_id", "attribute",
                                                 "reason")):
            raise RemoteFormatError("snapshot held entry is malformed")
        out.append((h["entity_type"], h["entity_id"], h["attribute"], h["reason"]))
    return out


_SPLIT = b',"transactions":'


def _split(data: bytes) -> tuple[bytes, bytes] | None:
    """(header object, transactions array) of a snapshot whose last field is
    ``transactions`` (as written here), parsed apart without reading the array twice; a
    quote inside a JSON string is always escaped, so the first ``,"transactions":`` is the
    field's own."""
    i = data.find(_SPLIT)
    body = data.rstrip()
    if i < 0 or not body.endswith(b"}"):
        return None
    return data[:i] + b"}", body[i + len(_SPLIT):-1]


def decode(data: bytes, author: str, name: str) -> Snapshot:
    """Parse and check a snapshot read from ``author``'s folder as ``name`` (decrypted;
    gzipped, as written since format 2, or the JSON itself)."""
    if is_gzip(data):
        data = gunzip_bounded(data, f"snapshot {name}")
    parts = _split(data)
    if parts is not None:
        head = load_json(parts[0], f"snapshot {name}")
        if type(head) is dict and "transactions" not in head:
            head["transactions"] = parts[1]
            return _decoded(head, author, name)
    doc = load_json(data, f"snapshot {name}")
    if type(doc) is dict and type(doc.get("transactions")) is list:
        doc["transactions"] = json.dumps(doc["transactions"]).encode("utf-8")
    return _decoded(doc, author, name)


_TX_SEP = b"},\n{"
"""What separates two transactions in a snapshot as written here (``encode_bundle``). A
JSON string cannot hold a raw newline, so this is never inside a string."""

PIECE_BYTES = 4 << 20
"""About how many bytes of JSON :func:`decode_in_pieces` decodes at a time."""


def decode_in_pieces(data: bytes, author: str, name: str
                     ) -> tuple[str, Iterator[list[TxRecord]]]:
    """A snapshot read from ``author``'s folder as ``name``, checked like :func:`decode`,
    as its last transaction id and its transactions in pieces of about
    :data:`PIECE_BYTES` of JSON, decompressed and decoded as they are asked for (so that
    merging a large snapshot never holds it whole). The header is checked at once; a
    piece that is not sound raises ``RemoteFormatError`` when it is reached.

    Pieces are cut where one transaction ends and the next begins (``},\n{``); since a
    cut anywhere else leaves a piece whose brackets do not balance, a piece that does not
    decode is either a bad file or such a cut (a value holding that text), and the file is
    then decoded whole, yielding the transactions after those already yielded. A file whose
    fields are not in the order written here is decoded whole too."""
    where = f"snapshot {name}"
    chunks: Iterator[bytes] = (gunzip_chunks(data, where) if is_gzip(data)
                               else iter([bytes(data)]))
    buf = b""
    i = -1
    for more in chunks:
        buf += more
        i = buf.find(_SPLIT)
        if i >= 0:
            break
    head = load_json(buf[:i] + b"}", where) if i >= 0 else None
    if type(head) is not dict or "transactions" in head:  # not laid out as written here
        snap = decode(buf + b"".join(chunks), author, name)
        return snap.last, iter([snap.transactions])
    head["transactions"] = b"[]"
    last = _decoded(head, author, name).last
    return last, _pieces(data, buf[i + len(_SPLIT):], chunks, author, name, last,
                         head["version"])


def _pieces(data: bytes, rest: bytes, chunks: Iterable[bytes], author: str, name: str,
            last: str, version: int) -> Iterator[list[TxRecord]]:
    """The transactions array of a snapshot (``rest``, then ``chunks``) in pieces; see
    :func:`decode_in_pieces`."""
    where = f"snapshot {name}"
    prev = ""
    for piece in _cut(rest, chunks, where):
        try:
            txs = _decode_transactions(b"[" + piece + b"]", author, where, version)
        except RemoteFormatError:  # a bad file, or a cut inside a value: decode it whole
            yield [tx for tx in decode(_plain(data, where), author, name).transactions
                   if tx[0] > prev]
            return
        if txs and (txs[0][0] <= prev or txs[-1][0] > last):
            raise RemoteFormatError(f"{where}: transactions out of order or after {last}")
        prev = txs[-1][0] if txs else prev
        yield txs


def _cut(rest: bytes, chunks: Iterable[bytes], where: str) -> Iterator[bytes]:
    """The array's text (``rest``, then ``chunks``; it starts with ``[``) as pieces of
    about :data:`PIECE_BYTES`, each a run of whole elements if the cuts fall between
    elements; the closing ``]`` and ``}`` are checked and left out."""
    rest = rest.lstrip()
    if not rest.startswith(b"["):
        raise RemoteFormatError(f"{where}: transactions is not a list")
    rest = rest[1:]
    for more in chunks:
        pieces, rest = _cut_front(rest + more)
        yield from pieces
    body = rest.rstrip()  # the end: the last elements, then "]" and "}"
    if not body.endswith(b"}"):
        raise RemoteFormatError(f"{where} does not end with its header's closing brace")
    body = body[:-1].rstrip()
    if not body.endswith(b"]"):
        raise RemoteFormatError(f"{where}: transactions is not a list")
    pieces, piece = _cut_front(body[:-1])  # several when the whole file came in one chunk
    yield from pieces
    if piece.strip():
        yield piece


def _cut_front(text: bytes) -> tuple[list[bytes], bytes]:
    """Pieces of about :data:`PIECE_BYTES` cut from the front of ``text`` between two
    elements, and what is left (at most about :data:`PIECE_BYTES`, or one longer element)."""
    pieces: list[bytes] = []
    while len(text) > PIECE_BYTES:
        cut = text.rfind(_TX_SEP, 0, PIECE_BYTES)
        if cut < 0:
            cut = text.find(_TX_SEP, PIECE_BYTES)
        if cut < 0:
            break
        pieces.append(text[: cut + 1])
        text = text[cut + 3 :]
    return pieces, text


def _plain(data: bytes, where: str) -> bytes:
    return gunzip_bounded(data, where) if is_gzip(data) else data


def _decoded(doc: Any, author: str, name: str) -> Snapshot:
    """The checked snapshot of ``doc`` (its ``transactions`` still the array's bytes)."""
    if type(doc) is not dict or sorted(doc) != sorted(_KEYS):
        raise RemoteFormatError(f"snapshot {name} does not have the fields {', '.join(_KEYS)}")
    if doc["format"] != FORMAT or doc["version"] not in VERSIONS \
            or type(doc["version"]) is not int:
        raise RemoteFormatError(f"snapshot {name}: unknown format or version")
    last = doc["last_transaction_id"]
    if doc["author_id"] != author or not is_uuid(last) or parse_snapshot_name(name) != last:
        raise RemoteFormatError(f"snapshot {name}: author or last transaction do not match")
    raw = doc["transactions"]
    if type(raw) is not bytes:
        raise RemoteFormatError(f"snapshot {name}: transactions is not a list")
    txs = (_decode_transactions(raw, author, f"snapshot {name}", doc["version"])
           if raw.strip() != b"[]" else [])
    if any(tx[0] > last for tx in txs):
        raise RemoteFormatError(f"snapshot {name} holds transactions after {last}")
    return Snapshot(author, last, txs, _held(doc["held"]))


def _decode_transactions(data: bytes, author: str, where: str, version: int
                         ) -> list[TxRecord]:
    """A snapshot's transactions array (or a run of its elements, bracketed) decoded."""
    if version == 1:
        return decode_bundle(data, author)
    return decode_piece(data, author, where)


def write(replica: Replica, remote: Remote) -> str | None:
    """Write a snapshot of everything we pushed; returns its name (``None``: nothing pushed).

    The JSON is built and gzipped chunk by chunk (:func:`stream`); only the compressed
    file is held whole, to be encrypted and signed."""
    me = replica.author_id
    with replica.engine.connect() as conn, conn.begin():
        meta.take_write_lock(conn)
        last = meta.get(conn, meta.PUSHED_THROUGH)
        if last is None:
            return None
        data = gzip_chunks(stream(conn, me, last))
    name = snapshot_name(last)
    remote.write_snapshot(me, name, remote.cipher.encrypt(data))
    return name


def newest(names: Sequence[str]) -> str | None:
    """The snapshot file among ``names`` that covers the most transactions."""
    snaps = sorted(n for n in names if is_snapshot_name(n))
    return snaps[-1] if snaps else None


def for_pull(remote: Remote, author: str, manifest: Manifest, cursor: str | None
             ) -> tuple[BundleInfo, Iterator[list[TxRecord]]] | None:
    """The newest snapshot of ``author`` as a pseudo bundle and its transactions in pieces
    (:func:`decode_in_pieces`), when the pull needs it (the cursor is unset, or points into
    bundles the manifest no longer lists); raises when it is needed and cannot be read,
    and its pieces raise when they are not sound (the pull then keeps the cursor and tries
    again)."""
    if not manifest.bundles:  # a compaction keeps the newest bundle listed
        return None
    if cursor is not None and cursor >= manifest.bundles[0].first_transaction_id:
        return None  # compaction removes a prefix: nothing after the cursor is gone
    name = newest(remote.storage.list_files(author))
    if name is None:
        return None
    last = parse_snapshot_name(name)
    if cursor is not None and last <= cursor:
        return None
    data = remote.read_snapshot(author, name)
    got, pieces = decode_in_pieces(remote.cipher.decrypt(data), author, name)
    if got != last:
        raise RemoteFormatError(f"snapshot {name}: author or last transaction do not match")
    return BundleInfo(name, last, last, 1, utc_now_iso()), pieces
