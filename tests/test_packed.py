"""Snapshot version 2's packed runs (``sync.packed``): written from packed rows, read back
as the same change records, and every unsound run refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dimpledb_sa.core import changelog
from dimpledb_sa.core.changes import ChangeRow
from dimpledb_sa.core.errors import RemoteFormatError
from dimpledb_sa.sync import packed

AUTHOR = "0190aaaa-0000-7000-8000-000000000001"
TX = "0190aaaa-0000-7000-8000-000000000002"
DEEP: Any = 1
for _ in range(70):  # deeper than MAX_VALUE_DEPTH
    DEEP = [DEEP]


def _changes() -> list[ChangeRow]:
    nested = json.dumps({"a": [1, 2], "b": "[x]"})
    values = ['"n1"', '"t [1]"', "true", "3", "1.5", nested, None]
    names = ["id", "title", "done", "rank", "score", "data", "body"]
    first = "0190aaaa-0000-7000-8ffe-000000000003"  # the counter's last field overflows
    ids = changelog.expand((first, TX, "note", "n1", json.dumps(names), "[" + ",".join(
        ["null"] * len(names)) + "]", changelog.json_array(values)))
    return [*ids, ("0190aaaa-0000-7000-8fff-000000000004", TX, "note", "n2", "id", '"n0"',
                   '"n2"')]


def _decode(runs: list[Any], tx: str = TX) -> list[Any]:
    return packed.decode_piece(json.dumps([{"id": tx, "runs": runs}]).encode(), AUTHOR, "t")


def test_runs_read_back_as_the_change_records_they_were_written_from() -> None:
    changes = _changes()
    text = packed.encode_runs(TX, changelog.pack(changes))
    [(tx, author, got)] = packed.decode_piece(b"[" + text.encode() + b"]", AUTHOR, "t")
    assert (tx, author, len(got)) == (TX, AUTHOR, len(changes))
    assert packed.packed_of((tx, author, got)) is got
    assert list(got) == got[:] == changes and got == changes and got[0] == changes[0]
    assert got.newest == max(c[0] for c in changes)
    assert got.news[0][5] == {"a": [1, 2], "b": "[x]"}  # values as parsed, for the bulk path


@pytest.mark.parametrize("run", [
    ["not-an-id", "note", "n", ["id"], [None], ["n"]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", ["id"], [None]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", ["id", "x"], [None], ["n"]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", ["id", "id"], [None, 1], ["n", 2]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", [""], [None], ["n"]],
    ["0190aaaa-0000-7000-8000-000000000003", "", "n", ["id"], [None], ["n"]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", 5, ["id"], [None], ["n"]],
    ["0190aaaa-0000-4000-8000-000000000003", "note", "n", ["id"], [None], ["n"]],  # not v7
    ["0000aaaa-0000-7000-8000-000000000003", "note", "n", ["id"], [None], ["n"]],  # 1970
    ["0190aaaa-0000-7fff-bfff-fff000000003", "note", "n", ["id", "x"], [None, 1], ["n", 2]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", ["x"], [None], [DEEP]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", [{"a": 1}], [None], ["n"]],
    ["0190aaaa-0000-7000-8000-000000000003", "note", "n", [["x"]], [None], ["n"]],
])
def test_an_unsound_run_is_refused(run: list[Any]) -> None:
    with pytest.raises(RemoteFormatError):
        _decode([run])


def test_unsound_transactions_are_refused() -> None:
    run = ["0190aaaa-0000-7000-8000-000000000003", "note", "n", ["id"], [None], ["n"]]
    for doc in ({"id": TX}, [{"id": TX, "runs": [run]}, {"id": TX, "runs": []}],
                [{"id": "x", "runs": []}], [{"id": TX, "runs": [run], "more": 1}], [[TX]]):
        with pytest.raises(RemoteFormatError):
            packed.decode_piece(json.dumps(doc).encode(), AUTHOR, "t")


def test_runs_sharing_a_change_id_are_refused() -> None:
    """Every change id once, as in a bundle: in one transaction (the same first id twice,
    overlapping runs, runs out of order) and across the transactions of a piece."""
    a = "0190aaaa-0000-7000-8000-000000000003"
    b = "0190aaaa-0000-7000-8000-000000000004"
    one = ["note", "n", ["id"], [None], ["n"]]
    two = ["note", "m", ["id", "title"], [None, None], ["m", "t"]]
    for runs in ([[a, *one], [a, *one]], [[a, *two], [b, *one]], [[b, *one], [a, *one]]):
        with pytest.raises(RemoteFormatError):
            _decode(runs)
    later = "0190aaaa-0000-7000-8fff-000000000009"
    doc = [{"id": TX, "runs": [[a, *one]]}, {"id": later, "runs": [[a, *one]]}]
    with pytest.raises(RemoteFormatError, match="id ranges of two runs overlap"):
        packed.decode_piece(json.dumps(doc).encode(), AUTHOR, "t")
    assert len(_decode([[a, *one], [b, *one]])) == 1  # distinct ids in order: fine


def test_a_deep_old_value_is_refused_and_names_are_checked_in_every_run() -> None:
    a = "0190aaaa-0000-7000-8000-000000000003"
    b = "0190aaaa-0000-7000-8000-000000000004"
    with pytest.raises(RemoteFormatError, match="nests"):
        _decode([[a, "note", "n", ["x"], [DEEP], ["n"]]])
    for names in ([1], [["x"]], [None], ["id", 2]):  # the first run's names are fine
        with pytest.raises(RemoteFormatError):
            _decode([[a, "note", "n", ["id"], [None], ["n"]],
                     [b, "note", "m", names, [None] * len(names), ["m"] * len(names)]])


def test_names_lists_of_as_many_names_are_read_as_written() -> None:
    """Names lists that join alike ("a", "bc" against "ab", "c") stay apart; names holding
    NUL are refused (as every text holding it)."""
    a = "0190aaaa-0000-7000-8000-000000000003"
    b = "0190aaaa-0000-7000-8000-002000000003"
    [(_, _, got)] = _decode([[a, "note", "n", ["a", "bc"], [None, None], [1, 2]],
                             [b, "note", "m", ["ab", "c"], [None, None], [3, 4]]])
    assert [(c[3], c[4], c[6]) for c in got] == [
        ("n", "a", "1"), ("n", "bc", "2"), ("m", "ab", "3"), ("m", "c", "4")]
    with pytest.raises(RemoteFormatError, match="NUL"):
        _decode([[a, "note", "n", ["a\0b", "c"], [None, None], [1, 2]]])


def test_runs_across_the_counters_last_field_are_checked_whole() -> None:
    """A run whose ids carry into the counter's other fields ends where its last id is:
    a run starting inside it is refused, one after it is not."""
    a = "0190aaaa-0000-7000-8000-ffe000000003"  # ...8000-ffe, 8000-fff, then 8001-000
    inside = "0190aaaa-0000-7000-8001-000000000003"
    after = "0190aaaa-0000-7000-8001-001000000003"
    three = ["note", "n", ["id", "x", "y"], [None] * 3, ["n", 1, 2]]
    one = ["note", "m", ["id"], [None], ["m"]]
    with pytest.raises(RemoteFormatError, match="order"):
        _decode([[a, *three], [inside, *one]])
    [(_, _, got)] = _decode([[a, *three], [after, *one]])
    assert [c[0] for c in got][2:] == [inside, after]
