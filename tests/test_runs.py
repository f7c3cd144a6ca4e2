"""Tests for ``dimpledb_sa.sync.runs``: bundles decoded straight into packed runs.

On random bundles (runs of consecutive ids, ids with gaps, runs whose counter carries,
changes out of order, an entity in several runs, an attribute twice, unknown tables and
columns, values of every JSON kind and of the wrong type), the runs must hold exactly the
changes the general decoding returns, each run of consecutive ids; and merging them must
leave the database exactly as merging those changes does (rows, log, held changes, what
is reported applied). Malformed bundles get the general decoding's verdict.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from databases import Databases
from sqlalchemy import select
from syncworld import Device, Devices, Ticker, memory_devices

from dimpledb_sa.core import changelog, schema
from dimpledb_sa.core.clock import HybridClock, is_next_id, offset_id
from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.sync.merge import APPLY_ERRORS, MergeResult, merge
from dimpledb_sa.sync.packed import packed_of
from dimpledb_sa.sync.runs import _starts, _steps, decode_runs
from dimpledb_sa.sync.wire import ChangeRow, TxRecord, decode_bundle, encode_bundle

AUTHOR = str(uuid.UUID(int=(0x0190 << 112) | (7 << 76) | (2 << 62) | 7))

_TITLES = ["t", "é ü", 'q"uote', "back\\slash", "[not, an array]", "{x}", ""]
_VALUES: dict[str, list[Any]] = {
    "title": _TITLES,
    "body": [None, "b", "ünï", "[1, 2]"],
    "done": [True, False, 1, None],
    "rank": [None, 0, 7, -3, 2**40, 2.5],
    "word": ["w", "wörd"],
    "name": ["n"],
    "extra": [1, [1, [2, {"a": None}]], {"k": "v"}],
}
_ODD: dict[str, list[Any]] = {"rank": ["seven", [1]], "done": ["yes"], "title": [None, 3]}
_TABLES = {"note": ["id", "title", "body", "done", "rank"], "tag": ["id", "word"],
           "folder": ["id", "name"], "ghost": ["id", "word"]}


class _Forge:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = HybridClock(now_ns=Ticker())
        self.pool = {t: [str(uuid.uuid4()) for _ in range(4)] for t in _TABLES}

    def _group(self, odd: bool) -> list[tuple[str, str, str, Any, Any]]:
        rng = self.rng
        etype = rng.choice(["note", "note", "note", "tag", "folder", "ghost"])
        eid = rng.choice(self.pool[etype])
        names = list(_TABLES[etype])
        kind = rng.random()  # below 0.5: an insert (or a delete of the key)
        attrs = names if kind < 0.5 else rng.sample(names[1:], rng.randint(1, len(names) - 1))
        if rng.random() < 0.1:
            attrs = [*attrs, "extra"]
        if rng.random() < 0.05:
            attrs = [*attrs, attrs[-1]]  # the same attribute twice
        out = []
        for a in attrs:
            if a == "id":
                new: Any = None if rng.random() < 0.1 else eid
                if odd and rng.random() < 0.2:
                    new = str(uuid.uuid4())  # a key that is not the entity's
            else:
                choices = _VALUES.get(a, _VALUES["extra"])
                if odd and a in _ODD and rng.random() < 0.3:
                    choices = _ODD[a]
                new = rng.choice(choices)
            old = None if kind < 0.5 or rng.random() < 0.5 else rng.choice(_TITLES)
            out.append((etype, eid, a, old, new))
        return out

    def tx(self, odd: bool = False) -> TxRecord:
        rng = self.rng
        changes = [c for _ in range(rng.randint(1, 4)) for c in self._group(odd)]
        mode = rng.random()
        tx_id = self.clock.reserve(1)[0]
        if mode < 0.6:  # consecutive ids after the transaction's
            first = self.clock.reserve(len(changes))[0]
            ids = [offset_id(first, k) for k in range(len(changes))]
        elif mode < 0.8:  # gaps
            ids = [self.clock.reserve(rng.randint(1, 3))[-1] for _ in changes]
        else:  # a counter that carries past its last field
            base = self.clock.reserve(len(changes) + 8)[0]
            first = base[:24] + "ffd" + base[27:]
            ids = [offset_id(first, k) for k in range(len(changes))]
            tx_id = min(tx_id, first)
        rows: list[ChangeRow] = [
            (cid, tx_id, etype, eid, a, _json(old), _json(new))
            for cid, (etype, eid, a, old, new) in zip(ids, changes, strict=True)]
        if rng.random() < 0.2:
            rng.shuffle(rows)
        return (tx_id, AUTHOR, rows)

    def bundle(self, n: int, odd: bool = False) -> list[TxRecord]:
        return sorted((self.tx(odd) for _ in range(n)), key=lambda t: t[0])


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v)


@pytest.mark.parametrize("seed", range(24))
def test_runs_hold_exactly_the_changes_of_the_general_decoding(seed: int) -> None:
    rng = random.Random(seed)
    forge = _Forge(rng)
    txs = forge.bundle(rng.randint(1, 6))
    data = encode_bundle(txs)
    general = decode_bundle(data, AUTHOR)
    runs = decode_runs(data, AUTHOR)
    assert [tx[:2] for tx in runs] == [tx[:2] for tx in general]
    for (tid, _, changes), tx in zip(general, runs, strict=True):
        packed = packed_of(tx)
        assert packed is not None and len(packed) == len(changes)
        assert list(packed) == changes  # in the order they came
        expanded = []
        for row, news in zip(packed.rows, packed.news, strict=True):
            got = changelog.expand(row)
            assert all(is_next_id(a[0], b[0]) for a, b in pairwise(got))
            assert row[1] == tid and [json.loads(n) if n else None for n in
                                      [c[6] for c in got]] == news
            expanded += got
        assert sorted(expanded) == sorted(changes)
        assert packed.newest == max([tid, *(c[0] for c in changes)])


def _mangled(rng: random.Random, doc: list[Any]) -> list[Any]:
    tx = rng.choice(doc)
    change = rng.choice(tx["changes"])
    how = rng.randrange(7)
    if how == 0:
        del change[rng.choice(list(change))]
    elif how == 1:
        change["entity_id"] = rng.choice([3, "", None])
    elif how == 2:
        change["id"] = change["id"].upper()
    elif how == 3:
        tx["changes"].append(dict(change))  # a change id twice
    elif how == 4:
        deep: list[Any] = []
        for _ in range(rng.choice([3, 70])):
            deep = [deep]
        change["new_value"] = deep
    elif how == 5:
        change["transaction_id"] = str(uuid.uuid4())
    else:
        tx["author"] = str(uuid.uuid4())
    return doc


@pytest.mark.parametrize("seed", range(12))
def test_a_malformed_bundle_gets_the_general_verdict(seed: int) -> None:
    rng = random.Random(seed)
    doc = json.loads(encode_bundle(_Forge(rng).bundle(3)))
    data = json.dumps(_mangled(rng, doc)).encode()
    try:
        expected: Any = decode_bundle(data, AUTHOR)
    except RemoteFormatError as exc:
        with pytest.raises(RemoteFormatError) as got:
            decode_runs(data, AUTHOR)
        assert str(got.value) == str(exc)
    else:  # (a mangling that is still a sound bundle)
        assert [sorted(tx[2]) for tx in decode_runs(data, AUTHOR)] == \
            [sorted(tx[2]) for tx in expected]


@pytest.fixture
def devs(tmp_path: Path, database: str, databases: Databases) -> Iterator[Devices]:
    with memory_devices(tmp_path, "runs", database=database, databases=databases
                        ) as d:
        yield d


def _merge(dev: Device, txs: list[TxRecord]) -> tuple[Any, ...]:
    try:
        with dev.db.engine.begin() as conn:
            result: MergeResult = merge(dev.db.replica, conn, txs)
    except APPLY_ERRORS as exc:
        return (type(exc).__name__,)
    applied = sorted(result.applied_changes + changelog.expand_all(result.applied_packed))
    return result.stored, result.held, sorted(result.tables), result.applied, applied


def _state(dev: Device) -> tuple[Any, ...]:
    with dev.db.engine.connect() as conn:
        held = sorted(tuple(r) for r in conn.execute(select(schema.held)))
    return dev.snapshot(), dev.log(), held


@pytest.mark.parametrize("seed", range(8))
def test_merging_runs_leaves_what_merging_the_changes_leaves(devs: Devices, seed: int) -> None:
    rng = random.Random(seed)
    forge = _Forge(rng)
    before = forge.bundle(rng.randint(0, 4))
    data = encode_bundle(forge.bundle(rng.randint(1, 8), odd=seed % 3 == 0))
    outcomes = []
    for name, decode in (("general", decode_bundle), ("runs", decode_runs)):
        dev = devs.new(f"{name}{seed}")
        if before:
            _merge(dev, decode_bundle(encode_bundle(before), AUTHOR))
        outcomes.append((_merge(dev, decode(data, AUTHOR)), _state(dev)))
    assert outcomes[0] == outcomes[1]


def test_one_change_id_in_two_transactions_wins_in_the_order_it_came(devs: Devices) -> None:
    """Of two transactions holding the same change id (a forged author's overlapping
    bundles, the later transaction listed first), the first to arrive wins on both paths,
    as the log keeps it: no sorting by transaction reorders them."""
    clock = HybridClock(now_ns=Ticker())
    t1, t3, x = clock.reserve(3)
    pair = [encode_bundle([(t, AUTHOR, [(x, t, "note", "a", "title", None, json.dumps(v))])])
            for t, v in ((t3, "from-t3"), (t1, "from-t1"))]
    seed_tx, seed_id = clock.reserve(2)
    key_only = encode_bundle([(seed_tx, AUTHOR, [(seed_id, seed_tx, "note", "a", "id", None,
                                                  '"a"')])])
    outcomes = []
    for name, decode in (("general", decode_bundle), ("runs", decode_runs)):
        dev = devs.new(f"dup-{name}")
        _merge(dev, decode_bundle(key_only, AUTHOR))  # held: its title is required
        outcomes.append((_merge(dev, [tx for b in pair for tx in decode(b, AUTHOR)]),
                         _state(dev)))
    assert outcomes[0] == outcomes[1]
    assert '"from-t3"' in str(outcomes[1][1][1])


def _brute_steps(ids: list[str]) -> list[bool]:
    """Whether each id but the first is the one after the id before with only the counter's
    last field moving (no carry)."""
    out = []
    for a, b in pairwise(ids):
        low_a, low_b = int(a[24:27], 16), int(b[24:27], 16)
        out.append(a[:24] == b[:24] and a[27:] == b[27:] and low_b == low_a + 1)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_the_bulk_step_check_is_the_one_by_one_check(seed: int) -> None:
    rng = random.Random(seed)
    clock = HybridClock(now_ns=Ticker())
    ids: list[str] = []
    for _ in range(rng.randint(0, 40)):
        first = clock.reserve(8)[0]
        how = rng.random()
        if how < 0.3:  # near the last field's end: a carry
            first = first[:24] + rng.choice(["ffe", "fff", "ffd"]) + first[27:]
        n = rng.randint(1, 6)
        run = [offset_id(first, k) for k in range(n)]
        if how > 0.8:  # one digit elsewhere changed, or a step of two
            k = rng.randrange(n)
            i = rng.choice([3, 20, 30, 35])
            run[k] = run[k][:i] + ("0" if run[k][i] != "0" else "1") + run[k][i + 1:]
        ids += run
    if rng.random() < 0.3:
        rng.shuffle(ids)
    got = [b == 0 for b in _steps(tuple(ids))]
    assert got == _brute_steps(ids)
    starts = _starts(tuple(ids), ("t",) * len(ids), ("e",) * len(ids), [0], [len(ids)])
    assert starts == ([0] if ids else []) + [
        i for i in range(1, len(ids)) if not is_next_id(ids[i - 1], ids[i])]
