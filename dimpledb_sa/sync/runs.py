"""Bundles decoded straight into packed runs, the change log's own rows, for the pull.

A format-1 or format-2 bundle lists one record per change (:mod:`.wire`; a format-3 one
holds the runs already, and :func:`decode_runs` hands them out as :mod:`.packed` decodes
them); the log stores the changes one
transaction makes to one entity as one packed row when their ids are consecutive clock
steps (:mod:`..core.changelog`). :func:`decode_runs` decodes a bundle as
:func:`.wire.decode_bundle` does (the same checks, the same verdict on the same bytes) and,
for a well-formed one, hands out each transaction's changes as
:class:`~.packed.PackedChanges` built column by column from the parsed values: the runs are
found by comparing whole columns (the entities, and the ids' steps on their ASCII bytes:
:func:`_steps`), each run's new values are written as one array by the C encoder of
:mod:`.packed` (as a version-2 snapshot's are), and no record per change is made. Read as
a sequence, such a transaction gives exactly the change records
:func:`.wire.decode_bundle` returns (in id order); the merge (:func:`.merge.merge`) stores
the rows as they are and plans the rows of new entities from the parsed values
(:meth:`.plan.TablePlan.new_runs`). A bundle the fast decoding does not take (anything
unusual) comes back as :func:`.wire.decode_bundle` gives it: plain change records.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from itertools import compress, repeat
from operator import ne
from typing import Any

from ..core import changelog
from ..core.changes import TxRecord
from ..core.clock import is_next_id
from ..core.runs import Runs, array_texts, old_texts
from .packed import PackedChanges
from .wire import decode_bundle

__all__ = ["decode_runs", "runs_of_columns"]


def decode_runs(data: bytes, author: str, *, name: str | None = None) -> list[TxRecord]:
    """:func:`.wire.decode_bundle`, each transaction's changes as packed runs (see the
    module docstring); raises ``RemoteFormatError`` for what it refuses."""
    return decode_bundle(data, author, name=name, runs=runs_of_columns)


def _starts(ids: tuple[str, ...], etypes: tuple[str, ...], eids: tuple[str, ...],
            tx_starts: list[int], counts: list[int]) -> list[int]:
    """Where the runs of a bundle's changes start: where a transaction or an entity starts,
    and where an id is not the one after the id before (one counter step, see
    :func:`~dimpledb_sa.core.clock.is_next_id`): what :func:`~dimpledb_sa.core.changelog.pack`
    finds. The ids (canonical UUIDs) are compared all at once (:func:`_steps`); only those
    that may carry past the counter's last field are asked one by one."""
    m = len(ids)
    if not m:
        return []
    r = range(1, m)
    fixed = {p for p, k in zip(tx_starts, counts, strict=True) if k}
    fixed.update(compress(r, map(ne, eids[1:], eids[:-1])))
    if etypes.count(etypes[0]) != m:
        fixed.update(compress(r, map(ne, etypes[1:], etypes[:-1])))
    maybe = set(compress(r, _steps(ids))).difference(fixed)
    fixed.update(i for i in maybe if not is_next_id(ids[i - 1], ids[i]))
    return sorted(fixed)


def _steps(ids: tuple[str, ...]) -> bytes:
    """For each id but the first, a zero byte when it is the id before with the counter's
    last field (characters 24-26, before the 36 random bits) one more, without a carry
    (everything else the same), else a nonzero byte. Computed on the ids' ASCII bytes
    (36 per id) with whole-column copies and integer arithmetic, no step per id."""
    m = len(ids)
    if m < 2:
        return b""
    raw = "".join(ids).encode("ascii")
    # the 33 other characters of each id, then each byte XOR the one of the id before
    rest = bytearray(33 * m)
    for c in range(36):
        if not 24 <= c < 27:
            rest[c - 3 * (c >= 27)::33] = raw[c::36]
    diff = (int.from_bytes(rest[33:], "big") ^ int.from_bytes(rest[:-33], "big")
            ).to_bytes(33 * (m - 1), "big")
    flags = 0
    for c in range(33):
        flags |= int.from_bytes(diff[c::33], "big")
    # the last field as a 16-bit number per id; next - before - 1 + 0x1000 per slot (each
    # in 0 .. 0x1ffe: no borrow between slots), which is 0x1000 for one step exactly
    hex4 = bytearray(b"0" * (4 * m))
    for k in range(3):
        hex4[k + 1::4] = raw[24 + k::36]
    low = bytes.fromhex(hex4.decode("ascii"))
    bias = int.from_bytes(b"\x10\x00" * (m - 1), "big")
    one = int.from_bytes(b"\x00\x01" * (m - 1), "big")
    step = (int.from_bytes(low[2:], "big") + bias - int.from_bytes(low[:-2], "big") - one
            ) ^ bias
    off = step.to_bytes(2 * (m - 1), "big")
    flags |= int.from_bytes(off[0::2], "big") | int.from_bytes(off[1::2], "big")
    return flags.to_bytes(m - 1, "big")




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
    starts = _starts(ids, etypes, eids, tx_starts, counts)
    ends = [*starts[1:], m]
    slices = list(map(slice, starts, ends))
    keys = list(map(attrs.__getitem__, slices))
    names_text = {key: json.dumps(list(key)) for key in set(keys)}
    names_col = list(map(names_text.__getitem__, keys))
    olds_col = list(map(list, map(olds.__getitem__, slices)))
    news_col = list(map(list, map(news.__getitem__, slices)))
    old_col_texts = old_texts(olds_col)
    new_texts = array_texts(news_col)
    firsts = list(map(ids.__getitem__, starts))
    run_types = list(map(etypes.__getitem__, starts))
    run_eids = list(map(eids.__getitem__, starts))
    out: list[TxRecord] = []
    r = 0
    for tid, start, k in zip(tids, tx_starts, counts, strict=True):
        j = bisect_left(starts, start + k, r)
        txs = list(repeat(tid, j - r))
        runs = Runs(firsts[r:j], txs, run_types[r:j], run_eids[r:j], names_col[r:j],
                    olds_col[r:j], news_col[r:j])
        rows: list[changelog.PackedRow] = list(zip(
            runs.firsts, txs, runs.types, runs.entities, runs.names, old_col_texts[r:j],
            new_texts[r:j], strict=True))
        newest = max(tid, max(ids[start:start + k])) if k else tid
        # TxRecord names a list; every reader of a transaction's changes only iterates,
        # indexes, slices or measures them, which this sequence does alike
        out.append((tid, author, PackedChanges(runs, k, newest, rows)))  # type: ignore[arg-type]
        r = j
    return out
