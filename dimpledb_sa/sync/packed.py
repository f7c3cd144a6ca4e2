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
from collections.abc import Callable, Iterator, Sequence
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

        sample = ["a\u00e9\"", 1, 1.5, True, None, -0.0, 1e300]
        if fast(sample) == slow(sample):
            return fast
    except (TypeError, ValueError):  # another signature: the documented way
        pass
    return slow


_encode = _compact_encoder()


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
    return "[" in array_text[1:] or "{" in array_text


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
        rows: list[changelog.PackedRow] = []
        news_of: list[list[Any]] = []
        count = 0
        newest = tid
        for run in tx["runs"]:
            if type(run) is not list or len(run) != 6:
                raise RemoteFormatError(f"{where}: transaction {tid} has a run that is not "
                                        "six fields")
            first, etype, eid, names, olds, news = run
            if (type(names) is not list or type(olds) is not list or type(news) is not list
                    or not names or not len(names) == len(olds) == len(news)):
                raise RemoteFormatError(f"{where}: transaction {tid} has a run whose names "
                                        "and values do not match")
            key = tuple(names)
            text = names_text.get(key)
            if text is None:
                if (not all(type(n) is str and n for n in names)
                        or len(set(names)) != len(names)):
                    raise RemoteFormatError(f"{where}: transaction {tid} has a run whose "
                                            "names are not distinct non-empty strings")
                text = names_text[key] = _dumps(names)
            if (not is_uuid(first) or type(etype) is not str or type(eid) is not str
                    or not etype or not eid):
                raise RemoteFormatError(f"{where}: transaction {tid} has a run with a bad "
                                        "id, entity type or entity id")
            n = len(names)
            low = int(first[24:27], 16) + n - 1
            # only the counter's last field moves (the common case)
            if low < 0x1000 and first[14] == "7" and first[19] in "89ab":
                run_id = first[:24] + _HEX3[low] + first[27:]
            else:
                try:
                    run_id = run_ids(first, n)[-1]
                except ValueError as e:
                    raise RemoteFormatError(f"{where}: {e}") from e
            ids.append(first)
            if run_id > newest:
                newest = run_id
            old_text = (_NULLS.get(n) if olds.count(None) == n else None) or _array_text(olds)
            new_text = _array_text(news)
            if (_nested(old_text) and _too_deep(olds)) or (_nested(new_text) and _too_deep(news)):
                raise RemoteFormatError(f"{where}: a value nests more than "
                                        f"{MAX_VALUE_DEPTH} arrays/objects")
            rows.append((first, tid, etype, eid, text, old_text, new_text))
            news_of.append(news)
            count += n
        ids.append(newest)
        # TxRecord names a list; every reader of a transaction's changes only iterates,
        # indexes, slices or measures them, which this sequence does alike
        out.append((tid, author, PackedChanges(rows, news_of, count, newest)))  # type: ignore[arg-type]
    _check_ids(ids, where)
    return out


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
