"""Snapshot version 2's and bundle format 3's transactions: packed runs, as the change log
stores them.

A version-2 snapshot (:mod:`.snapshot`) lists each transaction as
``{"id": tx, "runs": [[first_id, entity_type, entity_id, names, olds, news], ...]}``: one
*run* per entity the transaction changed and the snapshot keeps, whose ``k``-th change has
the id ``offset_id(first_id, k)``, the attribute ``names[k]``, and the old and new values
``olds[k]`` and ``news[k]`` (JSON values, ``null`` for none). That is a packed row of the
log (:mod:`..core.changelog`) with its three arrays inline, so an insert-only history costs
one id and one names list per row instead of six change records, and writing and reading
it never makes a Python object per change.

:func:`encode_runs` writes transactions from packed rows; :func:`decode_piece` checks and
decodes a run of them into transactions whose changes are :class:`PackedChanges`: a
read-only sequence of the change records that expands its packed rows only when it is
read as one, so that the bulk bootstrap (:mod:`.bootstrap`) stores the runs as they came,
column by column with their values parsed (:class:`~dimpledb_sa.core.runs.Runs`; their
texts are spelled once, in bulk, as the log stores them), and every other reader of
transactions sees plain change records. The checks work on whole columns (one call over
every run's ids, names or values), not run by run.

A format-3 bundle (``docs/FORMAT.md``) is ``{"format": "dimpledb-bundle", "version": 3,
"author": ..., "transactions": [...]}`` with such transactions, gzipped:
:func:`encode_bundle_runs` / :func:`pack_bundle_runs` write it from a push's packed rows
(:func:`in_run_order` makes sure they are runs a reader takes), and
:func:`decode_bundle_runs` checks and decodes it for :func:`.wire.decode_bundle`, the
one decoding every reader of bundles goes through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import chain, compress, repeat
from json.encoder import encode_basestring_ascii as _esc
from operator import add, gt, itemgetter, lt
from typing import Any, overload

from ..core import changelog
from ..core.changes import ChangeRow, TxRecord
from ..core.clock import id_problem, offset_id, run_ids
from ..core.errors import ConfigurationError, RemoteFormatError
from ..core.runs import Runs, canonical_uuids
from ..core.values import MAX_VALUE_DEPTH, value_depth
from .compress import gzip_bytes
from .wire import is_uuid, load_json, pack_bundle

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "PackedChanges",
    "PackedTx",
    "check_format",
    "decode_bundle_runs",
    "decode_piece",
    "decode_transactions",
    "encode_bundle_runs",
    "encode_runs",
    "in_run_order",
    "names_count",
    "pack_bundle_as",
    "pack_bundle_runs",
    "packed_of",
]

BUNDLE_FORMAT = "dimpledb-bundle"
"""The ``format`` field of a format-3 bundle."""

BUNDLE_VERSION = 3
"""The bundle format this module writes (its ``version`` field)."""

_BUNDLE_KEYS = ("format", "version", "author", "transactions")

PackedTx = tuple[str, Sequence[changelog.PackedRow]]
"""A transaction to write as runs: its id and its packed rows (text form)."""

_dumps = json.dumps
_HEX3 = ["%03x" % i for i in range(0x1000)]  # noqa: UP031


class PackedChanges(Sequence[ChangeRow]):
    """One transaction's changes as packed rows of the log, column by column with their
    values parsed (``runs``, a :class:`~dimpledb_sa.core.runs.Runs`), expanded into change
    records (as they came) the first time they are read as a sequence; ``len``,
    :attr:`size` and :attr:`newest` need no expansion, :attr:`rows` (the text form) is
    made when first asked for."""

    __slots__ = ("_expanded", "_rows", "newest", "runs", "size")

    def __init__(self, runs: Runs, size: int, newest: str,
                 rows: list[changelog.PackedRow] | None = None) -> None:
        self.runs = runs
        self.size = size
        """How many changes."""
        self.newest = newest
        """The largest change id of the transaction."""
        self._rows = rows
        """The text form, when the maker has it already (else made when first asked for)."""
        self._expanded: list[ChangeRow] | None = None

    @property
    def rows(self) -> list[changelog.PackedRow]:
        """The packed rows in text form (made once)."""
        if self._rows is None:
            self._rows = self.runs.rows()
        return self._rows

    @property
    def news(self) -> list[list[Any]]:
        """Each row's new values, as parsed."""
        return self.runs.news

    def expanded(self) -> list[ChangeRow]:
        """The change records, run after run, as they came (made once): in id order for a
        snapshot's (whose runs are checked to be), in the bundle's order for a pulled one."""
        if self._expanded is None:
            self._expanded = changelog.expand_all(self.rows)
        return self._expanded

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, i: int) -> ChangeRow: ...
    @overload
    def __getitem__(self, i: slice) -> list[ChangeRow]: ...
    def __getitem__(self, i: int | slice) -> ChangeRow | list[ChangeRow]:
        return self.expanded()[i]

    def __iter__(self) -> Iterator[ChangeRow]:
        return iter(self.expanded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedChanges):
            other = other.expanded()
        return isinstance(other, list) and self.expanded() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedChanges({self.size} changes in {len(self.runs)} runs)"


def packed_of(tx: TxRecord) -> PackedChanges | None:
    """The packed changes of a transaction decoded by :func:`decode_piece` (else ``None``)."""
    changes: object = tx[2]
    return changes if isinstance(changes, PackedChanges) else None


def encode_runs(tx: str, rows: Sequence[changelog.PackedRow]) -> str:
    """The JSON of one transaction from its packed rows (text form: the arrays are JSON)."""
    runs = ",".join([f'["{first}",{_esc(etype)},{_esc(eid)},{names},{olds},{news}]'
                     for first, _, etype, eid, names, olds, news in rows])
    return f'{{"id":"{tx}","runs":[{runs}]}}'


def in_run_order(rows: Sequence[changelog.PackedRow]) -> list[changelog.PackedRow]:
    """One transaction's packed rows as a format-3 bundle lists its runs: ascending by
    first id, no two sharing an id, no name twice in a run. Rows that would not be (the
    log never makes them, but a reader refuses them) are made anew from their change
    records (:func:`~dimpledb_sa.core.changelog.pack`, a run cut where a name repeats)."""
    out = sorted(rows)
    info = {text: _names_info(text) for text in set(map(_NAMES, out))}
    if not all(map(_DISTINCT, info.values())):
        out = sorted(chain.from_iterable(map(_apart, out)))
        info = {text: _names_info(text) for text in set(map(_NAMES, out))}
    if len(out) < 2:
        return out
    firsts = list(map(_FIRST, out))
    lens = list(map(_FIRST, map(info.__getitem__, map(_NAMES, out))))
    if all(map(lt, _lasts(firsts[:-1], lens[:-1]), firsts[1:])):
        return out
    repacked = changelog.pack(sorted(set(changelog.expand_all(out))))
    return sorted(chain.from_iterable(map(_apart, repacked)))


_NAMES = itemgetter(4)
_DISTINCT = itemgetter(1)


def _lasts(firsts: list[str], lens: list[int]) -> list[str]:
    """The last id of each run (``lens[k]`` ids from ``firsts[k]``): the counter's last
    field moved in the text, column by column, for canonical ids whose field does not
    carry; :func:`~..core.clock.offset_id` for the others."""
    if not firsts or canonical_uuids(firsts) is None or 0 in lens:
        return [offset_id(f, n - 1) for f, n in zip(firsts, lens, strict=True)]
    ends = list(map(add, map(int, map(_LOW, firsts), repeat(16)), lens))
    lasts = list(map("".join, zip(
        map(_HEAD, firsts), map(_LAST_HEX.__getitem__, map(min, ends, repeat(0x1000))),
        map(_TAIL, firsts), strict=True)))
    if max(ends) > 0x1000:
        for i in compress(range(len(ends)), map(gt, ends, repeat(0x1000))):
            lasts[i] = offset_id(firsts[i], lens[i] - 1)
    return lasts


def _apart(row: changelog.PackedRow) -> list[changelog.PackedRow]:
    """``row`` cut into runs that name no attribute twice."""
    if _names_info(row[4])[1]:
        return [row]
    parts: list[list[ChangeRow]] = [[]]
    for change in changelog.expand(row):
        if any(c[4] == change[4] for c in parts[-1]):
            parts.append([])
        parts[-1].append(change)
    return [r for part in parts for r in changelog.pack(part)]


_NAMES_INFO: dict[str, tuple[int, bool]] = {}


def _names_info(names: str) -> tuple[int, bool]:
    """How many names a packed row's names JSON lists, and whether they are distinct
    (parsed once per distinct text)."""
    info = _NAMES_INFO.get(names)
    if info is None:
        listed = changelog.names_list(names)
        info = (len(listed), len(set(listed)) == len(listed))
        if len(_NAMES_INFO) < 4096:
            _NAMES_INFO[names] = info
    return info


def names_count(names: str) -> int:
    """How many names a packed row's names JSON lists."""
    return _names_info(names)[0]


def encode_bundle_runs(author: str, transactions: Sequence[PackedTx]) -> bytes:
    """The JSON (UTF-8 bytes) of a format-3 bundle of ``author``'s ``transactions``
    (ascending ids; each one's rows as :func:`in_run_order` gives them): the header first,
    then one transaction per line. Raises ``ValueError`` for transactions out of order."""
    prev = ""
    parts: list[str] = []
    for tx, rows in transactions:
        if tx <= prev:
            raise ValueError(f"transactions must be in strictly ascending id order: {tx!r}")
        prev = tx
        parts.append(encode_runs(tx, rows))
    head = (f'{{"format":"{BUNDLE_FORMAT}","version":{BUNDLE_VERSION},'
            f'"author":{_esc(author)},"transactions":[\n')
    return (head + ",\n".join(parts) + "]}").encode("utf-8")


def pack_bundle_runs(author: str, transactions: Sequence[PackedTx]) -> bytes:
    """The format-3 bundle of ``transactions``: :func:`encode_bundle_runs`'s JSON, gzipped
    (what a writer encrypts and uploads)."""
    return gzip_bytes(encode_bundle_runs(author, transactions))


WRITABLE_FORMATS = (2, 3)
"""The bundle formats a push can write (``Storage.bundle_format``)."""


def check_format(version: object) -> None:
    """``ConfigurationError`` unless ``version`` is a bundle format a push can write."""
    if type(version) is not int or version not in WRITABLE_FORMATS:
        raise ConfigurationError(f"cannot write bundle format {version!r}: "
                                 "Storage.bundle_format is one of "
                                 f"{', '.join(map(str, WRITABLE_FORMATS))}")


def pack_bundle_as(version: int, author: str, transactions: Sequence[PackedTx]) -> bytes:
    """The bundle of ``transactions`` in format ``version``: 3 (:func:`pack_bundle_runs`),
    or 2 (one record per change, what earlier releases read: :func:`.wire.pack_bundle`);
    ``ConfigurationError`` for any other (:func:`check_format`)."""
    check_format(version)
    if version == 2:
        return pack_bundle([(tx, author, changelog.expand_all(rows))
                            for tx, rows in transactions])
    return pack_bundle_runs(author, transactions)


def decode_bundle_runs(doc: Any, author: str, where: str) -> list[TxRecord]:
    """The transactions of a parsed format-3 bundle of ``author``'s folder, checked: an
    object with exactly the fields ``format`` (``"dimpledb-bundle"``), ``version`` (3),
    ``author`` (the folder's) and ``transactions`` (see :func:`decode_transactions`).
    Raises ``RemoteFormatError``."""
    if type(doc) is not dict or len(doc) != len(_BUNDLE_KEYS) or set(doc) != set(_BUNDLE_KEYS):
        raise RemoteFormatError(f"{where} is not an object with exactly the fields "
                                f"{', '.join(_BUNDLE_KEYS)} (a format-3 bundle)")
    version = doc["version"]
    if doc["format"] != BUNDLE_FORMAT or type(version) is not int:
        raise RemoteFormatError(f'{where} is not a dimpledb bundle: its format is not '
                                '"dimpledb-bundle" or its version not an integer')
    if version > BUNDLE_VERSION:
        raise RemoteFormatError(f"{where} has bundle format version {version}, which this "
                                f"release does not read (it reads 1 to {BUNDLE_VERSION}): "
                                "upgrade dimpledb-sa to read it")
    if version != BUNDLE_VERSION:  # formats 1 and 2 are arrays, never such an object
        raise RemoteFormatError(f"{where} is an object of bundle format version {version}: "
                                f"only version {BUNDLE_VERSION} is an object")
    if doc["author"] != author:
        raise RemoteFormatError(f"{where} names another author than {author}, the folder's "
                                "it lies in")
    return decode_transactions(doc["transactions"], author, where)


def decode_piece(data: bytes, author: str, where: str) -> list[TxRecord]:
    """Transactions (an array's JSON, ``[{"id": ..., "runs": [...]}, ...]``) of a version-2
    snapshot in ``author``'s folder, checked as :func:`decode_transactions` checks them.
    Raises ``RemoteFormatError``."""
    return decode_transactions(load_json(data, where), author, where)


def decode_transactions(doc: Any, author: str, where: str) -> list[TxRecord]:
    """Parsed transactions (``[{"id": ..., "runs": [...]}, ...]``: a version-2 snapshot's,
    a format-3 bundle's) of ``author``, checked: canonical ids in ascending order,
    believable (see :func:`~dimpledb_sa.core.clock.id_problem`), runs of six fields whose
    names are distinct non-empty strings with one old and one new value each, in ascending
    id order within a transaction, no change id twice, no counter overflow, values nested
    at most :data:`~dimpledb_sa.core.values.MAX_VALUE_DEPTH` deep. Raises
    ``RemoteFormatError``."""
    if type(doc) is not list:
        raise RemoteFormatError(f"{where}: transactions is not a list")
    out: list[TxRecord] = []
    names_text: dict[tuple[str, ...], str] = {}
    ids: list[str] = []
    spans: list[tuple[str, str]] = []
    prev = ""
    for tx in doc:
        if type(tx) is not dict or len(tx) != 2 or "id" not in tx or type(tx.get("runs")) \
                is not list:
            raise RemoteFormatError(f"{where}: a transaction is not "
                                    '{"id": ..., "runs": [...]}')
        tid = tx["id"]
        if not is_uuid(tid) or tid <= prev:
            raise RemoteFormatError(f"{where}: transaction id {tid!s:.60} is not a "
                                    "canonical UUID after the one before")
        prev = tid
        ids.append(tid)
        runs, count, newest, lasts = _runs(tx["runs"], tid, names_text, where)
        ids += runs.firsts
        ids.append(newest)
        spans += zip(runs.firsts, lasts, strict=True)
        # TxRecord names a list; every reader of a transaction's changes only iterates,
        # indexes, slices or measures them, which this sequence does alike
        out.append((tid, author, PackedChanges(runs, count, newest)))  # type: ignore[arg-type]
    _check_ids(ids, where)
    spans.sort()
    if not all(map(gt, map(_FIRST, spans[1:]), map(_LAST, spans))):
        raise RemoteFormatError(f"{where}: the id ranges of two runs overlap (every change "
                                "id appears once, and each run's ids lie between its first "
                                "and last, with no other run's inside)")
    return out


def _runs(runs: Any, tid: str, names_text: dict[tuple[str, ...], str], where: str
          ) -> tuple[Runs, int, str, list[str]]:
    """One transaction's runs checked and decoded column by column: its packed rows (their
    values as parsed), how many changes, its newest id and each run's last id (the first
    ids still to be checked as believable ids by the caller)."""
    if not runs:
        return Runs([], [], [], [], [], [], []), 0, tid, []
    bad = RemoteFormatError(f"{where}: transaction {tid} has a run that is not six fields "
                            "[first_id, entity_type, entity_id, names, olds, news] with "
                            "canonical ids, non-empty names and as many values as names")
    if set(map(type, runs)) != {list} or list(map(len, runs)).count(6) != len(runs):
        raise bad
    firsts, etypes, eids, namess, oldss, newss = zip(*runs, strict=True)
    if set(map(type, namess)) | set(map(type, oldss)) | set(map(type, newss)) != {list}:
        raise bad
    lens = list(map(len, namess))
    if 0 in lens or lens != list(map(len, oldss)) or lens != list(map(len, newss)):
        raise bad
    n = len(firsts)
    try:
        if canonical_uuids(firsts) is None or "" in etypes or "" in eids:
            raise bad
        "".join(etypes)  # TypeError unless all are strings
        "".join(eids)
        every = "\0".join(chain.from_iterable(namess))  # (also TypeError)
    except TypeError:
        raise bad from None
    # the common case, one names list: when no name holds the separator, the joined
    # names of runs of as many names each can be read back only one way
    first = "\0".join(namess[0])
    same = (lens.count(lens[0]) == n and every.count("\0") == sum(lens) - 1
            and every == "\0".join([first] * n))
    keys = [tuple(namess[0])] * n if same else list(map(tuple, namess))
    new_keys = set(keys).difference(names_text)
    for key in new_keys:
        if not all(type(n) is str and n for n in key) or len(set(key)) != len(key):
            raise RemoteFormatError(f"{where}: transaction {tid} has a run whose names are "
                                    "not distinct non-empty strings")
        names_text[key] = _dumps(list(key))
    # the counter's last field after each run (the 12 bits opening the last group) plus
    # one: when it stays within those bits (the common case) only that field moves
    ends = list(map(add, map(int, map(_LOW, firsts), repeat(16)), lens))
    over = max(ends) > 0x1000
    lasts = list(map("".join, zip(
        map(_HEAD, firsts), map(_LAST_HEX.__getitem__, map(min, ends, repeat(0x1000)) if over
                                else ends), map(_TAIL, firsts), strict=True)))
    if over:  # the runs that move other counter fields too, one by one
        for i in compress(range(len(ends)), map(gt, ends, repeat(0x1000))):
            lasts[i] = _run_last(firsts[i], lens[i], where)
    if not all(map(lt, lasts, firsts[1:])):
        raise RemoteFormatError(f"{where}: transaction {tid} has runs out of id order or "
                                "sharing ids")
    # (old values all null, the common case, hold no array or object)
    for arrays in ((newss,) if list(map(list.count, oldss, repeat(None))) == lens
                   else (oldss, newss)):
        found = set(map(type, chain.from_iterable(arrays)))
        if (list in found or dict in found) and any(map(_too_deep, arrays)):
            raise RemoteFormatError(f"{where}: a value nests more than "
                                    f"{MAX_VALUE_DEPTH} arrays/objects")
    names = [names_text[keys[0]]] * n if same else list(map(names_text.__getitem__, keys))
    return (Runs(list(firsts), [tid] * n, list(etypes), list(eids), names, list(oldss),
                 list(newss)), sum(lens), max(tid, max(lasts)), lasts)


_FIRST = itemgetter(0)
_LAST = itemgetter(1)
_LOW = itemgetter(slice(24, 27))
_HEAD = itemgetter(slice(None, 24))
_TAIL = itemgetter(slice(27, None))
_LAST_HEX = ["", *_HEX3]
"""``_LAST_HEX[k]`` is ``_HEX3[k - 1]``: the last field of a run that ends before ``k``."""


def _run_last(first: str, n: int, where: str) -> str:
    try:
        return run_ids(first, n)[-1]
    except ValueError as e:
        raise RemoteFormatError(f"{where}: {e}") from e


def _too_deep(values: list[Any]) -> bool:
    return any(type(v) in (list, dict) and value_depth(v) > MAX_VALUE_DEPTH for v in values)


def _check_ids(ids: list[str], where: str) -> None:
    """Every id canonical (checked by the caller) and believable: the version and variant
    digits of all at once, then the smallest and the largest."""
    if not ids:
        return
    n = len(ids)
    raw = "".join(ids).encode("ascii")
    if (raw[14::36] == b"7" * n and not raw[19::36].translate(None, b"89ab")
            and id_problem(min(ids)) is None and id_problem(max(ids)) is None):
        return
    for value in ids:
        problem = id_problem(value)
        if problem is not None:
            raise RemoteFormatError(f"{where}: id {value} is not believable: {problem}")
