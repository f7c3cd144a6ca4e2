"""Convergence under compaction: the property of ``test_convergence`` with random
snapshots, compactions and history prunes interleaved with the edits, deletes, re-inserts
and syncs of 3 to 5 replicas, and a device that joins at the end (it bootstraps from the
snapshots). After everyone has synced twice, every replica holds the same rows, and they
are what last-write-wins per attribute makes of all the changes still logged anywhere
(pruning and snapshots drop only superseded changes, so the winners are all there)."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from syncworld import Device, device_set
from test_convergence import _drop_remote, expected_rows, ops
from test_convergence import run as run_edit

from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.core.errors import SyncError


def steps(replicas: int) -> st.SearchStrategy[tuple[Any, ...]]:
    r = st.integers(0, replicas - 1)
    return st.one_of(
        ops(replicas),
        st.tuples(st.just("compact"), r),
        st.tuples(st.just("snapshot"), r),
        st.tuples(st.just("prune"), r),
    )


def run(dev: Device, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "compact":
        dev.db.compact()
    elif kind == "snapshot":
        with contextlib.suppress(SyncError):  # nothing pushed yet
            dev.db.snapshot()
    elif kind == "prune":
        dev.db.prune_history(older_than=timedelta(0))
    else:
        run_edit(dev, op)


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
        first = replicas[0]
        rows = first.snapshot()
        for dev in replicas[1:]:
            assert dev.snapshot() == rows, f"{dev.name}'s rows differ from {first.name}'s"
        log = set().union(*(dev.log() for dev in replicas))
        assert rows == expected_rows(log)
    _drop_remote(url)
