"""Convergence under compaction: the property of ``test_convergence`` with random
snapshots, compactions and history prunes interleaved with the edits, deletes, re-inserts
and syncs of 3 to 5 replicas, and a device that joins at the end (it bootstraps from the
snapshots). After everyone has synced twice, every replica holds the same rows, and they
are what last-write-wins per attribute makes of all the changes still logged anywhere
(pruning and snapshots drop only superseded changes, so the winners are all there).

The second property leans on the values ``prune_history`` drops (the winners' values the
live rows hold, read back from there): prunes right after a sync, so that settled winners
lose their values, and ``restore_pruned_values`` now and then, interleaved with the same
edits, deletes (a folder's delete cascading to its items), re-inserts and syncs, and
items their folder drops (deleted by the flush as orphans)."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import Folder, Item
from syncworld import Device, device_set
from test_convergence import (
    ITEMS,
    NOTES,
    _drop_remote,
    expected_rows,
    note_values,
    ops,
    titles,
)
from test_convergence import run as run_edit

from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.core.errors import SyncError
from dimpledb_sa.sync import bootstrap, snapshot


def steps(replicas: int) -> st.SearchStrategy[tuple[Any, ...]]:
    r = st.integers(0, replicas - 1)
    return st.one_of(
        ops(replicas),
        st.tuples(st.just("compact"), r),
        st.tuples(st.just("snapshot"), r),
        st.tuples(st.just("prune"), r),
    )


def valueless_steps(replicas: int) -> st.SearchStrategy[tuple[Any, ...]]:
    r = st.integers(0, replicas - 1)
    return st.one_of(
        ops(replicas),
        st.tuples(st.just("sync-prune"), r),
        st.tuples(st.just("sync-prune"), r),
        st.tuples(st.just("restore"), r),
        st.tuples(st.just("compact"), r),
        st.tuples(st.just("orphan"), r, st.sampled_from(ITEMS)),
    )


def run(dev: Device, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "sync-prune":
        dev.sync()
        time.sleep(0.002)  # the ids synced lie before the cutoff
        dev.db.prune_history(older_than=timedelta(0))
    elif kind == "restore":
        dev.db.restore_pruned_values()
    elif kind == "orphan":  # the flush deletes the item its folder no longer holds
        with dev.Session() as s:
            item = s.get(Item, op[2])
            folder = s.get(Folder, item.folder_id) if item is not None else None
            if item is not None and folder is not None:
                folder.items.remove(item)
                s.commit()
    elif kind == "compact":
        dev.db.compact()
    elif kind == "snapshot":
        with contextlib.suppress(SyncError):  # nothing pushed yet
            dev.db.snapshot()
    elif kind == "prune":
        dev.db.prune_history(older_than=timedelta(0))
    else:
        run_edit(dev, op)


def assert_same_rows(replicas: list[Device]) -> None:
    """Every replica holds the first one's rows, which are what last-write-wins makes of
    the changes all of them logged."""
    first = replicas[0]
    rows = first.snapshot()
    for dev in replicas[1:]:
        assert dev.snapshot() == rows, f"{dev.name}'s rows differ from {first.name}'s"
    log = set().union(*(dev.log() for dev in replicas))
    assert rows == expected_rows(log)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_under_compaction(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 5), label="replicas")
    todo = data.draw(st.lists(steps(n), min_size=1, max_size=40), label="steps")
    url = f"memory://convergence-compaction-{uuid.uuid4().hex}/remote"
    with tempfile.TemporaryDirectory() as tmp, \
            device_set(Path(tmp), url, encryption=False) as devs:
        replicas = [devs.new(f"r{i}", clock=HybridClock()) for i in range(n)]
        for op in todo:
            run(replicas[op[1]], op)
        replicas.append(devs.new("late", clock=HybridClock()))
        order = data.draw(st.permutations(range(n + 1)), label="final sync order")
        for _ in range(2):
            for i in order:
                report = replicas[i].sync()
                assert report.errors == {}
        assert_same_rows(replicas)
    _drop_remote(url)


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_with_value_less_history(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 5), label="replicas")
    todo = data.draw(st.lists(valueless_steps(n), min_size=1, max_size=25), label="steps")
    url = f"memory://convergence-valueless-{uuid.uuid4().hex}/remote"
    with tempfile.TemporaryDirectory() as tmp, \
            device_set(Path(tmp), url, encryption=False) as devs:
        replicas = [devs.new(f"r{i}", clock=HybridClock()) for i in range(n)]
        for i, eid in enumerate(NOTES[:n]):  # value-less rows everywhere to start with
            run(replicas[i], ("write-note", i, eid, {"title": f"t{i}", "rank": i}))
        for _ in range(2):
            for i in range(n):
                run(replicas[i], ("sync-prune", i))
        for op in todo:
            run(replicas[op[1]], op)
        replicas.append(devs.new("late", clock=HybridClock()))
        for _ in range(2):
            for dev in replicas:
                assert dev.sync().errors == {}
        assert_same_rows(replicas)
    _drop_remote(url)


note_steps = st.one_of(
    st.tuples(st.just("sync"), st.just(0)),
    st.tuples(st.just("write-note"), st.just(0), st.sampled_from(NOTES), note_values),
    st.tuples(st.just("delete"), st.just(0), st.sampled_from(NOTES)),
    st.tuples(st.just("two-notes"), st.just(0), st.sampled_from(NOTES),
              st.sampled_from(NOTES), titles),
)


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_new_device_bootstraps_in_bulk_to_the_same_rows(data: st.DataObject) -> None:
    """The bulk bootstrap always taken: one writer's edits, deletes and re-inserts of notes
    (an unconstrained table), compacted; a new device merges the snapshot into its empty
    database (in pieces of a few transactions, or one) and holds the writer's rows, which
    are what last-write-wins makes of the writer's log."""
    todo = data.draw(st.lists(note_steps, min_size=1, max_size=20), label="steps")
    piece = data.draw(st.sampled_from([snapshot.PIECE_BYTES, 300]), label="piece bytes")
    url = f"memory://convergence-bulk-{uuid.uuid4().hex}/remote"
    real = bootstrap.merge_new
    bulk: list[int] = []

    def counted(*args: Any) -> Any:
        got = real(*args)
        bulk.append(1)
        return got

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, \
            device_set(Path(tmp), url, encryption=False) as devs:
        writer = devs.new("writer", clock=HybridClock())
        for op in [("write-note", 0, NOTES[0], {}), *todo]:
            run_edit(writer, op)
        writer.db.compact()
        mp.setattr(bootstrap, "merge_new", counted)
        mp.setattr(snapshot, "PIECE_BYTES", piece)
        late = devs.new("late", clock=HybridClock())
        assert late.sync().errors == {}
        assert bulk, "the bulk bootstrap did not store the snapshot's first piece"
        rows = writer.snapshot()
        assert late.snapshot() == rows == expected_rows(writer.log())
    _drop_remote(url)
