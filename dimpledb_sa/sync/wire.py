"""The remote file formats: bundle and manifest JSON, and the names that may appear remotely.

This module owns the byte-level codec of what an author uploads (see ``docs/FORMAT.md``):
transaction bundles (``encode_bundle`` / ``decode_bundle``, change rows as plain tuples whose
values are canonical JSON text; format 2, gzipped, with ``pack_bundle``, see
:mod:`.compress`; ``bundle_columns`` checks a parsed bundle column by column, for
:mod:`.runs`; ``decode_bundle`` also reads format 3, the packed runs that
:mod:`.packed` writes and checks, so every reader of bundles reads all three formats)
and the per-author manifest ``dimple_db.json``
(``Manifest`` / ``BundleInfo``, ``encode_manifest`` / ``decode_manifest``), plus the
validators for remote names (``is_uuid``, ``is_bundle_name``) that keep every path inside the
remote root, and the read limits (``MAX_BUNDLE_BYTES``, ``MAX_MANIFEST_BYTES``,
``MAX_NOTES_BYTES``; values nest at most ``MAX_VALUE_DEPTH`` deep). Decoding is strict:
anything malformed, inconsistent or hostile raises
:class:`~dimpledb_sa.core.errors.RemoteFormatError` naming the transaction, change or field at
fault, and the same bytes get the same verdict on every replica, whatever the call stack
(nesting is measured by an iterative walk; Python's recursion guard in ``json.loads`` only
ever turns a rejection into another rejection). It knows nothing of the ORM, of encryption
or of storage backends.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from json.encoder import encode_basestring_ascii as _esc
from operator import itemgetter
from typing import Any

from ..core.changes import ChangeRow, TxRecord
from ..core.clock import id_problem
from ..core.errors import RemoteFormatError
from ..core.rows import gc_paused
from ..core.values import MAX_VALUE_DEPTH, holds_nul, json_texts, value_depth
from .compress import gunzip_bounded, gzip_bytes, is_gzip

__all__ = [
    "GC_PAUSE_BYTES",
    "MANIFEST_NAME",
    "MAX_BUNDLE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_NOTES_BYTES",
    "MAX_STORED_BUNDLE_BYTES",
    "MAX_VALUE_DEPTH",
    "NOTES_NAME",
    "BundleColumns",
    "BundleInfo",
    "ChangeRow",
    "Manifest",
    "TxRecord",
    "bundle_columns",
    "bundle_name",
    "decode_bundle",
    "decode_manifest",
    "encode_bundle",
    "encode_manifest",
    "is_bundle_name",
    "is_timestamp",
    "is_uuid",
    "load_json",
    "manifest_with",
    "pack_bundle",
    "parse_bundle_name",
    "utc_now_iso",
]

MANIFEST_NAME = "dimple_db.json"
"""File name of an author's manifest, next to its bundles."""

NOTES_NAME = "dimple_unreadable.json"
"""File name of an author's notes on the other authors' files it could not read."""

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""The largest stored bundle file a reader downloads (the default of
``Storage.max_bundle_bytes``): a larger one is refused before it is decrypted or parsed."""

MAX_STORED_BUNDLE_BYTES = 16 * 1024 * 1024
"""The largest bundle file a push writes by default (``Storage.max_stored_bundle_bytes``):
a longer run of transactions is pushed as several bundles."""

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""The largest manifest a reader downloads (``Storage.max_manifest_bytes``)."""

MAX_NOTES_BYTES = 1024 * 1024
"""The largest notes file a reader downloads (``Storage.max_notes_bytes``)."""

_UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID = re.compile(_UUID_RE)
_BUNDLE_NAME = re.compile(rf"({_UUID_RE})_({_UUID_RE})\.json")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")

_TX_KEYS = ("id", "author", "changes")
_CHANGE_KEYS = (
    "id",
    "transaction_id",
    "entity_type",
    "entity_id",
    "attribute",
    "old_value",
    "new_value",
)
_NONEMPTY_KEYS = ("entity_type", "entity_id", "attribute")
_MANIFEST_KEYS = ("author_id", "last_transaction_id", "last_sync_timestamp", "bundles")
_INFO_KEYS = (
    "filename",
    "first_transaction_id",
    "last_transaction_id",
    "transaction_count",
    "created_at",
)


# --------------------------------------------------------------------------- names


def is_uuid(s: object) -> bool:
    """True for a canonical UUID string: lowercase hex, 8-4-4-4-12, nothing else."""
    return type(s) is str and _UUID.fullmatch(s) is not None


def is_bundle_name(s: object) -> bool:
    """True for a safe bundle file name ``{first_tx}_{last_tx}.json`` (canonical UUIDs)."""
    return type(s) is str and _BUNDLE_NAME.fullmatch(s) is not None


def parse_bundle_name(name: str) -> tuple[str, str]:
    """``(first_tx, last_tx)`` of a bundle file name; ``RemoteFormatError`` if unsafe."""
    m = _BUNDLE_NAME.fullmatch(name) if type(name) is str else None
    if m is None:
        raise RemoteFormatError(f"not a bundle file name ({{uuid}}_{{uuid}}.json): {_short(name)}")
    return m.group(1), m.group(2)


def bundle_name(first: str, last: str) -> str:
    """The file name of a bundle holding transactions ``first`` .. ``last``."""
    if not (is_uuid(first) and is_uuid(last)):
        raise ValueError(f"bundle ids must be canonical UUID strings: {first!r}, {last!r}")
    return f"{first}_{last}.json"


def is_timestamp(s: object) -> bool:
    """True for an ISO-8601 UTC timestamp ``YYYY-MM-DDTHH:MM:SS[.fff]Z`` that exists."""
    if type(s) is not str or _TIMESTAMP.fullmatch(s) is None:
        return False
    try:
        datetime.fromisoformat(s[:19])
    except ValueError:
        return False
    return True


def utc_now_iso() -> str:
    """Now, as the manifest writes timestamps: ``2024-07-11T10:30:45.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- bundles


def encode_bundle(transactions: Sequence[TxRecord]) -> bytes:
    """The bundle JSON (UTF-8 bytes) for ``transactions``, in ascending transaction id order.

    Values are embedded as the JSON they already are (the text is inserted as-is, ``None``
    becomes ``null``), so they must be valid JSON text. Raises ``ValueError`` for
    transactions out of order or a change whose ``transaction_id`` is not its transaction's.
    """
    esc = _esc
    out: list[str] = []
    prev = ""
    for tid, author, changes in transactions:
        if tid <= prev:
            raise ValueError(f"transactions must be in strictly ascending id order: {tid!r}")
        prev = tid
        etid = esc(tid)
        parts: list[str] = []
        append = parts.append
        for cid, ctid, etype, eid, attr, old, new in changes:
            if ctid != tid:
                raise ValueError(f"change {cid!r} has transaction_id {ctid!r}, not {tid!r}")
            append(
                f'{{"id":{esc(cid)},"transaction_id":{etid},"entity_type":{esc(etype)},'
                f'"entity_id":{esc(eid)},"attribute":{esc(attr)},'
                f'"old_value":{"null" if old is None else old},'
                f'"new_value":{"null" if new is None else new}}}'
            )
        out.append(f'{{"id":{etid},"author":{esc(author)},"changes":[{",".join(parts)}]}}')
    return ("[" + ",\n".join(out) + "]").encode("utf-8")


def pack_bundle(transactions: Sequence[TxRecord]) -> bytes:
    """The format-2 bundle of ``transactions``: :func:`encode_bundle`'s JSON, gzipped (what
    a writer encrypts and uploads)."""
    return gzip_bytes(encode_bundle(transactions))


def load_json(data: bytes, what: str) -> Any:
    """``data`` parsed as UTF-8 JSON; ``RemoteFormatError`` (naming ``what``) otherwise, and
    for a text holding NUL (:func:`~dimpledb_sa.core.values.holds_nul`)."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RemoteFormatError(f"{what} is not UTF-8 text (bad byte at offset {e.start})") from e
    if holds_nul(text):
        raise RemoteFormatError(f"{what} holds the character NUL (U+0000) in a text, which "
                                "no replica accepts (PostgreSQL cannot store it)")
    try:
        return json.loads(text)
    except RecursionError as e:  # far deeper than any value may nest: rejected either way
        raise RemoteFormatError(
            f"{what} is not usable JSON: nested too deeply (more than {MAX_VALUE_DEPTH} "
            "arrays/objects)"
        ) from e
    except ValueError as e:  # JSONDecodeError, and int() digit limits
        raise RemoteFormatError(f"{what} is not valid JSON: {e}") from e


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60


def _short(value: object) -> str:
    """A short repr (reprlib: bounded depth, so a hostile deeply nested value cannot exhaust
    the stack)."""
    return _SHORT.repr(value)[:120]


def _describe(value: object) -> str:
    return f"{type(value).__name__} {_short(value):.80}"


def _too_deep(values: Sequence[Any]) -> bool:
    """Whether any of ``values`` nests arrays/objects deeper than ``MAX_VALUE_DEPTH``."""
    kinds = set(map(type, values))  # JSON gives lists and dicts only as containers
    if list not in kinds and dict not in kinds:
        return False
    return any(value_depth(v) > MAX_VALUE_DEPTH for v in values if type(v) in (list, dict))


def _record_problem(record: object, keys: tuple[str, ...]) -> str | None:
    """What is wrong with a record that must be an object with exactly ``keys``, one of them
    an ``id`` holding a canonical UUID; ``None`` when nothing is."""
    if type(record) is not dict:
        return f"is not an object but {_describe(record)}"
    missing = [k for k in keys if k not in record]
    if missing:
        return f"lacks field(s) {', '.join(missing)}"
    extra = sorted(str(k) for k in record if k not in keys)
    if extra:
        return f"has unknown field(s) {', '.join(extra)}"
    if not is_uuid(record["id"]):
        return f"has an id that is not a canonical UUID: {_describe(record['id'])}"
    return None


def _tx_problem(tx: Any, author: str) -> str:
    problem = _record_problem(tx, _TX_KEYS)
    if problem is not None:
        return problem
    if tx["author"] != author:
        return f"has author {_short(tx['author'])} but lies in the folder of author {author}"
    if type(tx["changes"]) is not list:
        return f"has changes that are not a list but {_describe(tx['changes'])}"
    return "is malformed"  # pragma: no cover - callers only ask when something is wrong


def _change_problem(c: Any, tid: str) -> str:
    problem = _record_problem(c, _CHANGE_KEYS)
    if problem is not None:
        return problem
    if c["transaction_id"] != tid:
        return f"has transaction_id {_short(c['transaction_id'])}, not its transaction's id {tid}"
    for key in _NONEMPTY_KEYS:
        v = c[key]
        if type(v) is not str:
            return f"has a {key} that is not a string but {_describe(v)}"
        if not v:
            return f"has an empty {key}"
    return "is malformed"  # pragma: no cover - callers only ask when something is wrong


BundleColumns = tuple[tuple[str, ...], list[int], tuple[str, ...], tuple[str, ...],
                      tuple[str, ...], tuple[str, ...], tuple[Any, ...], tuple[Any, ...]]
"""A well-formed bundle column by column (:func:`bundle_columns`): the transaction ids, how
many changes each has, then the changes' ids, entity types, entity ids, attributes, and
old and new values as parsed (JSON values, ``None`` for null)."""


def decode_bundle(data: bytes, author: str, *, name: str | None = None,
                  runs: Callable[..., list[TxRecord]] | None = None) -> list[TxRecord]:
    """Parse and validate a bundle read from ``author``'s folder (format 1, 2 or 3).

    ``data`` is the decrypted file: formats 2 and 3 (gzip, told by its magic bytes) are
    decompressed within :data:`~.compress.MAX_JSON_BYTES` first, format 1 is the JSON
    itself. A JSON array is a bundle of format 1 or 2; a gzipped JSON object is one of
    format 3 (:func:`.packed.decode_bundle_runs`: its transactions' changes come as
    :class:`~.packed.PackedChanges`, which read as the change records format 2 gives).

    Returns the transactions with their change rows, values re-serialized as
    ``json.dumps(value)`` (JSON null as ``None``), so decoding our own encoding gives back the
    same tuples. With ``name`` (the bundle's file name), the first and last transaction ids
    must be the ones the name states. Raises ``RemoteFormatError`` for anything else.
    ``runs`` (see :mod:`.runs`) makes the transactions of a well-formed bundle from its
    columns instead (``runs(author, *columns)``, :data:`BundleColumns`), after the same
    checks; the verdict on the bytes is the same.
    """
    if not is_uuid(author):
        raise RemoteFormatError(f"not a canonical author id: {author!r:.80}")
    where = f"bundle {name}" if name else "bundle"
    gzipped = is_gzip(data)
    if gzipped:  # format 2 or 3
        data = gunzip_bounded(data, where)
    with gc_paused(len(data) > GC_PAUSE_BYTES):
        doc = load_json(data, where)
        if type(doc) is dict and gzipped:  # format 3
            from .packed import decode_bundle_runs  # packed builds on this module

            out = decode_bundle_runs(doc, author, where)  # (its ids checked there)
            ids: list[str] = []
        else:
            columns = bundle_columns(doc, author)
            if columns is None:
                out = _decode_checked(doc, author, where)
                ids = [tx[0] for tx in out]
                ids += map(itemgetter(0), chain.from_iterable(tx[2] for tx in out))
            else:
                out = _rows_of(author, *columns) if runs is None else runs(author, *columns)
                ids = [*columns[0], *columns[2]]
    problem = _id_problem(ids)
    if problem is not None:
        raise RemoteFormatError(f"{where}: {problem}")
    if name is not None:
        first, last = parse_bundle_name(name)
        if not out:
            raise RemoteFormatError(f"{where} holds no transactions")
        if out[0][0] != first or out[-1][0] != last:
            raise RemoteFormatError(
                f"{where} holds transactions {out[0][0]} .. {out[-1][0]}, "
                "not the ones its name states"
            )
    return out


def _id_problem(ids: list[str]) -> str | None:
    """Why one of the transaction or change ids ``ids`` is not to be believed (see
    :func:`~dimpledb_sa.core.clock.id_problem`: a UUIDv7 from 2020 on, at most
    :data:`~dimpledb_sa.core.clock.MAX_ID_AHEAD` ahead), or ``None``. Checked in bulk: the
    version and variant digits of all ids at once, then the smallest and largest."""
    if not ids:
        return None
    n = len(ids)
    raw = "".join(ids).encode("ascii")  # canonical UUIDs by now: 36 ASCII characters each
    if (raw[14::36] == b"7" * n and not raw[19::36].translate(None, b"89ab")
            and id_problem(min(ids)) is None and id_problem(max(ids)) is None):
        return None
    for value in ids:
        problem = id_problem(value)
        if problem is not None:
            return f"id {value} is not believable: {problem}"
    return None  # pragma: no cover - one of them failed above


GC_PAUSE_BYTES = 1 << 20
"""Bundles at least this large are decoded with the cyclic GC paused."""
_HEX_DASH = b"0123456789abcdef-"


_GET_TX = itemgetter(*_TX_KEYS)
_GET_CHANGE = itemgetter(*_CHANGE_KEYS)


def _all_uuids(ids: tuple[Any, ...]) -> bool:
    """Whether every item is a canonical UUID string, checked in bulk at C speed."""
    n = len(ids)
    joined = "".join(ids)  # TypeError for a non-string: the caller treats it as False
    if list(map(len, ids)).count(36) != n or not joined.isascii():
        return False
    raw = joined.encode("ascii")
    if raw.translate(None, _HEX_DASH) or raw.count(b"-") != 4 * n:
        return False
    dashes = b"-" * n
    return all(raw[i::36] == dashes for i in (8, 13, 18, 23))


def bundle_columns(doc: Any, author: str) -> BundleColumns | None:
    """A parsed bundle checked column-wise, without a Python-level loop per change, as
    :data:`BundleColumns`.

    Returns ``None`` as soon as anything is off; :func:`_decode_checked` then finds and names
    the problem. It accepts nothing that :func:`_decode_checked` rejects (a test holds the
    fast and the checked decoding to the same results).
    """
    if type(doc) is not list:
        return None
    n = len(doc)
    if not n:
        return (), [], (), (), (), (), (), ()
    try:
        if list(map(len, doc)).count(3) != n:
            return None
        tids, authors, lists = zip(*map(_GET_TX, doc), strict=True)
        if (
            authors.count(author) != n
            or not _all_uuids(tids)
            or list(tids) != sorted(set(tids))
            or set(map(type, lists)) != {list}
        ):
            return None
        counts = list(map(len, lists))
        flat = list(chain.from_iterable(lists))
        m = len(flat)
        if not m:
            return tids, counts, (), (), (), (), (), ()
        if list(map(len, flat)).count(7) != m:
            return None
        # each change's seven values in one C call, then the columns: faster than seven
        # passes of one key each
        ids, ctids, etypes, eids, attrs, olds, news = zip(*map(_GET_CHANGE, flat), strict=True)
        if (
            ctids != tuple(chain.from_iterable(map(repeat, tids, counts)))
            or not _all_uuids(ids)
            or len(set(ids)) != m
        ):
            return None
        for col in (etypes, eids, attrs):
            "".join(col)  # TypeError unless all are strings
            if "" in col:
                return None
    except (KeyError, TypeError):
        return None
    if _too_deep(olds) or _too_deep(news):
        return None
    return tids, counts, ids, etypes, eids, attrs, olds, news


def _decode_fast(doc: Any, author: str) -> list[TxRecord] | None:
    """The transactions of a well-formed bundle (:func:`bundle_columns`, then
    :func:`_rows_of`); ``None`` when anything is off."""
    columns = bundle_columns(doc, author)
    return None if columns is None else _rows_of(author, *columns)


def _rows_of(author: str, tids: tuple[str, ...], counts: list[int], ids: tuple[str, ...],
             etypes: tuple[str, ...], eids: tuple[str, ...], attrs: tuple[str, ...],
             olds: tuple[Any, ...], news: tuple[Any, ...]) -> list[TxRecord]:
    """The transactions of a bundle's columns, with their change rows."""
    m = len(ids)
    # inserts: every old value null
    old_json = [None] * m if olds.count(None) == m else json_texts(olds)
    new_json = json_texts(news)
    ctids = chain.from_iterable(map(repeat, tids, counts))
    rows = list(zip(ids, ctids, etypes, eids, attrs, old_json, new_json, strict=False))
    out: list[TxRecord] = []
    pos = 0
    for tid, k in zip(tids, counts, strict=True):
        out.append((tid, author, rows[pos : pos + k]))
        pos += k
    return out


def _decode_checked(doc: Any, author: str, where: str) -> list[TxRecord]:
    """Decode change by change, raising ``RemoteFormatError`` at the first problem."""
    if type(doc) is not list:
        raise RemoteFormatError(f"{where} is not a JSON array of transactions (nor a "
                                "gzipped format-3 object)")
    dumps = json.dumps
    seen: set[str] = set()
    out: list[TxRecord] = []
    prev = ""
    for ti, tx in enumerate(doc):
        if type(tx) is not dict or len(tx) != 3 or set(tx) != set(_TX_KEYS):
            raise RemoteFormatError(f"{where}: transaction #{ti} {_tx_problem(tx, author)}")
        tid, changes = tx["id"], tx["changes"]
        if not is_uuid(tid) or tx["author"] != author or type(changes) is not list:
            raise RemoteFormatError(f"{where}: transaction #{ti} {_tx_problem(tx, author)}")
        if tid <= prev:
            raise RemoteFormatError(
                f"{where}: transaction {tid} "
                + ("appears twice" if tid == prev else f"is out of order (after {prev})")
            )
        prev = tid
        rows: list[ChangeRow] = []
        for ci, c in enumerate(changes):
            if (
                type(c) is not dict
                or len(c) != 7
                or set(c) != set(_CHANGE_KEYS)
                or not is_uuid(c["id"])
                or c["transaction_id"] != tid
                or not all(type(c[k]) is str and c[k] for k in _NONEMPTY_KEYS)
            ):
                raise RemoteFormatError(
                    f"{where}: transaction {tid}, change #{ci} {_change_problem(c, tid)}"
                )
            cid = c["id"]
            if cid in seen:
                raise RemoteFormatError(f"{where}: change id {cid} appears more than once")
            seen.add(cid)
            old, new = c["old_value"], c["new_value"]
            if _too_deep((old, new)):
                raise RemoteFormatError(
                    f"{where}: transaction {tid}, change {cid} has a value nested too deeply "
                    f"(more than {MAX_VALUE_DEPTH} arrays/objects)"
                )
            rows.append(
                (
                    cid,
                    tid,
                    c["entity_type"],
                    c["entity_id"],
                    c["attribute"],
                    None if old is None else dumps(old),
                    None if new is None else dumps(new),
                )
            )
        out.append((tid, author, rows))
    return out


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class BundleInfo:
    """One manifest entry: a bundle file and the transactions it holds."""

    filename: str
    first_transaction_id: str
    last_transaction_id: str
    transaction_count: int
    created_at: str


@dataclass(frozen=True)
class Manifest:
    """An author's ``dimple_db.json``: its bundles, sorted by last transaction id."""

    author_id: str
    last_transaction_id: str | None
    last_sync_timestamp: str
    bundles: tuple[BundleInfo, ...] = ()


def encode_manifest(m: Manifest) -> bytes:
    """The manifest JSON (UTF-8 bytes, indented like the seed's example)."""
    doc = {
        "author_id": m.author_id,
        "last_transaction_id": m.last_transaction_id,
        "last_sync_timestamp": m.last_sync_timestamp,
        "bundles": [
            {
                "filename": b.filename,
                "first_transaction_id": b.first_transaction_id,
                "last_transaction_id": b.last_transaction_id,
                "transaction_count": b.transaction_count,
                "created_at": b.created_at,
            }
            for b in m.bundles
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _check_keys(obj: object, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if type(obj) is not dict:
        raise RemoteFormatError(f"{what} is not a JSON object but {_describe(obj)}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise RemoteFormatError(f"{what} lacks field(s) {', '.join(missing)}")
    extra = sorted(str(k) for k in obj if k not in keys)
    if extra:
        raise RemoteFormatError(f"{what} has unknown field(s) {', '.join(extra)}")
    return obj


def _decode_info(obj: object, i: int) -> BundleInfo:
    d = _check_keys(obj, _INFO_KEYS, f"manifest bundle entry #{i}")
    what = f"manifest bundle entry #{i}"
    filename, first, last = d["filename"], d["first_transaction_id"], d["last_transaction_id"]
    count, created = d["transaction_count"], d["created_at"]
    if not is_bundle_name(filename):
        raise RemoteFormatError(f"{what} has an unsafe or malformed filename: {_short(filename)}")
    for key, v in (("first_transaction_id", first), ("last_transaction_id", last)):
        if not is_uuid(v):
            raise RemoteFormatError(f"{what} has a {key} that is not a canonical UUID: {_short(v)}")
    if filename != f"{first}_{last}.json":
        raise RemoteFormatError(f"{what}: filename {filename} does not match its first/last ids")
    if first > last:
        raise RemoteFormatError(f"{what}: first_transaction_id sorts after last_transaction_id")
    if type(count) is not int or count < 1:
        raise RemoteFormatError(f"{what} has a transaction_count that is not a positive integer")
    if count > 1 and first == last:
        raise RemoteFormatError(f"{what} claims {count} transactions from a single id")
    if not is_timestamp(created):
        raise RemoteFormatError(f"{what} has a created_at that is not an ISO-8601 UTC time")
    return BundleInfo(filename, first, last, count, created)


def decode_manifest(data: bytes, author: str) -> Manifest:
    """Parse and validate ``author``'s manifest; ``RemoteFormatError`` when it is not sound."""
    if not is_uuid(author):
        raise RemoteFormatError(f"not a canonical author id: {author!r:.80}")
    d = _check_keys(load_json(data, "manifest"), _MANIFEST_KEYS, "manifest")
    if d["author_id"] != author:
        raise RemoteFormatError(
            f"manifest has author_id {_short(d['author_id'])} but lies in the folder of {author}"
        )
    if not is_timestamp(d["last_sync_timestamp"]):
        raise RemoteFormatError("manifest has a last_sync_timestamp that is not ISO-8601 UTC")
    if type(d["bundles"]) is not list:
        raise RemoteFormatError("manifest bundles is not a list")
    bundles = tuple(_decode_info(b, i) for i, b in enumerate(d["bundles"]))
    for i in range(1, len(bundles)):
        if bundles[i].last_transaction_id <= bundles[i - 1].last_transaction_id:
            raise RemoteFormatError(
                f"manifest bundle entry #{i} is not sorted after entry #{i - 1} "
                "by last_transaction_id (or repeats it)"
            )
    last = d["last_transaction_id"]
    expected = bundles[-1].last_transaction_id if bundles else None
    if last != expected:
        raise RemoteFormatError(
            f"manifest last_transaction_id {_short(last)} is not the last bundle's ({expected})"
        )
    return Manifest(author, last, d["last_sync_timestamp"], bundles)


def manifest_with(
    m: Manifest | None, author: str, info: BundleInfo, *, now: str | None = None
) -> Manifest:
    """``m`` (or a new manifest for ``author``) with ``info`` added.

    An entry with the same filename is replaced in place; otherwise ``info`` is appended and
    the entries kept sorted by last transaction id. ``last_transaction_id`` becomes the
    largest one and ``last_sync_timestamp`` ``now`` (default: :func:`utc_now_iso`). Raises
    ``ValueError`` for an inconsistent ``info`` or a foreign manifest.
    """
    if not is_uuid(author):
        raise ValueError(f"not a canonical author id: {author!r}")
    if m is not None and m.author_id != author:
        raise ValueError(f"manifest of {m.author_id} given for author {author}")
    first, last = info.first_transaction_id, info.last_transaction_id
    if info.filename != bundle_name(first, last) or first > last:
        raise ValueError(f"bundle info is inconsistent: {info!r}")
    if type(info.transaction_count) is not int or info.transaction_count < 1:
        raise ValueError(f"transaction_count must be a positive integer: {info!r}")
    if not is_timestamp(info.created_at):
        raise ValueError(f"created_at is not an ISO-8601 UTC timestamp: {info.created_at!r}")
    bundles = list(m.bundles) if m is not None else []
    for i, b in enumerate(bundles):
        if b.filename == info.filename:
            bundles[i] = info
            break
    else:
        if any(b.last_transaction_id == last for b in bundles):
            raise ValueError(f"another bundle already ends at transaction {last}")
        bundles.append(info)
        bundles.sort(key=lambda b: b.last_transaction_id)
    return Manifest(
        author_id=author,
        last_transaction_id=bundles[-1].last_transaction_id,
        last_sync_timestamp=now if now is not None else utc_now_iso(),
        bundles=tuple(bundles),
    )
