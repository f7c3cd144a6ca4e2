"""Tests for ``dimpledb_sa.core.clock``: the hybrid logical clock and ``new_id``: UUIDv7
layout, order, and never going back."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimpledb_sa.core.clock import (
    _COUNTER_MAX,
    HybridClock,
    _compose,
    _format,
    id_datetime,
    is_next_id,
    new_id,
    offset_id,
    parse_id,
    run_ids,
)

T0 = 1_750_000_000_000  # milliseconds


class FakeTime:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms * 1_000_000 + 123


def is_uuid7(value: str) -> bool:
    u = uuid.UUID(value)
    return str(u) == value and u.version == 7 and u.variant == uuid.RFC_4122


def test_new_id_is_uuid7_and_ordered() -> None:
    ids = [new_id() for _ in range(5000)]
    assert all(is_uuid7(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_clock_ids_are_uuid7_and_increase() -> None:
    clock = HybridClock(now_ns=FakeTime())
    ids = [clock.next() for _ in range(100)] + clock.reserve(50)
    assert all(is_uuid7(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert sorted(ids, key=lambda i: uuid.UUID(i).int) == ids
    assert all(parse_id(i)[0] == T0 for i in ids)


def test_wall_clock_stepping_back() -> None:
    now = FakeTime()
    clock = HybridClock(now_ns=now)
    a = clock.next()
    now.ms -= 60_000  # NTP step back by a minute
    b = clock.next()
    now.ms += 30_000
    c = clock.next()
    now.ms += 60_000  # real time catches up: the physical part moves on
    d = clock.next()
    assert a < b < c < d
    assert parse_id(b)[0] == T0 and parse_id(d)[0] == T0 + 30_000


def test_observing_a_future_id() -> None:
    now = FakeTime()
    clock = HybridClock(now_ns=now)
    mine = clock.next()
    future = HybridClock(now_ns=FakeTime(T0 + 3_600_000)).next()  # a device an hour ahead
    clock.observe(future)
    nxt = clock.next()
    assert mine < future < nxt
    clock.observe(mine)  # observing the past changes nothing
    assert clock.next() > nxt


def test_restart_from_last() -> None:
    now = FakeTime()
    first = HybridClock(now_ns=now)
    issued = first.reserve(10)
    assert first.last is not None and first.last >= issued[-1]
    now.ms -= 1000
    second = HybridClock(first.last, now_ns=now)
    assert second.next() > issued[-1]
    assert HybridClock().last is None


def test_reserved_ids_are_the_run_offsets() -> None:
    clock = HybridClock(now_ns=FakeTime())
    clock.observe(_format(_compose(T0, (1 << 26) - 3, 0)))  # the counter's low part wraps
    ids = clock.reserve(6)
    assert [offset_id(ids[0], k) for k in range(6)] == ids
    firsts = clock.reserve_runs([2, 1, 3])
    assert firsts[1] == offset_id(firsts[0], 2) and firsts[2] == offset_id(firsts[0], 3)
    assert parse_id(firsts[0])[1] == parse_id(ids[-1])[1] + 1  # new random bits, next count


def test_counter_exhaustion_borrows_the_next_millisecond() -> None:
    clock = HybridClock(now_ns=FakeTime())
    clock.observe(_format(_compose(T0, _COUNTER_MAX - 1, 0)))
    a, b = clock.reserve(2)
    assert parse_id(a) == (T0 + 1, 0) and parse_id(b) == (T0 + 1, 1)


def test_runs_offsets_and_adjacency() -> None:
    clock = HybridClock(now_ns=FakeTime())
    counts = [1, 3, 2]
    firsts = clock.reserve_runs(counts)
    every = [offset_id(f, k) for f, n in zip(firsts, counts, strict=True) for k in range(n)]
    assert every == sorted(every) and len(set(every)) == 6
    assert all(is_next_id(a, b) for a, b in itertools.pairwise(every))
    assert not is_next_id(every[0], every[2])
    assert not is_next_id(every[0], new_id())
    assert clock.next() > every[-1]
    assert clock.reserve(0) == [] and clock.reserve_runs([]) == []
    with pytest.raises(ValueError, match="overflows"):
        offset_id(_format(_compose(T0, _COUNTER_MAX, 0)), 1)


@settings(max_examples=50)
@given(ms=st.integers(0, 2**48 - 1), counter=st.integers(0, _COUNTER_MAX),
       rand=st.integers(0, 2**36 - 1), k=st.integers(0, 1000))
def test_layout_round_trip(ms: int, counter: int, rand: int, k: int) -> None:
    value = _format(_compose(ms, counter, rand))
    assert is_uuid7(value)
    assert parse_id(value) == (ms, counter)
    if counter + k <= _COUNTER_MAX:
        moved = offset_id(value, k)
        assert parse_id(moved) == (ms, counter + k) and (moved > value or k == 0)
        if k == 1:
            assert is_next_id(value, moved)


@settings(max_examples=100)
@given(ms=st.integers(0, 2**48 - 1), counter=st.integers(0, _COUNTER_MAX),
       rand=st.integers(0, 2**36 - 1), count=st.integers(0, 9000))
def test_run_ids_are_the_offsets(ms: int, counter: int, rand: int, count: int) -> None:
    """run_ids writes the counter fields in the text: the same ids as offset_id, across
    the boundaries of its three hex fields, and the same refusal at the counter's end."""
    first = _format(_compose(ms, counter, rand))
    if counter + count - 1 > _COUNTER_MAX:
        with pytest.raises(ValueError, match="overflows"):
            run_ids(first, count)
        return
    assert run_ids(first, count) == [offset_id(first, k) for k in range(count)]


def test_run_ids_of_ids_that_are_not_canonical() -> None:
    for first in ("01A23266-DAAD-7000-8000-0000000000AB", str(uuid.uuid4()),
                  "01a23266-daad-7000-c000-000000000fff"):
        assert run_ids(first, 5) == [offset_id(first, k) for k in range(5)]


def test_id_datetime_is_aware_utc() -> None:
    value = HybridClock(now_ns=FakeTime()).next()
    when = id_datetime(value)
    assert when.tzinfo is dt.UTC
    assert when == dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)


def test_is_uuid7_accepts_our_ids_only_in_canonical_form() -> None:
    from dimpledb_sa.core.clock import is_uuid7

    value = new_id()
    assert is_uuid7(value) and is_uuid7(HybridClock().next())
    assert not is_uuid7(value.upper())
    assert not is_uuid7(value.replace("-", ""))
    assert not is_uuid7("00000000-0000-4000-8000-000000000000")  # a UUIDv4
    assert not is_uuid7(None) and not is_uuid7("not an id")
