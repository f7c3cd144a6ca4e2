"""Tests for SQLModel applications: ``DimpleDb(engine, SQLModel)``, the sessions of
``dimpledb_sa.sqlmodel`` (``exec()`` and ``sync()``), and set-up errors written in the
user's own style (``core.tracking``).

The models are ``sqlmodels.py``'s users and items, shaped like FastAPI's full-stack template.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlmodel
from aioworld import aiosqlite_engine, async_device, async_test
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, declarative_base, mapped_column
from sqlmodel import SQLModel, select
from sqlmodels import BadBase, Counter, Item, User
from syncworld import Device, Devices, device_set

import dimpledb_sa as dimple
import dimpledb_sa.sqlmodel as dimple_sqlmodel


@pytest.fixture
def devs(tmp_path: Path) -> Iterator[Devices]:
    with device_set(tmp_path, str(tmp_path / "remote")) as d:
        yield d


def new_user(email: str, *titles: str) -> User:
    user = User(email=email, hashed_password="x")
    user.items = [Item(title=t, owner_id=user.id) for t in titles]
    return user


def titles(dev: Device) -> list[str]:
    with dev.Session() as s:
        return sorted(s.exec(select(Item.title)).all())


# --------------------------------------------------------------------------- models and sessions


def test_sqlmodel_is_accepted_as_models(devs: Devices) -> None:
    a = devs.new("a", models=SQLModel)
    assert {"user", "item"} <= set(a.db.tracked)
    assert a.db.uses_sqlmodel
    assert a.db.tracked_table(User).pk.name == "id"
    b = devs.new("b", models=[User, Item])  # the table classes work too
    assert sorted(b.db.tracked) == ["item", "user"]


def test_sessions_have_exec_and_sync_and_are_captured(devs: Devices) -> None:
    a = devs.new("a", models=SQLModel)
    b = devs.new("b", models=SQLModel)
    assert issubclass(a.Session.class_, dimple_sqlmodel.Session)
    with a.Session() as s:
        assert isinstance(s, sqlmodel.Session) and isinstance(s, dimple.Session)
        s.add(new_user("ada@example.com", "lamp", "desk"))
        report = s.sync()
        assert report.pushed == 1
        ada = s.exec(select(User).where(User.email == "ada@example.com")).one()
        assert isinstance(ada.id, uuid.UUID)
        history = a.db.history(User, ada.id)
        assert {c.attribute for c in history} >= {"id", "email", "hashed_password"}
    b.sync()
    assert titles(b) == ["desk", "lamp"]


def test_class_sqlmodel_session_is_captured_too(devs: Devices) -> None:
    a = devs.new("a", models=SQLModel)
    Session = a.db.sessionmaker(class_=sqlmodel.Session)
    with Session() as s:
        s.add(new_user("bob@example.com", "pen"))
        s.commit()
    assert a.sync().pushed == 1


def test_deleting_a_user_deletes_its_items_everywhere(devs: Devices) -> None:
    a = devs.new("a", models=SQLModel)
    b = devs.new("b", models=SQLModel)
    a.add(new_user("cy@example.com", "cup", "mug"))
    a.sync()
    b.sync()
    with b.Session() as s:
        cy = s.exec(select(User).where(User.email == "cy@example.com")).one()
        s.delete(cy)  # cascade_delete: the ORM deletes (and capture records) the items
        s.commit()
    b.sync()
    a.sync()
    assert titles(a) == [] and titles(b) == []


@async_test
async def test_async_sessions_have_exec_and_sync(tmp_path: Path, devs: Devices) -> None:
    b = devs.new("b", models=SQLModel)
    engine = aiosqlite_engine(tmp_path / "a.db")
    async with async_device(devs, engine, models=SQLModel) as adb:
        Session = adb.sessionmaker(expire_on_commit=False)
        async with Session() as s:
            assert isinstance(s, dimple_sqlmodel.AsyncSession)
            s.add(new_user("dee@example.com", "book"))
            await s.commit()
            found = (await s.exec(select(Item).where(Item.title == "book"))).one()
            assert isinstance(found.owner_id, uuid.UUID)
            report = await s.sync()
        assert report.pushed == 1
    b.sync()
    assert titles(b) == ["book"]


# ------------------------------------------------------------ errors, in the user's style


def refusal(models: object) -> str:
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    with pytest.raises(dimple.ConfigurationError) as err:
        dimple.DimpleDb(engine, models)
    engine.dispose()
    return str(err.value)


def test_an_integer_key_is_refused_with_a_sqlmodel_fix() -> None:
    for models in (BadBase, [Counter], BadBase.metadata):
        msg = refusal(models)
        assert "'counter'" in msg and "autoincrement" in msg
        assert "id: str = Field(default_factory=dimple.new_id, primary_key=True)" in msg
        assert "exclude=['counter']" in msg


def test_the_fix_follows_declarative_and_core_styles() -> None:
    class Base(DeclarativeBase):
        pass

    class Typed(Base):
        __tablename__ = "typed"
        key: Mapped[int] = mapped_column("ident", primary_key=True)

    assert ('key: Mapped[str] = mapped_column("ident", primary_key=True, '
            'default=dimple.new_id)') in refusal(Base)

    Old = declarative_base()

    class Classic(Old):  # type: ignore[valid-type, misc]
        __tablename__ = "classic"
        id = Column(Integer, primary_key=True)

    assert "id = Column(String(36), primary_key=True, default=dimple.new_id)" in refusal(Old)

    table = Table("core", MetaData(), Column("id", Integer, primary_key=True),
                  Column("name", String))
    assert ('Column("id", String(36), primary_key=True, default=dimple.new_id)'
            in refusal(table))


def test_a_class_without_tables_is_still_refused() -> None:
    class Empty:
        metadata = MetaData()

    assert "no tables to track" in refusal(Empty)
    assert "cannot track" in refusal([object()])
