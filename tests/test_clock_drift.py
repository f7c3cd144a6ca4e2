"""Clock drift bounds (``core/clock.py``): which ids from elsewhere are believed, and a clock
that no pulled id can push further ahead than a bound, or out of canonical UUIDv7 form."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from trusttools import Base

import dimpledb_sa as dimple
from dimpledb_sa.core.clock import (
    DEFAULT_MAX_DRIFT,
    ID_EPOCH,
    ID_FLOOR,
    MAX_ID_AHEAD,
    HybridClock,
    id_millis,
    id_problem,
    is_sane_id,
    is_uuid7,
    parse_id,
)

NOW = 1_750_000_000_000  # ms: 2025-06-15
MAX_ID = "ffffffff-ffff-7fff-bfff-ffffffffffff"
HOUR = timedelta(hours=1)
ID_FLOOR_MS = int(ID_EPOCH.timestamp() * 1000)


def at(ms: int, counter: int = 0) -> str:
    """An id with this time (and counter), as another device's clock would issue it."""
    clock = HybridClock(now_ns=lambda: ms * 1_000_000)
    return clock.reserve(counter + 1)[-1]


def fixed(ms: int = NOW) -> HybridClock:
    return HybridClock(now_ns=lambda: ms * 1_000_000)


def test_sane_ids() -> None:
    assert is_sane_id(at(NOW), NOW) and is_sane_id(at(NOW + 3_600_000), NOW)
    assert is_sane_id(dimple.new_id())
    for value, why in [
        (MAX_ID, "ahead"),
        (at(NOW + 367 * 86_400_000), "ahead"),
        (at(NOW + 3_600_001), None),  # an hour and a bit: sane (the merge may hold it)
        (at(1_500_000_000_000), "before 2020"),
        ("00000000-0000-7000-8000-000000000000", "before 2020"),
        (str(uuid.uuid4()), "UUIDv7"),
        (at(NOW).upper(), "UUIDv7"),
        (at(NOW)[:-1], "UUIDv7"),
        ("0196" + at(NOW)[4:19] + "c" + at(NOW)[20:], "UUIDv7"),  # variant 0b110
        (12345, "UUIDv7"),
    ]:
        problem = id_problem(value, NOW)
        assert (problem is None) if why is None else (why in (problem or "")), (value, problem)
    assert id_problem(at(NOW + 10 * 60_000), NOW, max_ahead=timedelta(minutes=5))
    assert id_millis(at(NOW)) == NOW
    # the string bounds agree with the check
    assert is_sane_id(ID_FLOOR, NOW) and not is_sane_id(at(ID_FLOOR_MS - 1), NOW)
    assert at(ID_FLOOR_MS) >= ID_FLOOR > at(ID_FLOOR_MS - 1)


def test_observing_the_maximum_id_changes_nothing() -> None:
    clock = fixed()
    assert clock.observe(MAX_ID) is False
    assert clock.observe(MAX_ID, max_ahead=HOUR) is False
    ids = clock.reserve(5)
    assert all(len(i) == 36 and is_uuid7(i) and parse_id(i)[0] == NOW for i in ids)
    assert HybridClock(MAX_ID, now_ns=lambda: NOW * 1_000_000).last is None


def test_observe_with_a_bound_moves_at_most_that_far_ahead() -> None:
    clock = fixed()
    bound = timedelta(minutes=5)
    two_hours = at(NOW + 7_200_000, counter=3)
    assert clock.observe(two_hours, max_ahead=bound) is True
    nxt = clock.next()
    assert parse_id(nxt)[0] == NOW + 300_000 and nxt < two_hours
    assert parse_id(clock.horizon(bound))[0] == NOW + 300_000
    # within the bound, the clock moves past the id, as before
    near = at(NOW + 600_000, counter=7)
    clock2 = fixed()
    clock2.observe(near, max_ahead=HOUR)
    assert clock2.next() > near
    # without a bound (the database's own floor) too, up to MAX_ID_AHEAD
    clock3 = fixed()
    clock3.observe(two_hours)
    assert clock3.next() > two_hours


def test_horizon() -> None:
    clock = fixed()
    h = clock.horizon(DEFAULT_MAX_DRIFT)
    limit = NOW + DEFAULT_MAX_DRIFT // timedelta(milliseconds=1)
    assert at(limit, counter=1000) <= h < at(limit + 1)
    assert is_uuid7(h)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 128) - 1), st.sampled_from([None, timedelta(0), HOUR]),
       st.integers(1, 5))
def test_no_observed_value_makes_ids_non_canonical(n: int, bound: timedelta | None,
                                                   runs: int) -> None:
    clock = fixed()
    value = str(uuid.UUID(int=n))
    clock.observe(value, max_ahead=bound)
    ids = [i for _ in range(runs) for i in clock.reserve(3)]
    assert all(len(i) == 36 and is_uuid7(i) and str(uuid.UUID(i)) == i for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert parse_id(ids[-1])[0] <= NOW + (MAX_ID_AHEAD if bound is None else bound) // \
        timedelta(milliseconds=1) + 1


def test_max_drift_keyword(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        db = dimple.DimpleDb(engine, Base)
        assert db.replica.max_drift == DEFAULT_MAX_DRIFT <= HOUR
        db.close()
        db = dimple.DimpleDb(engine, Base, max_drift=timedelta(seconds=30))
        assert db.replica.max_drift == timedelta(seconds=30)
        db.close()
        for bad in (timedelta(seconds=-1), MAX_ID_AHEAD * 2, 60, None):
            with pytest.raises(dimple.ConfigurationError, match="max_drift"):
                dimple.DimpleDb(engine, Base, max_drift=bad)  # type: ignore[arg-type]
    finally:
        engine.dispose()
