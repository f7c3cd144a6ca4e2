"""Convergence of ``dimpledb_sa.sync`` (``run`` and ``merge``), as a property: whatever
replicas do and however their syncs interleave, after everyone has synced twice every replica
holds the same rows and the same change log, and those rows are what last-write-wins per
attribute makes of that log.

Each example makes 3 to 5 replicas (SQLite files, foreign keys on, real clocks; in the
PostgreSQL run each replica is a SQLite file or a PostgreSQL schema, drawn) in a fresh
temporary folder on a fresh ``memory://`` remote (plaintext: encryption is tested elsewhere),
then runs random inserts, updates, deletes, re-inserts (an insert of an id that was deleted)
and syncs on random replicas, over a small pool of ids so that they collide.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from databases import KINDS, Databases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Folder, Item, Note
from pgserver import PgServer
from sqlalchemy import select
from syncworld import Device, device_set

from dimpledb_sa import generate_device_key
from dimpledb_sa.core import schema
from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.sync import merge, pull
from dimpledb_sa.sync.wire import ChangeRow

NOTES = [str(uuid.UUID(int=(0x0190 << 112) | (7 << 76) | (2 << 62) | k)) for k in range(4)]
FOLDERS = [str(uuid.UUID(int=(0x0191 << 112) | (7 << 76) | (2 << 62) | k)) for k in range(2)]
ITEMS = [str(uuid.UUID(int=(0x0192 << 112) | (7 << 76) | (2 << 62) | k)) for k in range(3)]

titles = st.sampled_from(["a", "b", "c", "ünï"])
note_values = st.fixed_dictionaries({}, optional={
    "title": titles,
    # no NUL: writers refuse it at commit (PostgreSQL's text cannot hold it)
    "body": st.none() | st.text(st.characters(blacklist_characters="\x00"), max_size=3),
    "done": st.booleans(),
    "rank": st.none() | st.integers(-3, 3),
})


def ops(replicas: int) -> st.SearchStrategy[tuple[Any, ...]]:
    r = st.integers(0, replicas - 1)
    return st.one_of(
        st.tuples(st.just("sync"), r),
        st.tuples(st.just("sync"), r),
        st.tuples(st.just("write-note"), r, st.sampled_from(NOTES), note_values),
        st.tuples(st.just("delete"), r, st.sampled_from(NOTES)),
        st.tuples(st.just("write-folder"), r, st.sampled_from(FOLDERS), titles),
        st.tuples(st.just("delete"), r, st.sampled_from(FOLDERS)),
        st.tuples(st.just("write-item"), r, st.sampled_from(ITEMS), titles,
                  st.sampled_from(FOLDERS)),
        st.tuples(st.just("delete"), r, st.sampled_from(ITEMS)),
        st.tuples(st.just("two-notes"), r, st.sampled_from(NOTES), st.sampled_from(NOTES),
                  titles),
    )


MODEL = {NOTES[0][:4]: Note, FOLDERS[0][:4]: Folder, ITEMS[0][:4]: Item}


def model_of(eid: str) -> type[Any]:
    return MODEL[eid[:4]]


def run(dev: Device, op: tuple[Any, ...]) -> None:
    """Do ``op`` on ``dev``: a write inserts (or re-inserts) a missing row, else updates it;
    what cannot apply here (a delete of a missing row, an item without its folder) is
    skipped."""
    kind = op[0]
    if kind == "sync":
        dev.sync()
        return
    with dev.Session() as s:
        if kind == "delete":
            obj = s.get(model_of(op[2]), op[2])
            if obj is not None:
                s.delete(obj)
        elif kind == "write-note":
            _, _, eid, values = op
            obj = s.get(Note, eid)
            if obj is None:
                s.add(Note(id=eid, **{"title": "new", **values}))
            else:
                for k, v in values.items():
                    setattr(obj, k, v)
        elif kind == "write-folder":
            _, _, eid, name = op
            folder = s.get(Folder, eid)
            if folder is None:
                s.add(Folder(id=eid, name=name))
            else:
                folder.name = name
        elif kind == "write-item":
            _, _, eid, label, folder_id = op
            if s.get(Folder, folder_id) is None:
                return
            item = s.get(Item, eid)
            if item is None:
                s.add(Item(id=eid, label=label, folder_id=folder_id))
            else:
                item.label, item.folder_id = label, folder_id
        elif kind == "two-notes":  # one transaction writing two rows
            _, _, first, second, title = op
            for eid in dict.fromkeys((first, second)):
                obj = s.get(Note, eid)
                if obj is None:
                    s.add(Note(id=eid, title=title))
                else:
                    obj.title = title
        s.commit()


def expected_rows(log: set[ChangeRow]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows last-write-wins makes of ``log``: per entity, the latest change of each
    attribute; a row exists when the latest change of its key is not a delete, and an item
    only when its folder exists (else it is held)."""
    latest: dict[tuple[str, str], dict[str, ChangeRow]] = {}
    for c in log:
        attrs = latest.setdefault((c[2], c[3]), {})
        if c[4] not in attrs or c[0] > attrs[c[4]][0]:
            attrs[c[4]] = c
    rows: dict[str, dict[str, dict[str, Any]]] = {"folder": {}, "item": {}, "note": {}, "tag": {}}
    for (etype, eid), attrs in latest.items():
        if attrs["id"][6] is None:
            continue
        rows[etype][eid] = {a: None if c[6] is None else json.loads(c[6])
                            for a, c in attrs.items()}
    rows["item"] = {k: v for k, v in rows["item"].items() if v["folder_id"] in rows["folder"]}
    return {
        table: sorted((tuple([v["id"], *(v[c] for c in sorted(v) if c != "id")])
                       for v in by_id.values()), key=repr)
        for table, by_id in rows.items()
    }


def held_entities(dev: Device) -> set[tuple[str, str]]:
    with dev.db.engine.connect() as conn:
        return {(r[0], r[1]) for r in conn.execute(select(schema.held))}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge(data: st.DataObject) -> None:
    converge(data, st.just("sqlite"))


@pytest.mark.postgresql
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_sqlite_and_postgresql_replicas_converge(pg_server: PgServer,
                                                 data: st.DataObject) -> None:
    """The same property with each replica on SQLite or on PostgreSQL (at least one), fewer
    examples: PostgreSQL replicas cost more to set up."""
    converge(data, st.sampled_from(KINDS), pg_server)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_with_signatures(data: st.DataObject) -> None:
    """The same property with every replica on its own device key (every file signed, every
    file checked against the other replicas' keys, pinned on first sight), encrypted to all."""
    converge(data, st.just("sqlite"), signed=True)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_when_every_change_merges_and_settles_in_its_own_batch(
        data: st.DataObject) -> None:
    """The same property with the pull committing after every file it reads and the local
    rules settling one transaction at a time (the bounded batches of a large sync)."""
    with mock.patch.object(pull, "MERGE_CHANGES", 1), \
            mock.patch.object(merge, "SETTLE_CHANGES", 1):
        converge(data, st.just("sqlite"))


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_when_some_write_format_2_bundles(data: st.DataObject) -> None:
    """The same property with some replicas pushing format-2 bundles (one record per
    change, as earlier releases write them: ``storage.bundle_format = 2``) and the others
    format 3 (packed runs)."""
    converge(data, st.just("sqlite"), mixed_formats=True)


def converge(data: st.DataObject, kinds: st.SearchStrategy[str],
             server: PgServer | None = None, *, signed: bool = False,
             mixed_formats: bool = False) -> None:
    n = data.draw(st.integers(3, 5), label="replicas")
    old = (data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1),
                     label="format-2 writers") if mixed_formats else set())
    on = data.draw(st.lists(kinds, min_size=n, max_size=n), label="databases")
    if server is not None and "postgresql" not in on:
        on[0] = "postgresql"
    steps = data.draw(st.lists(ops(n), min_size=1, max_size=40), label="steps")
    url = f"memory://convergence-{uuid.uuid4().hex}/remote"
    with tempfile.TemporaryDirectory() as tmp:
        made = Databases(Path(tmp), lambda: _need(server))
        try:
            with device_set(Path(tmp), url, encryption=signed, databases=made) as devs:
                keys = [generate_device_key() for _ in range(n)] if signed else []
                signing = [{"identity": keys[i][0],
                            "recipients": [k[1] for j, k in enumerate(keys) if j != i]}
                           for i in range(n)] if signed else [{} for _ in range(n)]
                replicas = [devs.new(f"r{i}", clock=HybridClock(), database=on[i],
                                     **signing[i]) for i in range(n)]
                assert all(r.db.remote.trust.required for r in replicas) == signed
                for i in old:
                    replicas[i].db.storage.bundle_format = 2
                for op in steps:
                    run(replicas[op[1]], op)
                order = data.draw(st.permutations(range(n)), label="final sync order")
                for _ in range(2):
                    for i in order:
                        report = replicas[i].sync()
                        assert report.errors == {}
                check(replicas)
        finally:
            made.close()
    _drop_remote(url)


def _need(server: PgServer | None) -> PgServer:
    assert server is not None
    return server


def check(replicas: list[Device]) -> None:
    first = replicas[0]
    rows, log = first.snapshot(), first.log()
    for dev in replicas[1:]:
        assert dev.log() == log, f"{dev.name}'s log differs from {first.name}'s"
        assert dev.snapshot() == rows, f"{dev.name}'s rows differ from {first.name}'s"
        assert held_entities(dev) == held_entities(first)
    assert rows == expected_rows(log)


def _drop_remote(url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    top = root.rsplit("/", 1)[0]
    if fs.exists(top):
        fs.rm(top, recursive=True)


def test_model_of_the_log_agrees_with_a_hand_made_history(tmp_path: Path) -> None:
    """The check above, on a history whose outcome is known."""
    with device_set(tmp_path, f"memory://convergence-{uuid.uuid4().hex}/remote",
                    encryption=False) as devs:
        a, b, c = (devs.new(name) for name in "abc")
        run(a, ("write-note", 0, NOTES[0], {"title": "x", "rank": 1}))
        run(a, ("write-folder", 0, FOLDERS[0], "f"))
        run(a, ("write-item", 0, ITEMS[0], "i", FOLDERS[0]))
        run(a, ("sync", 0))
        run(b, ("sync", 1))
        run(b, ("delete", 1, FOLDERS[0]))  # and with it, by cascade, its item
        run(c, ("sync", 2))
        run(c, ("write-note", 2, NOTES[0], {"title": "y"}))
        run(b, ("sync", 1))
        run(c, ("sync", 2))
        run(a, ("sync", 0))
        run(b, ("sync", 1))
        check([a, b, c])
        assert a.rows(Folder) == [] and a.rows(Item) == []
        assert a.get(Note, NOTES[0]) == {"id": NOTES[0], "title": "y", "body": None,
                                         "done": False, "rank": 1}
        _drop_remote(devs.remote)
