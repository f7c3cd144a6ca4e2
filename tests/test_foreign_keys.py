"""Foreign keys and database-refused rows, the same on SQLite with foreign keys on and off.

Capture records what the database does by itself when a parent row goes (``ON DELETE
CASCADE`` deletes, ``SET NULL`` nulls), and makes it where the database does not enforce
its keys. The merge keeps a child whose parent is not there out of its table (kind
``foreign_key``), or nulls its key when that is ``ON DELETE SET NULL``, until the parent is
back; a self-referencing tree follows the same rule. A row a ``CHECK`` constraint refuses is
kept out alone (kind ``check``) while everything else merges.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from conflictmodels import Base, Item, Node, Note, Score, User
from sqlalchemy import ForeignKey, delete
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from syncworld import (
    Device,
    Devices,
    device_set,
    sync_all,
)

import dimpledb_sa as dimple

FK = pytest.mark.parametrize("foreign_keys", [(True, True), (False, False), (True, False),
                                              (False, True)],
                             ids=["on", "off", "on-off", "off-on"])


@pytest.fixture
def devs(tmp_path: Path) -> Iterator[Devices]:
    top = f"/foreign-keys-{uuid.uuid4().hex}"
    with device_set(tmp_path, f"memory:/{top}/remote", encryption=False) as d:
        yield d
    fs = fsspec.filesystem("memory")
    if fs.exists(top):
        fs.rm(top, recursive=True)


def pair(devs: Devices, foreign_keys: tuple[bool, bool]) -> tuple[Device, Device]:
    return (devs.new("a", models=Base, foreign_keys=foreign_keys[0]),
            devs.new("b", models=Base, foreign_keys=foreign_keys[1]))


def converged(*devices: Device) -> None:
    first = devices[0]
    for d in devices[1:]:
        assert d.snapshot() == first.snapshot(), d.name
        assert d.log() == first.log(), d.name
        assert d.db.conflicts() == first.db.conflicts(), d.name
        assert d.held() == first.held(), d.name


def conflicts(dev: Device) -> list[tuple[str, str, str, str | None, str | None]]:
    return sorted((c.kind, c.entity_type, c.entity_id, c.attribute, c.other_entity_id)
                  for c in dev.db.conflicts())


# --------------------------------------------------------------------------- capture


@FK
def test_a_database_cascade_is_recorded(devs: Devices, foreign_keys: tuple[bool, bool]
                                        ) -> None:
    a, b = pair(devs, foreign_keys)
    u = User(email="u@x")
    a.add(u)
    items = [Item(user_id=u.id, title=t) for t in "xy"]
    a.add(*items)
    note = Note(item_id=items[0].id, text="on x")
    a.add(note)
    sync_all(a, b)
    a.delete(User, u.id)  # no relationship: the database's ON DELETE CASCADE (or ours)
    assert a.rows(Item) == []
    for item in items:
        assert a.db.history(Item, item.id)[-1].new_value is None
    nulled = a.db.history(Note, note.id)[-1]  # and the note's SET NULL, behind it
    assert (nulled.attribute, nulled.old_value, nulled.new_value) == (
        "item_id", items[0].id, None)
    assert a.get(Note, note.id) == {"id": note.id, "item_id": None, "text": "on x"}
    sync_all(a, b)
    converged(a, b)
    assert b.rows(Item) == [] and a.db.conflicts() == []


@FK
def test_a_cascade_the_orm_also_does_is_recorded_once(
        devs: Devices, foreign_keys: tuple[bool, bool]) -> None:
    class Base2(DeclarativeBase):
        pass

    class Owner(Base2):
        __tablename__ = "owner"
        id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
        pets: Mapped[list[Pet]] = relationship(cascade="all, delete-orphan",
                                               passive_deletes=True)

    class Pet(Base2):
        __tablename__ = "pet"
        id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
        owner_id: Mapped[str] = mapped_column(ForeignKey("owner.id", ondelete="CASCADE"))

    a = devs.new("a", models=Base2, foreign_keys=foreign_keys[0])
    owner = Owner()
    a.add(owner)
    pets = [Pet(owner_id=owner.id) for _ in range(3)]
    a.add(*pets)
    with a.Session() as s:
        loaded = s.get(Owner, owner.id)
        assert loaded is not None
        loaded.pets[0]  # one pet loaded: the ORM deletes it, the database the others
        s.delete(loaded)
        s.commit()
    for pet in pets:
        assert [c.new_value for c in a.db.history(Pet, pet.id)][1:] == [owner.id, None]
    assert a.rows(Pet) == []


@FK
def test_an_orm_delete_statement_records_the_cascade_too(
        devs: Devices, foreign_keys: tuple[bool, bool]) -> None:
    a, b = pair(devs, foreign_keys)
    users = [User(email=f"{n}@x") for n in range(3)]
    a.add(*users)
    items = [Item(user_id=u.id, title="t") for u in users]
    a.add(*items)
    with a.Session() as s:
        s.execute(delete(User).where(User.email != "2@x"))
        s.commit()
    assert [r[0] for r in a.rows(Item)] == [items[2].id]
    for item in items[:2]:
        assert a.db.history(Item, item.id)[-1].new_value is None
    sync_all(a, b)
    converged(a, b)
    assert b.db.conflicts() == []


# --------------------------------------------------------------------------- merge


@FK
def test_a_child_added_to_a_deleted_parent_is_kept_out_until_it_is_back(
        devs: Devices, foreign_keys: tuple[bool, bool]) -> None:
    a, b = pair(devs, foreign_keys)
    u = User(email="u@x")
    a.add(u)
    sync_all(a, b)
    a.delete(User, u.id)
    child = Item(user_id=u.id, title="new")
    b.add(child)
    sync_all(a, b)
    converged(a, b)
    assert b.rows(Item) == [] and b.rows(User) == []
    assert conflicts(a) == [("foreign_key", "item", child.id, "user_id", u.id)]

    b.add(User(id=u.id, email="back@x"))  # the parent comes back: so does its child
    reports = sync_all(a, b)
    converged(a, b)
    assert reports[-1].conflicts == 0
    assert a.get(Item, child.id) == {"id": child.id, "user_id": u.id, "title": "new"}


@FK
def test_discard_drops_a_kept_out_child(devs: Devices, foreign_keys: tuple[bool, bool]
                                       ) -> None:
    a, b = pair(devs, foreign_keys)
    u = User(email="u@x")
    a.add(u)
    sync_all(a, b)
    a.delete(User, u.id)
    b.add(Item(user_id=u.id, title="new"))
    sync_all(a, b)
    [conflict] = b.db.conflicts()
    b.db.discard(conflict)
    a.add(User(id=u.id, email="back@x"))  # the parent back: the child stays deleted
    sync_all(a, b)
    converged(a, b)
    assert a.rows(Item) == [] and a.db.conflicts() == []


@FK
def test_a_set_null_key_is_nulled_while_its_parent_is_gone(
        devs: Devices, foreign_keys: tuple[bool, bool]) -> None:
    a, b = pair(devs, foreign_keys)
    u = User(email="u@x")
    a.add(u)
    item = Item(user_id=u.id, title="i")
    a.add(item)
    sync_all(a, b)
    a.delete(Item, item.id)
    note = Note(item_id=item.id, text="added meanwhile")
    b.add(note)
    sync_all(a, b)
    converged(a, b)
    assert b.get(Note, note.id) == {"id": note.id, "item_id": None, "text": "added meanwhile"}
    assert conflicts(b) == [("foreign_key", "note", note.id, "item_id", item.id)]
    assert b.db.history(Note, note.id)[-1].new_value == "added meanwhile"  # nothing recorded

    a.add(Item(id=item.id, user_id=u.id, title="again"))
    sync_all(a, b)
    converged(a, b)
    assert b.get(Note, note.id) == {"id": note.id, "item_id": item.id,
                                    "text": "added meanwhile"}
    assert b.db.conflicts() == []


@FK
def test_a_tree_loses_the_branch_under_a_deleted_node(
        devs: Devices, foreign_keys: tuple[bool, bool]) -> None:
    a, b = pair(devs, foreign_keys)
    root = Node(name="root")
    a.add(root)
    branch = Node(parent_id=root.id, name="branch")
    a.add(branch)
    sync_all(a, b)
    a.delete(Node, branch.id)  # a deletes a node ...
    leaf = Node(parent_id=branch.id, name="leaf")
    b.add(leaf)  # ... b grows it, two levels deep
    tip = Node(parent_id=leaf.id, name="tip")
    b.add(tip)
    sync_all(a, b)
    converged(a, b)
    assert [r[0] for r in a.rows(Node)] == [root.id]
    assert conflicts(a) == sorted([("foreign_key", "node", leaf.id, "parent_id", branch.id),
                                   ("foreign_key", "node", tip.id, "parent_id", leaf.id)])

    a.delete(Node, root.id)  # and a whole tree goes by the database's cascade
    sync_all(a, b)
    converged(a, b)
    assert a.rows(Node) == []


def test_a_tree_arrives_parents_first(devs: Devices) -> None:
    a, b = pair(devs, (True, True))
    nodes = [Node(name="0")]
    for k in range(1, 6):
        nodes.append(Node(parent_id=nodes[-1].id, name=str(k)))
    a.add(*reversed(nodes))  # one transaction, children before parents
    sync_all(a, b)
    converged(a, b)
    assert len(b.rows(Node)) == 6 and b.db.conflicts() == []


def test_a_parent_never_seen_is_waited_for_not_a_conflict(devs: Devices) -> None:
    a, b = pair(devs, (False, False))
    ghost = dimple.new_id()
    a.add(Item(user_id=ghost, title="orphan"))  # foreign keys off: the database lets it be
    report = a.sync()
    assert a.rows(Item) == [] and report.held == 1 and report.conflicts == 0
    b.add(User(id=ghost, email="g@x"))  # the parent arrives: the child applies
    sync_all(b, a)
    sync_all(a, b)
    converged(a, b)
    assert len(a.rows(Item)) == 1 and a.held() == []


# --------------------------------------------------------------------------- check


class LooseBase(DeclarativeBase):
    """``score`` as a device without the CHECK constraint has it."""


class LooseScore(LooseBase):
    __tablename__ = "score"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    points: Mapped[int]


def test_a_row_the_database_refuses_is_kept_out_alone(devs: Devices) -> None:
    loose = devs.new("loose", models=LooseBase)
    strict = devs.new("strict", models=Base)
    bad, good = LooseScore(points=-1), LooseScore(points=3)
    loose.add(bad, good)
    strict.add(Score(points=1))
    sync_all(loose, strict)
    report = strict.sync()
    assert report.errors == {} and report.conflicts == 1
    assert sorted(r[1] for r in strict.rows(Score)) == [1, 3]
    [c] = strict.db.conflicts()
    assert (c.kind, c.entity_id, c.attribute) == ("check", bad.id, None)
    assert "refused" in c.detail

    with loose.Session() as s:  # fixed on its device: the row applies everywhere
        row = s.get(LooseScore, bad.id)
        assert row is not None
        row.points = 5
        s.commit()
    sync_all(loose, strict)
    assert sorted(r[1] for r in strict.rows(Score)) == [1, 3, 5]
    assert strict.db.conflicts() == []
