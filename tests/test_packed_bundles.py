"""Bundle format 3 (``sync.packed``: ``encode_bundle_runs`` / ``decode_bundle_runs``, read
through ``wire.decode_bundle``): random transactions written as runs read back as exactly
the change records format 2 gives, merge to the same rows and log on either path, and
every unsound format-3 bundle is refused with a ``RemoteFormatError``, quarantined on a
remote while format-1, format-2 and format-3 bundles next to it merge."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Remote
from databases import Databases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Note
from sqlalchemy import select
from syncworld import Device, Devices, Ticker, device_set, memory_devices, titles, write_file

import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, schema
from dimpledb_sa.core.changes import ChangeRow, TxRecord
from dimpledb_sa.core.clock import HybridClock, offset_id
from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.sync import packed
from dimpledb_sa.sync.merge import APPLY_ERRORS, MergeResult, merge
from dimpledb_sa.sync.runs import decode_runs
from dimpledb_sa.sync.wire import (
    BundleInfo,
    bundle_name,
    decode_bundle,
    encode_bundle,
    encode_manifest,
    is_bundle_name,
    manifest_with,
    pack_bundle,
    utc_now_iso,
)

AUTHOR = str(uuid.UUID(int=(0x0190 << 112) | (7 << 76) | (2 << 62) | 9))
_NOTE = ["id", "title", "body", "done", "rank"]
_TABLES = {"note": _NOTE, "tag": ["id", "word"], "ghost": ["id", "word"]}
_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                max_size=6)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                     st.floats(allow_nan=False, allow_infinity=False), _TEXT)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=3)
_GROUP = st.tuples(st.sampled_from(sorted(_TABLES)), st.integers(0, 2),
                   st.sampled_from(["insert", "update", "delete"]), st.integers(1, 4),
                   st.lists(_VALUES, min_size=5, max_size=5))
_TX = st.tuples(st.lists(_GROUP, min_size=0, max_size=4),
                st.sampled_from(["consecutive", "gaps", "carry"]))


def _entity(etype: str, k: int) -> str:
    return str(uuid.UUID(int=(sorted(_TABLES).index(etype) << 64) | k | (7 << 76) | (2 << 62)))


def _forge(specs: list[tuple[list[Any], str]]) -> list[TxRecord]:
    """Transactions of ``specs``: per group an insert (every column), an update (some),
    a delete (the key to null) or a re-insert, several groups of one entity in one
    transaction making several runs; ids consecutive, with gaps or carrying the counter."""
    clock = HybridClock(now_ns=Ticker())
    out: list[TxRecord] = []
    for groups, mode in specs:
        changes: list[tuple[str, str, str, Any]] = []
        for etype, k, kind, width, values in groups:
            names, eid = _TABLES[etype], _entity(etype, k)
            if kind == "delete":
                changes.append((etype, eid, "id", None))
            else:
                cols = names if kind == "insert" else names[1 : 1 + width]
                changes += [(etype, eid, c, eid if c == "id" else v)
                            for c, v in zip(cols, values, strict=False)]
        tx = clock.reserve(1)[0]
        if mode == "gaps":
            ids = [clock.reserve(1 + i % 2)[-1] for i in range(len(changes))]
        else:
            first = clock.reserve(len(changes) + 8)[0]
            if mode == "carry":
                first = first[:24] + "ffe" + first[27:]
            ids = [offset_id(first, i) for i in range(len(changes))]
        rows: list[ChangeRow] = [
            (cid, tx, etype, eid, a, None, None if v is None else json.dumps(v))
            for cid, (etype, eid, a, v) in zip(ids, changes, strict=True)]
        out.append((tx, AUTHOR, sorted(rows)))
    return sorted(out)


def _format3(txs: list[TxRecord]) -> bytes:
    return packed.pack_bundle_runs(AUTHOR, [
        (tx, packed.in_run_order(changelog.pack(changes))) for tx, _, changes in txs])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TX, min_size=1, max_size=3))
def test_format_3_decodes_to_the_change_records_of_format_2(specs: list[Any]) -> None:
    txs = _forge(specs)
    name = bundle_name(txs[0][0], txs[-1][0])
    two = decode_bundle(pack_bundle(txs), AUTHOR, name=name)
    three = decode_bundle(_format3(txs), AUTHOR, name=name)
    assert two == txs
    assert [tx[:2] for tx in three] == [tx[:2] for tx in txs]
    assert [list(tx[2]) for tx in three] == [tx[2] for tx in txs]
    assert all(packed.packed_of(tx) is not None for tx in three)
    assert [list(tx[2]) for tx in decode_runs(_format3(txs), AUTHOR)] == [t[2] for t in txs]


@pytest.fixture
def mem_devs(tmp_path: Path, database: str, databases: Databases) -> Iterator[Devices]:
    with memory_devices(tmp_path, "fmt3", database=database, databases=databases) as d:
        yield d


def _merged(dev: Device, txs: list[TxRecord]) -> tuple[Any, ...]:
    try:
        with dev.db.engine.begin() as conn:
            result: MergeResult = merge(dev.db.replica, conn, txs)
        outcome: tuple[Any, ...] = (result.stored, result.held, sorted(result.tables),
                                    result.applied)
    except APPLY_ERRORS as exc:
        outcome = (type(exc).__name__,)
    with dev.db.engine.connect() as conn:
        held = sorted(tuple(r) for r in conn.execute(select(schema.held)))
    return outcome, dev.snapshot(), dev.log(), held


def test_merging_format_3_leaves_what_merging_format_2_leaves(mem_devs: Devices,
                                                               database: str) -> None:
    """On SQLite and PostgreSQL: the general merge of format 2's change records, the
    pull's runs of a format-2 bundle and a format-3 bundle's runs give the same outcome,
    rows, log and held changes, before and after a second bundle updating and deleting."""
    seen = 0

    @settings(max_examples=4 if database == "sqlite" else 1, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow,
                                     HealthCheck.function_scoped_fixture])
    @given(st.lists(_TX, min_size=1, max_size=3), st.lists(_TX, min_size=1, max_size=3))
    def check(first: list[Any], second: list[Any]) -> None:
        nonlocal seen
        txs = _forge(first + second)
        parts = [txs[: len(first)], txs[len(first) :]]
        outcomes = []
        for how in ("general", "runs", "format3"):
            seen += 1
            dev = mem_devs.new(f"{how}{seen}")
            got = []
            for part in parts:
                decoded = (decode_bundle(pack_bundle(part), AUTHOR) if how == "general"
                           else decode_runs(pack_bundle(part), AUTHOR) if how == "runs"
                           else decode_runs(_format3(part), AUTHOR))
                got.append(_merged(dev, decoded))
            outcomes.append(got)
        assert outcomes[0] == outcomes[1] == outcomes[2]

    check()


# --------------------------------------------------------------------------- hostile input

A = "0190aaaa-0000-7000-8000-000000000003"
B = "0190aaaa-0000-7000-8000-002000000005"
TX1 = "0190aaaa-0000-7000-8000-000000000001"
TX2 = "0190aaaa-0000-7000-8000-00f000000009"
RUN_A = [A, "note", "n1", ["id", "title"], [None, None], ["n1", "t"]]
RUN_B = [B, "note", "n2", ["id"], [None], ["n2"]]


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": "dimpledb-bundle", "version": 3, "author": AUTHOR,
                           "transactions": [{"id": TX1, "runs": [RUN_A, RUN_B]}]}
    doc.update(over)
    return doc


def _decode(doc: Any, *, name: str | None = None) -> list[TxRecord]:
    return decode_bundle(gzip.compress(json.dumps(doc).encode()), AUTHOR, name=name)


def test_a_sound_format_3_bundle_reads() -> None:
    [(tx, author, changes)] = _decode(_doc(), name=bundle_name(TX1, TX1))
    assert (tx, author) == (TX1, AUTHOR)
    assert list(changes) == [(A, TX1, "note", "n1", "id", None, '"n1"'),
                             (offset_id(A, 1), TX1, "note", "n1", "title", None, '"t"'),
                             (B, TX1, "note", "n2", "id", None, '"n2"')]
    assert _decode(_doc(transactions=[])) == []


DEEP: Any = 1
for _ in range(70):
    DEEP = [DEEP]
OVERFLOW = "0190aaaa-0000-7fff-bfff-fff000000003"


@pytest.mark.parametrize(("doc", "match"), [
    ([{"id": TX1, "runs": [RUN_A]}], "lacks field"),  # an array of runs: no format's
    (_doc(format="dimpledb-snapshot"), "not a dimpledb bundle"),
    (_doc(version=4), "version 4.*upgrade"),
    (_doc(version=2), "version 2: only version 3 is an object"),
    (_doc(version="3"), "not a dimpledb bundle"),
    (_doc(version=True), "not a dimpledb bundle"),
    (_doc(author=str(uuid.uuid4())), "another author"),
    ({**_doc(), "more": 1}, "exactly the fields"),
    ({k: v for k, v in _doc().items() if k != "author"}, "exactly the fields"),
    (_doc(transactions={"id": TX1}), "not a list"),
    (_doc(transactions=[{"id": TX1, "runs": [RUN_B, RUN_A]}]), "out of id order"),
    (_doc(transactions=[{"id": TX1, "runs": [RUN_A, [offset_id(A, 1), *RUN_B[1:]]]}]),
     "out of id order"),
    (_doc(transactions=[{"id": TX1, "runs": [RUN_A]}, {"id": TX2, "runs": [RUN_A]}]),
     "id ranges of two runs overlap"),
    (_doc(transactions=[{"id": TX2, "runs": []}, {"id": TX1, "runs": []}]), "after the one"),
    (_doc(transactions=[{"id": TX1, "runs": []}, {"id": TX1, "runs": []}]), "after the one"),
    (_doc(transactions=[{"id": TX1.upper(), "runs": []}]), "canonical"),
    (_doc(transactions=[{"id": TX1, "runs": [[A.upper(), *RUN_A[1:]]]}]), "six fields"),
    (_doc(transactions=[{"id": TX1, "runs": [[A, "note", "n", ["id", "x"], [None], ["n"]]]}]),
     "six fields"),
    (_doc(transactions=[{"id": TX1, "runs": [[A, "note", "n", ["id"], [None], ["n"], 1]]}]),
     "six fields"),
    (_doc(transactions=[{"id": TX1, "runs": [[A, "note", "n", ["x", "x"], [1, 1], [2, 2]]]}]),
     "distinct"),
    (_doc(transactions=[{"id": TX1, "runs": [[A, "note", "n", ["x"], [None], [DEEP]]]}]),
     "nests"),
    (_doc(transactions=[{"id": TX1, "runs": [[A, "note", "n", ["x"], [None], ["a\0b"]]]}]),
     "NUL"),
    (_doc(transactions=[{"id": TX1, "runs": [[OVERFLOW, "note", "n", ["id", "x"], [None, 1],
                                              ["n", 2]]]}]), "overflow"),
    (_doc(transactions=[{"id": "0000aaaa-0000-7000-8000-000000000001", "runs": []}]),
     "not believable"),
    (_doc(transactions=[{"id": TX1, "runs": [RUN_A], "author": AUTHOR}]), "transaction"),
])
def test_an_unsound_format_3_bundle_is_refused(doc: Any, match: str) -> None:
    with pytest.raises(RemoteFormatError, match=match):
        _decode(doc)


def test_format_3_must_be_gzipped_and_match_its_name() -> None:
    with pytest.raises(RemoteFormatError, match="nor a gzipped format-3"):
        decode_bundle(json.dumps(_doc()).encode(), AUTHOR)
    with pytest.raises(RemoteFormatError, match="not the ones its name states"):
        _decode(_doc(), name=bundle_name(TX1, TX2))
    with pytest.raises(RemoteFormatError, match="holds no transactions"):
        _decode(_doc(transactions=[]), name=bundle_name(TX1, TX1))


def test_the_writer_keeps_runs_in_order_and_apart() -> None:
    """Rows the log never makes but a reader would refuse (out of order, overlapping, one
    twice) are written as sound runs of the same changes."""
    rows = changelog.pack([(A, TX1, "note", "n1", "id", None, '"n1"'),
                           (offset_id(A, 1), TX1, "note", "n1", "title", None, '"t"'),
                           (B, TX1, "note", "n2", "id", None, '"n2"')])
    changes = changelog.expand_all(rows)
    for given_rows in (rows[::-1], [*rows, rows[0]], [rows[0], (offset_id(A, 1), *rows[0][1:4],
                                                               '["title"]', "[null]", '["t"]')]):
        ordered = packed.in_run_order(given_rows)
        [(_, _, got)] = decode_bundle(packed.pack_bundle_runs(AUTHOR, [(TX1, ordered)]), AUTHOR)
        assert sorted(set(got)) == sorted(set(changelog.expand_all(given_rows)))
    assert packed.in_run_order(rows) == sorted(rows)
    assert changelog.expand_all(packed.in_run_order(rows)) == changes
    with pytest.raises(ValueError, match="ascending"):
        packed.encode_bundle_runs(AUTHOR, [(TX2, rows), (TX1, rows)])


# --------------------------------------------------------------------------- on a remote


def _write(devs: Devices, remote: Remote, author: str, bundles: list[tuple[str, str, bytes]]
           ) -> None:
    """``bundles`` ((first, last, plaintext) each) encrypted into ``author``'s folder and
    listed in its manifest."""
    from pyrage import encrypt, x25519

    key = x25519.Identity.from_str(devs.identity).to_public()
    fs, root = remote.filesystem()
    manifest = None
    for first, last, plain in bundles:
        name = bundle_name(first, last)
        write_file(fs, f"{root}/{author}/{name}", bytes(encrypt(plain, [key])))
        count = 1 if first == last else 2
        manifest = manifest_with(manifest, author, BundleInfo(name, first, last, count,
                                                              utc_now_iso()))
    assert manifest is not None
    write_file(fs, f"{root}/{author}/dimple_db.json", encode_manifest(manifest))


def _note_tx(clock: HybridClock, author: str, title: str) -> TxRecord:
    eid = dimple.new_id()
    tx, first = clock.reserve_runs([1, 5])
    values = [json.dumps(eid), json.dumps(title), "null", "false", "1"]
    return (tx, author, [(offset_id(first, k), tx, "note", eid, a, None, v)
                         for k, (a, v) in enumerate(zip(_NOTE, values, strict=True))])


def _runs_of(author: str, txs: list[TxRecord]) -> bytes:
    return packed.pack_bundle_runs(author, [
        (tx, packed.in_run_order(changelog.pack(changes))) for tx, _, changes in txs])


@pytest.mark.parametrize("remote", ["memory", "local"], indirect=True)
def test_formats_1_2_and_3_read_side_by_side_and_a_hostile_one_is_quarantined(
        devs: Devices, remote: Remote) -> None:
    r = devs.new("reader")
    clock = HybridClock()
    author, other = dimple.new_id(), dimple.new_id()
    t = [_note_tx(clock, author, f"n{i}") for i in range(5)]
    hostile = json.loads(gzip.decompress(_runs_of(author, [t[3]])))
    hostile["transactions"][0]["runs"][0][3] = ["id", "id", "body", "done", "rank"]
    _write(devs, remote, author, [
        (t[0][0], t[0][0], encode_bundle([t[0]])),  # format 1
        (t[1][0], t[1][0], pack_bundle([t[1]])),  # format 2
        (t[2][0], t[2][0], _runs_of(author, [t[2]])),  # format 3
        (t[3][0], t[3][0], gzip.compress(json.dumps(hostile).encode())),
        (t[4][0], t[4][0], _runs_of(author, [t[4]])),
    ])
    _write(devs, remote, other, [(u[0], u[0], _runs_of(other, [u]))
                                 for u in [_note_tx(clock, other, "other")]])
    with pytest.raises(dimple.RemoteFormatError) as info:
        r.sync()
    assert info.value.report is not None and info.value.report.quarantined == 1
    assert titles(r) == ["n0", "n1", "n2", "n4", "other"]
    with r.db.engine.connect() as conn:
        u = schema.unreadable
        assert [(x.filename, x.reason) for x in conn.execute(select(u))] == [
            (bundle_name(t[3][0], t[3][0]), "format")]
    assert len(r.rows(Note)) == 5


def test_a_device_set_to_format_2_writes_what_earlier_releases_read(tmp_path: Path) -> None:
    """``storage.bundle_format = 2`` (a rolling upgrade): its pushes are format-2 bundles
    (a gzipped JSON array of change records), which other devices merge as ever; an
    unknown format (or a float) is refused with the setting's name before anything is
    uploaded, and nothing is lost."""
    remote = tmp_path / "remote"
    with device_set(tmp_path, str(remote), encryption=False) as devs:
        w, r = devs.new("writer"), devs.new("reader")
        w.db.storage.bundle_format = 2
        w.add(Note(title="old-style"))
        assert w.sync().pushed == 1
        [path] = [p for p in (remote / w.db.author_id).iterdir() if is_bundle_name(p.name)]
        doc = json.loads(gzip.decompress(path.read_bytes()))
        assert isinstance(doc, list) and doc[0]["changes"][1]["new_value"] == "old-style"
        r.sync()
        assert titles(r) == ["old-style"]
        w.add(Note(title="waits"))
        for bad in (4, 3.0):
            w.db.storage.bundle_format = bad  # type: ignore[assignment]
            with pytest.raises(dimple.ConfigurationError, match="bundle_format"):
                w.sync()
        w.db.storage.bundle_format = 3
        assert w.sync().pushed == 1
        r.sync()
        assert titles(r) == ["old-style", "waits"]
