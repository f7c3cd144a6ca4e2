"""Conflicts as data: unique-constraint collisions, ``db.conflicts()``, ``report.conflicts``.

The scenario of issue 10 on the template-like models (users with a unique email, items with
a cascading foreign key to their user) on SQLite files with foreign keys on, off, and one
of each; then the unique rule piece by piece: the earlier change keeps the value whatever
the arrival order, a local row leaves for an earlier remote one, an update that loses falls
back to its previous value, two-column constraints, rows swapping values, and resolution by
an ordinary edit, a delete or ``db.discard`` on any device. Foreign keys are in
``test_foreign_keys.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from conflictmodels import Badge, Base, Item, User
from syncworld import (
    Device,
    Devices,
    device_set,
    sync_all,
)

import dimpledb_sa as dimple


@pytest.fixture
def devs(tmp_path: Path) -> Iterator[Devices]:
    top = f"/conflicts-{uuid.uuid4().hex}"
    with device_set(tmp_path, f"memory:/{top}/remote", encryption=False) as d:
        yield d
    fs = fsspec.filesystem("memory")
    if fs.exists(top):
        fs.rm(top, recursive=True)


def pair(devs: Devices, foreign_keys: tuple[bool, bool] = (True, True)) -> tuple[Device, Device]:
    a = devs.new("a", models=Base, foreign_keys=foreign_keys[0])
    b = devs.new("b", models=Base, foreign_keys=foreign_keys[1])
    return a, b


def kinds(dev: Device) -> list[tuple[str, str, str, str | None, str | None]]:
    return sorted((c.kind, c.entity_type, c.entity_id, c.attribute, c.other_entity_id)
                  for c in dev.db.conflicts())


def converged(*devices: Device) -> None:
    first = devices[0]
    for d in devices[1:]:
        assert d.snapshot() == first.snapshot(), d.name
        assert d.log() == first.log(), d.name
        assert d.db.conflicts() == first.db.conflicts(), d.name


def emails(dev: Device) -> dict[str, str]:
    return {r[0]: r[1] for r in dev.rows(User)}


# --------------------------------------------------------------------------- the scenario


@pytest.mark.parametrize("foreign_keys", [(True, True), (False, False), (True, False)],
                         ids=["fk-on", "fk-off", "fk-mixed"])
def test_the_scenario_of_issue_10(devs: Devices, foreign_keys: tuple[bool, bool]) -> None:
    a, b = pair(devs, foreign_keys)
    owner = User(email="owner@x")
    a.add(owner)
    a.add(Item(user_id=owner.id, title="before"))
    sync_all(a, b)

    first, second = User(email="same@x", name="a's"), User(email="same@x", name="b's")
    a.add(first)  # offline, both create a user with the same email: a's is earlier
    b.add(second)
    a.delete(User, owner.id)  # a deletes a user (its item goes by cascade) ...
    late = Item(user_id=owner.id, title="added meanwhile")
    b.add(late)  # ... while b adds an item for that user
    later_a, later_b = User(email="later-a@x"), User(email="later-b@x")
    a.add(later_a)  # and each then makes an unrelated change
    b.add(later_b)

    reports = sync_all(a, b)
    assert all(r.errors == {} for r in reports)
    converged(a, b)
    expected = [("foreign_key", "item", late.id, "user_id", owner.id),
                ("unique", "user", second.id, "email", first.id)]
    assert kinds(a) == kinds(b) == expected
    assert reports[-1].conflicts == reports[-2].conflicts == 2
    assert emails(a) == {first.id: "same@x", later_a.id: "later-a@x",
                         later_b.id: "later-b@x"}  # the later changes arrived
    assert a.rows(Item) == []  # the old item went with its user, the new one is kept out
    [unique] = [c for c in b.db.conflicts() if c.kind == "unique"]
    assert (unique.change.attribute, unique.change.new_value) == ("email", "same@x")
    assert unique.change.author == b.db.author_id
    assert "same@x" in unique.detail and first.id in unique.detail
    assert [c.attribute for c in b.db.history(User, second.id)] == ["id", "email", "name"]

    b.edit(User, first.id, email="renamed@x")  # resolved on one device, by an ordinary edit
    reports = sync_all(a, b)
    converged(a, b)
    assert kinds(a) == [("foreign_key", "item", late.id, "user_id", owner.id)]
    assert emails(a)[second.id] == "same@x" and emails(a)[first.id] == "renamed@x"
    assert reports[-1].conflicts == 1


def test_a_conflict_never_blocks_the_author(devs: Devices) -> None:
    """The bug of issue 10: after a collision, later changes of both authors still arrive."""
    a, b = pair(devs)
    a.add(User(email="same@x"))
    b.add(User(email="same@x"))
    sync_all(a, b)
    for n in range(3):
        a.add(User(email=f"a{n}@x"))
        b.add(User(email=f"b{n}@x"))
        reports = sync_all(a, b)
        assert all(r.errors == {} and r.conflicts == 1 for r in reports)
    converged(a, b)
    assert len(a.rows(User)) == 1 + 6


# --------------------------------------------------------------------------- the unique rule


@pytest.mark.parametrize("order", ["a-first", "b-first", "c-relays"])
def test_the_earlier_insert_keeps_the_value_whatever_the_order(devs: Devices,
                                                               order: str) -> None:
    a, b = pair(devs)
    c = devs.new("c", models=Base)
    early, late = User(email="v@x", name="early"), User(email="v@x", name="late")
    a.add(early)
    b.add(late)
    if order == "a-first":
        sync_all(a, b, c)
    elif order == "b-first":
        sync_all(b, a, c)
    else:
        b.sync()
        c.sync()  # c takes the later one first, then the earlier one arrives
        assert emails(c) == {late.id: "v@x"}
        a.sync()
        c.sync()
        sync_all(a, b)
    converged(a, b, c)
    assert emails(a) == {early.id: "v@x"}
    assert kinds(c) == [("unique", "user", late.id, "email", early.id)]


def test_a_local_row_leaves_for_an_earlier_remote_one(devs: Devices) -> None:
    a, b = pair(devs)
    early = User(email="v@x")
    a.add(early)
    mine = User(email="v@x")
    b.add(mine)
    assert emails(b) == {mine.id: "v@x"}
    a.sync()
    report = b.sync()
    assert report.conflicts == 1
    assert emails(b) == {early.id: "v@x"}  # evicted: derived, nothing recorded
    assert [c.attribute for c in b.db.history(User, mine.id)] == ["id", "email", "name"]
    a.sync()
    converged(a, b)


def test_an_update_that_loses_keeps_the_previous_value(devs: Devices) -> None:
    a, b = pair(devs)
    u = User(email="mine@x", name="u")
    a.add(u)
    sync_all(a, b)
    other = User(email="wanted@x")
    a.add(other)  # a takes wanted@x first ...
    b.edit(User, u.id, email="wanted@x", name="renamed")  # ... b wants it for u, later
    sync_all(a, b)
    converged(a, b)
    assert b.get(User, u.id) == {"id": u.id, "email": "mine@x", "name": "renamed"}
    [c] = b.db.conflicts()
    assert (c.kind, c.entity_id, c.attribute, c.other_entity_id) == (
        "unique", u.id, "email", other.id)
    assert c.change.new_value == "wanted@x" and "previous" in c.detail

    a.delete(User, other.id)  # the value is free again: the kept-out change applies
    sync_all(a, b)
    converged(a, b)
    assert b.get(User, u.id) == {"id": u.id, "email": "wanted@x", "name": "renamed"}
    assert b.db.conflicts() == []


def test_the_loser_can_resolve_by_editing_itself(devs: Devices) -> None:
    a, b = pair(devs)
    u = User(email="mine@x")
    a.add(u)
    sync_all(a, b)
    a.add(User(email="wanted@x"))
    b.edit(User, u.id, email="wanted@x")
    sync_all(a, b)
    b.edit(User, u.id, email="another@x")  # visible with its previous value: edit it
    sync_all(a, b)
    converged(a, b)
    assert emails(a)[u.id] == "another@x" and a.db.conflicts() == []


def test_deleting_the_winner_lets_the_kept_out_row_in(devs: Devices) -> None:
    a, b = pair(devs)
    early, late = User(email="v@x"), User(email="v@x")
    a.add(early)
    b.add(late)
    sync_all(a, b)
    b.delete(User, early.id)
    sync_all(a, b)
    converged(a, b)
    assert emails(a) == {late.id: "v@x"} and a.db.conflicts() == []


def test_discard_gives_a_kept_out_row_up_everywhere(devs: Devices) -> None:
    a, b = pair(devs)
    early, late = User(email="v@x"), User(email="v@x")
    a.add(early)
    b.add(late)
    sync_all(a, b)
    [conflict] = a.db.conflicts()
    tx = a.db.discard(conflict)  # any device: here, not even the author of the row
    assert tx is not None and a.db.conflicts() == []
    assert a.db.history(User, late.id)[-1].new_value is None  # a delete, recorded
    sync_all(a, b)
    converged(a, b)
    assert b.db.conflicts() == [] and emails(b) == {early.id: "v@x"}
    assert a.db.discard(conflict) is None  # nothing more to record


def test_discard_keeps_the_previous_value_of_an_update(devs: Devices) -> None:
    a, b = pair(devs)
    u = User(email="mine@x")
    a.add(u)
    sync_all(a, b)
    other = User(email="wanted@x")
    a.add(other)
    b.edit(User, u.id, email="wanted@x")
    sync_all(a, b)
    [conflict] = b.db.conflicts()
    b.db.discard(conflict)
    a.delete(User, other.id)  # even once the value is free, u keeps what it had
    sync_all(a, b)
    converged(a, b)
    assert emails(a) == {u.id: "mine@x"} and a.db.conflicts() == []


def test_a_two_column_constraint(devs: Devices) -> None:
    a, b = pair(devs)
    first = Badge(team="red", number=1)
    a.add(first)
    b.add(Badge(team="blue", number=1), Badge(team="red", number=2))
    second = Badge(team="red", number=1)
    b.add(second)
    sync_all(a, b)
    converged(a, b)
    assert len(a.rows(Badge)) == 3
    assert kinds(a) == [("unique", "badge", second.id, "number", first.id)]


def test_rows_swapping_values_converge(devs: Devices) -> None:
    a, b = pair(devs)
    x, y = User(email="x@x"), User(email="y@x")
    a.add(x, y)
    sync_all(a, b)
    with a.Session() as s:  # one device swaps the two emails, in three steps
        ux, uy = s.get(User, x.id), s.get(User, y.id)
        assert ux is not None and uy is not None
        ux.email = "tmp@x"
        s.flush()
        uy.email = "x@x"
        s.flush()
        ux.email = "y@x"
        s.commit()
    report = b.sync()  # the other receives x: x@x -> y@x and y: y@x -> x@x at once
    assert report.errors == {} and report.conflicts == 0
    sync_all(a, b)
    converged(a, b)
    assert emails(b) == {x.id: "y@x", y.id: "x@x"}


def test_conflicts_are_listed_with_their_change(devs: Devices) -> None:
    a, b = pair(devs)
    early, late = User(email="v@x"), User(email="v@x", name="n")
    a.add(early)
    b.add(late)
    sync_all(a, b)
    [c] = a.db.conflicts()
    assert isinstance(c, dimple.Conflict) and isinstance(c.change, dimple.Change)
    assert c.change in a.db.history(User, late.id)
    assert (c.entity_type, c.other_entity_type) == ("user", "user")
    with pytest.raises(AttributeError):
        c.kind = "other"  # type: ignore[misc]


def test_no_conflict_costs_no_bookkeeping(devs: Devices) -> None:
    a, b = pair(devs)
    a.add(*(User(email=f"{n}@x") for n in range(50)))
    b.add(User(email="b@x"))
    reports = sync_all(a, b)
    assert all(r.conflicts == 0 for r in reports)
    with a.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dimple_conflicts").scalar() == 0

