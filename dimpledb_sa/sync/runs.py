"""Bundles decoded straight into packed runs, the change log's own rows, for the pull.

A bundle lists one record per change (:mod:`.wire`); the log stores the changes one
transaction makes to one entity as one packed row when their ids are consecutive clock
steps (:mod:`..core.changelog`). :func:`decode_runs` decodes a bundle as
:func:`.wire.decode_bundle` does (the same checks, the same verdict on the same bytes) and,
for a well-formed one, hands out each transaction's changes as
:class:`~.packed.PackedChanges` built column by column from the parsed values: the runs are
found by comparing whole columns (entity, then each run's ids against the ids its first one
starts, :func:`~dimpledb_sa.core.clock.run_ids`), each run's new values are written as one
array by the C encoder, and no record per change is made. Read as a sequence, such a
transaction gives exactly the change records :func:`.wire.decode_bundle` returns (in id
order); the merge (:func:`.merge.merge`) stores the rows as they are and plans the rows of
new entities from the parsed values (:meth:`.plan.TablePlan.new_runs`). A bundle the fast
decoding does not take (anything unusual) comes back as :func:`.wire.decode_bundle` gives
it: plain change records.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from itertools import compress, repeat
from operator import ne, sub
from typing import Any

from ..core import changelog
from ..core.changes import TxRecord
from ..core.clock import is_next_id
from ..core.values import json_texts
from .packed import PackedChanges, _array_text, _encode_many, _nested
from .wire import decode_bundle

__all__ = ["decode_runs", "runs_of_columns"]

_NULLS = {n: "[" + ",".join(["null"] * n) + "]" for n in range(1, 257)}


def decode_runs(data: bytes, author: str, *, name: str | None = None) -> list[TxRecord]:
    """:func:`.wire.decode_bundle`, each transaction's changes as packed runs (see the
    module docstring); raises ``RemoteFormatError`` for what it refuses."""
    return decode_bundle(data, author, name=name, runs=runs_of_columns)


_HEX3 = ["%03x" % i for i in range(0x1000)]  # noqa: UP031


def _starts(ids: tuple[str, ...], etypes: tuple[str, ...], eids: tuple[str, ...],
            tx_starts: list[int], counts: list[int]) -> list[int]:
    """Where the runs of a bundle's changes start: where a transaction or an entity starts,
    and where an id is not the one after the id before (one counter step). An entity's
    changes are compared with the ids its first one starts: in the common case only the
    counter's last field (the 12 bits before the random ones) moves; otherwise each id is
    asked of :func:`~dimpledb_sa.core.clock.is_next_id`."""
    m = len(ids)
    r = range(1, m)
    fixed = {p for p, k in zip(tx_starts, counts, strict=True) if k}
    fixed.update(compress(r, map(ne, eids[1:], eids[:-1])))
    if etypes.count(etypes[0]) != m:
        fixed.update(compress(r, map(ne, etypes[1:], etypes[:-1])))
    bounds = sorted(fixed)
    out: list[int] = []
    hex3 = _HEX3
    for s, e in zip(bounds, [*bounds[1:], m], strict=True):
        out.append(s)
        n = e - s
        if n == 1:
            continue
        f = ids[s]
        low = int(f[24:27], 16)
        if low + n <= 0x1000:
            head, tail = f[:24], f[27:]
            if ids[s + 1:e] == tuple([head + h + tail for h in hex3[low + 1:low + n]]):
                continue
        out += [i for i in range(s + 1, e) if not is_next_id(ids[i - 1], ids[i])]
    return out


def _nulls(n: int) -> str:
    return _NULLS.get(n) or changelog.json_array([None] * n)


def runs_of_columns(author: str, tids: tuple[str, ...], counts: list[int],
                    ids: tuple[str, ...], etypes: tuple[str, ...], eids: tuple[str, ...],
                    attrs: tuple[str, ...], olds: tuple[Any, ...], news: tuple[Any, ...]
                    ) -> list[TxRecord]:
    """The transactions of a bundle's checked columns (:func:`.wire.bundle_columns`), their
    changes packed into runs (:class:`~.packed.PackedChanges`), column by column."""
    m = len(ids)
    tx_starts: list[int] = []
    pos = 0
    for k in counts:
        tx_starts.append(pos)
        pos += k
    starts = _starts(ids, etypes, eids, tx_starts, counts) if m else []
    ends = [*starts[1:], m]
    lens = list(map(sub, ends, starts))
    slices = list(map(slice, starts, ends))
    keys = list(map(attrs.__getitem__, slices))
    names_text = {key: json.dumps(list(key)) for key in set(keys)}
    names_col = list(map(names_text.__getitem__, keys))
    if olds.count(None) == m:  # inserts
        olds_col = list(map(_nulls, lens))
    else:
        olds_col = [_nulls(n) if o.count(None) == n else changelog.json_array(json_texts(o))
                    for o, n in zip(map(olds.__getitem__, slices), lens, strict=True)]
    news_col = list(map(list, map(news.__getitem__, slices)))
    new_texts = _encode_many(news_col)
    for i in [i for i, t in enumerate(new_texts) if _nested(t)]:
        new_texts[i] = _array_text(news_col[i])
    firsts = list(map(ids.__getitem__, starts))
    run_types = list(map(etypes.__getitem__, starts))
    run_eids = list(map(eids.__getitem__, starts))
    out: list[TxRecord] = []
    r = 0
    for tid, start, k in zip(tids, tx_starts, counts, strict=True):
        j = bisect_left(starts, start + k, r)
        rows: list[changelog.PackedRow] = list(zip(
            firsts[r:j], repeat(tid), run_types[r:j], run_eids[r:j], names_col[r:j],
            olds_col[r:j], new_texts[r:j], strict=False))
        newest = max(tid, max(ids[start:start + k])) if k else tid
        # TxRecord names a list; every reader of a transaction's changes only iterates,
        # indexes, slices or measures them, which this sequence does alike
        out.append((tid, author, PackedChanges(rows, news_col[r:j], k, newest)))  # type: ignore[arg-type]
        r = j
    return out
