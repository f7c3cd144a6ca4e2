"""The bulk bootstrap (``sync.bootstrap``): a new device merging a snapshot into its empty
database ends with exactly what the general merge makes of it (rows, log, transactions,
held, cursors, clock floor), whether every piece goes the bulk way or some fall back."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from databases import Databases
from models import Folder, Item, Note, OldSyncBase, SyncBase, Tag
from sqlalchemy import Engine, select
from syncworld import Device, Devices, device_set

from dimpledb_sa.core import changelog, meta, schema
from dimpledb_sa.sync import bootstrap, packed, pull, snapshot


def _url() -> str:
    return f"memory://boot-{uuid.uuid4().hex}/remote"


def _state(dev: Device) -> dict[str, Any]:
    """Everything a merge writes, as comparable values: app rows, the packed log as stored,
    transactions, held, conflicts, changes held ahead, cursors (without their time) and
    the clock floor."""
    engine: Engine = dev.db.engine
    with engine.connect() as conn:
        out: dict[str, Any] = {
            "rows": dev.snapshot(),
            "log": sorted(changelog.all_rows(conn)),
            "transactions": sorted(tuple(r) for r in conn.execute(select(schema.transactions))),
            "held": sorted(tuple(r) for r in conn.execute(select(schema.held))),
            "cursors": sorted((a, t) for a, t, _ in conn.execute(select(schema.cursors))),
            "clock": meta.get(conn, meta.CLOCK),
        }
        c = schema.conflicts
        if engine.dialect.has_table(conn, c.name):
            out["conflicts"] = sorted(tuple(r)[1:] for r in conn.execute(select(c)))
        a = schema.ahead
        if engine.dialect.has_table(conn, a.name):
            out["ahead"] = sorted(tuple(r) for r in conn.execute(select(a)))
    return out


class _Counted:
    """``bootstrap.merge_new`` counting the pieces it stored and those it sent back."""

    def __init__(self) -> None:
        self.bulk = self.general = 0
        self.real = bootstrap.merge_new

    def __call__(self, *args: Any) -> Any:
        try:
            got = self.real(*args)
        except bootstrap.NotBulk:
            self.general += 1
            raise
        self.bulk += 1
        return got


def _general(*args: Any) -> Any:
    raise bootstrap.NotBulk("the general path, for comparison")


def _both(devs: Devices, monkeypatch: pytest.MonkeyPatch, *, models: Any = SyncBase,
          tag: str = "") -> tuple[Device, Device, _Counted]:
    """A device bootstrapped the bulk way and one the general way, from the same remote."""
    counted = _Counted()
    monkeypatch.setattr(bootstrap, "merge_new", counted)
    bulk = devs.new(f"bulk{tag}", models=models)
    assert bulk.sync().errors == {}
    monkeypatch.setattr(bootstrap, "merge_new", _general)
    general = devs.new(f"general{tag}", models=models)
    assert general.sync().errors == {}
    monkeypatch.setattr(bootstrap, "merge_new", counted.real)
    return bulk, general, counted


def _notes_history(a: Device) -> None:
    """Inserts, updates, a delete, a re-insert and a later edit across several bundles."""
    for k in range(12):
        a.add(Note(id=f"n{k:02}", title=f"t{k}", rank=k, body="x" * k))
        if k % 4 == 3:
            a.sync()
    a.edit(Note, "n00", title="edited", body=None)
    a.delete(Note, "n01")
    a.delete(Note, "n02")
    a.add(Note(id="n02", title="back"), Tag(id="g", word="w"))
    a.sync()
    a.edit(Note, "n03", done=True, rank=None)
    a.sync()


def test_bulk_and_general_bootstraps_give_the_same_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str,
        databases: Databases) -> None:
    """On SQLite and PostgreSQL (text ids, no blobs: the bulk path's own insert)."""
    with device_set(tmp_path, _url(), encryption=False, database=database,
                    databases=databases) as devs:
        a = devs.new("a")
        _notes_history(a)
        a.db.compact()
        bulk, general, counted = _both(devs, monkeypatch)
        assert counted.bulk >= 1 and counted.general == 0
        assert _state(bulk) == _state(general)
        assert bulk.snapshot() == a.snapshot()
        # and both merge what comes next alike
        a.edit(Note, "n04", title="later")
        a.sync()
        for dev in (bulk, general):
            assert dev.sync().errors == {}
        assert _state(bulk) == _state(general)


def test_a_piece_touching_an_entity_seen_before_falls_back_for_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pieces, a commit per piece: later pieces hold later edits of entities an
    earlier piece stored, and the general merge takes over from there."""
    monkeypatch.setattr(snapshot, "PIECE_BYTES", 500)
    monkeypatch.setattr(pull, "MERGE_CHANGES", 5)
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        _notes_history(a)
        a.db.compact()
        bulk, general, counted = _both(devs, monkeypatch)
        assert counted.bulk >= 2 and counted.general == 1
        assert _state(bulk) == _state(general)


def test_constrained_tables_and_held_columns_bootstrap_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Foreign keys send their piece to the general merge; a column this schema lacks is
    held the same way by both paths."""
    monkeypatch.setattr(snapshot, "PIECE_BYTES", 500)
    monkeypatch.setattr(pull, "MERGE_CHANGES", 5)
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        for k in range(6):
            a.add(Note(id=f"n{k}", title=f"t{k}", rank=k))
        a.sync()
        a.add(Folder(id="f", name="f"), Item(id="i", folder_id="f", label="l"))
        a.sync()
        a.db.compact()
        bulk, general, counted = _both(devs, monkeypatch, models=OldSyncBase)
        assert counted.bulk >= 1 and counted.general == 1
        state = _state(bulk)
        assert ("note", "n1", "rank", "unknown column") in state["held"]
        assert state == _state(general)


def test_a_database_that_is_not_empty_takes_the_general_merge(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        _notes_history(a)
        a.db.compact()
        counted = _Counted()
        monkeypatch.setattr(bootstrap, "merge_new", counted)
        c = devs.new("c")
        c.add(Note(id="mine", title="local"))  # one local row: not empty
        assert c.sync().errors == {}
        assert counted.bulk == 0 and counted.general == 1
        assert c.get(Note, "mine") is not None
        assert c.get(Note, "n02") == a.get(Note, "n02")


def test_transactions_ahead_of_local_time_are_held_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer whose clock runs a day ahead: the bootstrapping devices hold its
    transactions ahead (whole) whichever path merges the snapshot."""
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        for k in range(3):
            a.add(Note(id=f"n{k}", title=f"t{k}"))
        a.sync()
        a.db.replica.clock.observe(a.db.replica.clock.horizon(timedelta(days=1)))
        a.add(Note(id="future", title="ahead"))
        a.sync()
        a.db.compact()
        bulk, general, counted = _both(devs, monkeypatch)
        assert counted.bulk == 1
        state = _state(bulk)
        assert state["ahead"] and bulk.get(Note, "future") is None
        assert bulk.get(Note, "n1") is not None
        assert state == _state(general)


def test_odd_ids_and_values_bootstrap_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """Ids of other lengths or needing escapes, texts with brackets, braces, quotes and
    non-ASCII characters, nulls and booleans: the bulk path spells and stores them as the
    general merge does."""
    with device_set(tmp_path, _url(), encryption=False) as devs:
        a = devs.new("a")
        odd = ["n", "n22", 'q"1', "é", "a\\b", "[x]", "x" * 40]
        a.add(*(Note(id=k, title=f"t{i} [{k}] {{}}", body=None if i % 2 else "é\"", done=i % 3 == 0,
                     rank=None if i == 1 else i) for i, k in enumerate(odd)))
        a.sync()
        a.add(*(Note(id=f"p{k:02}", title="plain", done=True, rank=k) for k in range(5)))
        a.sync()
        a.db.compact()
        bulk, general, counted = _both(devs, monkeypatch)
        assert counted.bulk >= 1 and counted.general == 0
        assert _state(bulk) == _state(general)
        assert bulk.snapshot() == a.snapshot()


def test_a_piece_of_transactions_without_runs_stays_on_the_bulk_path(devs: Devices) -> None:
    """Transactions with no runs (no writer of ours makes them; a foreign one may) are
    stored in bulk, not sent back to the general merge."""
    author = "0190aaaa-0000-7000-8000-0000000000aa"
    doc = [{"id": "0190aaaa-0000-7000-8000-000000000001", "runs": []}]
    txs = packed.decode_piece(json.dumps(doc).encode(), author, "t")
    dev = devs.new("no-runs")
    with dev.db.engine.begin() as conn:
        result = bootstrap.merge_new(dev.db.replica, conn, txs, bootstrap.Bulk())
    assert result.stored == 1
