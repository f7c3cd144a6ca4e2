"""Tests for ``dimpledb_sa.core.changes``: the ``Change`` record."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

import dimpledb_sa as dimple
from dimpledb_sa.core.changes import changes_from_rows
from dimpledb_sa.core.clock import HybridClock

T0 = 1_750_000_000_000


def test_change_is_frozen_and_has_an_aware_timestamp() -> None:
    clock = HybridClock(now_ns=lambda: T0 * 1_000_000)
    tx, cid = clock.reserve(2)
    change = dimple.Change(cid, tx, "author", "todo", "e1", "text", None, "milk")
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.new_value = "x"  # type: ignore[misc]
    assert change.timestamp == dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)
    assert change.timestamp.tzinfo is not None
    assert change == dimple.Change(cid, tx, "author", "todo", "e1", "text", None, "milk")


def test_changes_from_rows_decodes_json_texts() -> None:
    rows = [("c1", "t1", "todo", "e1", "text", None, '"milk"'),
            ("c2", "t1", "todo", "e1", "tags", '["a"]', "null")]
    a, b = changes_from_rows(rows, "me")
    assert (a.author, a.old_value, a.new_value) == ("me", None, "milk")
    assert (b.attribute, b.old_value, b.new_value) == ("tags", ["a"], None)
