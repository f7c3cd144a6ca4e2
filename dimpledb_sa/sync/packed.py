"""Snapshot version 2's transactions: packed runs, as the change log stores them.

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
read as one, so that the bulk bootstrap (:mod:`.bootstrap`) stores the rows and the parsed
values as they are, and every other reader of transactions sees plain change records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, pairwise, repeat
from json.encoder import encode_basestring_ascii as _esc
from typing import Any, overload

from ..core import changelog
from ..core.changes import ChangeRow, TxRecord
from ..core.clock import id_problem, run_ids
from ..core.errors import RemoteFormatError
from ..core.values import MAX_VALUE_DEPTH, json_texts, value_depth
from .wire import is_uuid, load_json

__all__ = ["PackedChanges", "decode_piece", "encode_runs", "packed_of"]

_dumps = json.dumps
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
_HEX3 = ["%03x" % i for i in range(0x1000)]  # noqa: UP031
_NULLS = {n: "[" + ",".join(["null"] * n) + "]" for n in range(1, 257)}


class PackedChanges(Sequence[ChangeRow]):
    """One transaction's changes as packed rows of the log (``rows``) with each row's new
    values parsed (``news``), expanded into change records (in id order) the first time
    they are read as a sequence; ``len``, :attr:`size` and :attr:`newest` need no
    expansion."""

    __slots__ = ("_expanded", "newest", "news", "rows", "size")

    def __init__(self, rows: list[changelog.PackedRow], news: list[list[Any]], size: int,
                 newest: str) -> None:
        self.rows = rows
        self.news = news
        self.size = size
        """How many changes."""
        self.newest = newest
        """The largest change id of the transaction."""
        self._expanded: list[ChangeRow] | None = None

    def expanded(self) -> list[ChangeRow]:
        """The change records, in id order (made once)."""
        if self._expanded is None:
            self._expanded = sorted(changelog.expand_all(self.rows))
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
        return f"PackedChanges({self.size} changes in {len(self.rows)} runs)"


def packed_of(tx: TxRecord) -> PackedChanges | None:
    """The packed changes of a transaction decoded by :func:`decode_piece` (else ``None``)."""
    changes: object = tx[2]
    return changes if isinstance(changes, PackedChanges) else None


def encode_runs(tx: str, rows: Sequence[changelog.PackedRow]) -> str:
    """The JSON of one transaction from its packed rows (text form: the arrays are JSON)."""
    runs = ",".join([f'["{first}",{_esc(etype)},{_esc(eid)},{names},{olds},{news}]'
                     for first, _, etype, eid, names, olds, news in rows])
    return f'{{"id":"{tx}","runs":[{runs}]}}'


def _compact_encoder() -> Callable[[list[Any]], str]:
    """``json.dumps`` with a bare comma between items, made once: the C encoder itself
    where ``json`` has it (a documented ``JSONEncoder`` otherwise, or if it disagrees)."""
    encoder = json.JSONEncoder(separators=(",", ": "))
    slow = encoder.encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return slow
    try:
        enc = make(None, encoder.default, _esc, None, ": ", ",", False, False, True)

        def fast(values: list[Any]) -> str:
            return "".join(enc(values, 0))

        fast.c_encoder = enc  # type: ignore[attr-defined]
        sample = ["a\u00e9\"", 1, 1.5, True, None, -0.0, 1e300]
        if fast(sample) == slow(sample):
            return fast
    except (TypeError, ValueError):  # another signature: the documented way
        pass
    return slow


_encode = _compact_encoder()
_C_ENCODER = getattr(_encode, "c_encoder", None)


def _encode_many(arrays: Sequence[list[Any]]) -> list[str]:
    """:data:`_encode` of each of ``arrays`` (the C encoder mapped over them when there is
    one); a text with a bracket past its first is made canonical by the caller."""
    if _C_ENCODER is not None:
        return list(map("".join, map(_C_ENCODER, arrays, repeat(0))))
    return list(map(_encode, arrays))


def _array_text(values: list[Any]) -> str:
    """The canonical JSON text of an array of JSON values (each ``json.dumps(value)``,
    joined by commas): one call for an array of scalars (no container, so no other
    separator is written)."""
    text = _encode(values)
    if _nested(text):  # a nested value, or a string holding a bracket
        return changelog.json_array(json_texts(values))
    return text


def _nested(array_text: str) -> bool:
    """Whether an array's JSON text may hold an array or object (it has a bracket or brace
    past its opening one)."""
    return array_text.find("[", 1) >= 0 or "{" in array_text


def decode_piece(data: bytes, author: str, where: str) -> list[TxRecord]:
    """Transactions (an array's JSON, ``[{"id": ..., "runs": [...]}, ...]``) of a version-2
    snapshot in ``author``'s folder, checked: canonical ids in ascending order, believable
    (see :func:`~dimpledb_sa.core.clock.id_problem`), runs of six fields whose names are
    distinct non-empty strings with one old and one new value each, values nested at most
    :data:`~dimpledb_sa.core.values.MAX_VALUE_DEPTH` deep. Raises ``RemoteFormatError``."""
    doc = load_json(data, where)
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
        rows, news_of, count, newest, lasts = _runs(tx["runs"], tid, names_text, where)
        ids += [r[0] for r in rows]
        ids.append(newest)
        spans += zip([r[0] for r in rows], lasts, strict=True)
        # TxRecord names a list; every reader of a transaction's changes only iterates,
        # indexes, slices or measures them, which this sequence does alike
        out.append((tid, author, PackedChanges(rows, news_of, count, newest)))  # type: ignore[arg-type]
    _check_ids(ids, where)
    spans.sort()
    if any(b[0] <= a[1] for a, b in pairwise(spans)):
        raise RemoteFormatError(f"{where}: two runs share a change id (every change id "
                                "appears once in a snapshot)")
    return out


def _runs(runs: Any, tid: str, names_text: dict[tuple[str, ...], str], where: str
          ) -> tuple[list[changelog.PackedRow], list[list[Any]], int, str, list[str]]:
    """One transaction's runs checked and decoded column by column: its packed rows (text
    form), each row's new values as parsed, how many changes, its newest id and each run's
    last id (the first ids still to be checked as ids by the caller)."""
    if not runs:
        return [], [], 0, tid, []
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
    try:
        if not all(map(_UUID, firsts)) or "" in etypes or "" in eids:
            raise bad
        "".join(etypes)  # TypeError unless all are strings
        "".join(eids)
        "".join(chain.from_iterable(namess))
    except TypeError:
        raise bad from None
    keys = list(map(tuple, namess))
    for key in set(keys).difference(names_text):
        if not all(type(n) is str and n for n in key) or len(set(key)) != len(key):
            raise RemoteFormatError(f"{where}: transaction {tid} has a run whose names are "
                                    "not distinct non-empty strings")
        names_text[key] = _dumps(list(key))
    lows = [int(f[24:27], 16) + n - 1 for f, n in zip(firsts, lens, strict=True)]
    # only the counter's last field moves (the common case; the caller checks the ids)
    lasts = [f[:24] + _HEX3[low] + f[27:] if low < 0x1000 else _run_last(f, n, where)
             for f, n, low in zip(firsts, lens, lows, strict=True)]
    if any(b <= a for a, b in zip(lasts, firsts[1:], strict=False)):
        raise RemoteFormatError(f"{where}: transaction {tid} has runs out of id order or "
                                "sharing ids")
    nulls = list(map(list.count, oldss, repeat(None)))
    old_texts = [(_NULLS.get(n) if c == n else None) or _array_text(o)
                 for o, n, c in zip(oldss, lens, nulls, strict=True)]
    new_texts = _encode_many(newss)
    # (what _nested asks, inline: one pass over the texts)
    for i in [i for i, t in enumerate(new_texts) if "{" in t or t.find("[", 1) >= 0]:
        new_texts[i] = _array_text(newss[i])
        if _too_deep(newss[i]):
            raise RemoteFormatError(f"{where}: a value nests more than "
                                    f"{MAX_VALUE_DEPTH} arrays/objects")
    for i in [i for i, t in enumerate(old_texts) if "{" in t or t.find("[", 1) >= 0]:
        if _too_deep(oldss[i]):
            raise RemoteFormatError(f"{where}: a value nests more than "
                                    f"{MAX_VALUE_DEPTH} arrays/objects")
    rows = list(zip(firsts, repeat(tid), etypes, eids, map(names_text.__getitem__, keys),
                    old_texts, new_texts, strict=False))  # all as long as firsts
    return rows, list(newss), sum(lens), max(tid, max(lasts)), lasts


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
