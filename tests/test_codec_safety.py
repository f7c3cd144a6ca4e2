"""Pulled values never run code (``core/values.py``, ``core/tracking.py``): a tracked
``PickleType`` column is refused unless it opts in, and a forged pickle payload pulled into
a refused (untracked) table stays held and never runs; with the opt-in it runs, which is
the risk the docs state."""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    PickleType,
    String,
    Text,
    Time,
    TypeDecorator,
    Uuid,
    create_engine,
)
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from trusttools import Item, open_db

import alembic_ext
import dimpledb_sa as dimple
from dimpledb_sa.core.tracking import ALLOW_PICKLE, resolve_tables
from dimpledb_sa.core.values import unsafe_reason


class Payload:
    """Unpickling this creates the folder ``path``: the stand-in for any code at all."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, int, bool]]:
        return (os.makedirs, (self.path, 0o777, True))


class AttackerBase(DeclarativeBase):
    pass


class ForgedBlob(AttackerBase):
    """What another device declares: plain bytes, which travel as base64, exactly the
    encoding of a PickleType value."""

    __tablename__ = "blob"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class VictimBase(DeclarativeBase):
    pass


class Blob(VictimBase):
    __tablename__ = "blob"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    data: Mapped[Any] = mapped_column(PickleType)


class OptedInBase(DeclarativeBase):
    pass


class TrustedBlob(OptedInBase):
    __tablename__ = "blob"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    data: Mapped[Any] = mapped_column(PickleType, info={ALLOW_PICKLE: True})


class Wrapped(TypeDecorator[Any]):
    impl = PickleType
    cache_ok = True


class Color(enum.Enum):
    red = 1


def test_pickle_columns_are_refused_unless_they_opt_in(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'v.db'}")
    try:
        with pytest.raises(dimple.ConfigurationError) as e:
            dimple.DimpleDb(engine, VictimBase)
        message = str(e.value)
        assert "blob.data" in message and "run code" in message
        assert ALLOW_PICKLE in message and "exclude=['blob']" in message
        dimple.DimpleDb(engine, OptedInBase).close()
    finally:
        engine.dispose()


@pytest.mark.parametrize("t", [PickleType(), Wrapped(), MutableDict.as_mutable(PickleType()),
                               ARRAY(PickleType()), PickleType(pickler=None)])
def test_unsafe_types_are_found_inside_wrappers(t: Any) -> None:
    assert unsafe_reason(t) is not None
    from sqlalchemy import Column, MetaData, Table

    table = Table("t", MetaData(), Column("id", String, primary_key=True), Column("v", t))
    with pytest.raises(dimple.ConfigurationError, match=r"t\.v cannot be tracked safely"):
        resolve_tables(table)


@pytest.mark.parametrize("t", [String(), Text(), Integer(), BigInteger(), Float(), Numeric(),
                               Boolean(), Date(), DateTime(), Time(), LargeBinary(), JSON(),
                               Enum(Color), Uuid(), Interval(), ARRAY(Integer())])
def test_every_other_codec_only_parses(t: Any) -> None:
    assert unsafe_reason(t) is None


HOSTILE = ['"__import__(\'os\').system(\'x\')"', '{"__class__": "x"}', '"AAAA!"', "[1, 2]",
           '"red; drop"', "1e999", '"' + "9" * 5000 + '"', "true", "null", '"P999999999D"',
           "-1e308", '"2024-13-45"', "1e400"]


@pytest.mark.parametrize("t", [String(), Integer(), Float(), Numeric(), Date(), DateTime(),
                               Time(), LargeBinary(), Enum(Color), Uuid(), Uuid(as_uuid=False),
                               Interval(), Boolean(), JSON()])
def test_hostile_values_for_safe_codecs_raise_only_apply_errors(t: Any) -> None:
    """Decoders given what a forged bundle could hold fail as parsers fail (errors the
    merge treats as a change it cannot apply), never by running anything."""
    from sqlalchemy import Column

    from dimpledb_sa.core.values import codec_for
    from dimpledb_sa.sync.merge import APPLY_ERRORS

    codec = codec_for(Column("c", t))
    for text in HOSTILE:
        with contextlib.suppress(*APPLY_ERRORS):
            codec.decode(text)


@pytest.fixture
def forged(tmp_path: Path) -> tuple[str, Path, str]:
    """Another device holding the key writes a row whose bytes are a pickle payload."""
    identity, _ = dimple.generate_identity()
    remote = str(tmp_path / "remote")
    canary = tmp_path / "PWNED"
    engine = create_engine(f"sqlite:///{tmp_path / 'attacker.db'}")
    db = dimple.DimpleDb(engine, AttackerBase, remote=remote, identity=identity)
    db.create_all()
    with db.sessionmaker()() as session:
        session.add(ForgedBlob(data=pickle.dumps(Payload(canary))))
        session.commit()
    db.sync()
    db.close()
    engine.dispose()
    return remote, canary, identity


def test_a_forged_pickle_in_a_refused_table_never_runs(tmp_path: Path,
                                                       forged: tuple[str, Path, str]) -> None:
    remote, canary, identity = forged
    path = tmp_path / "victim.db"
    engine = create_engine(f"sqlite:///{path}")
    VictimBase.metadata.create_all(engine)  # the app's table exists, only untracked
    engine.dispose()
    with open_db(path, remote, identity=identity) as db:  # tracks Item only
        assert set(db.tracked) == {Item.__tablename__}
        report = db.sync()
        assert report.pulled == 1 and report.held > 0  # kept, never dropped
        assert db.replay_held() == 0
        with db.engine.begin() as conn:  # an Alembic upgrade replaying with the app's types
            assert alembic_ext.replay_held(conn, VictimBase.metadata) == 0
    assert not canary.exists()


def test_with_the_opt_in_the_payload_runs(tmp_path: Path,
                                          forged: tuple[str, Path, str]) -> None:
    remote, canary, identity = forged
    engine = create_engine(f"sqlite:///{tmp_path / 'trusting.db'}")
    db = dimple.DimpleDb(engine, OptedInBase, remote=remote, identity=identity)
    try:
        db.create_all()
        assert not canary.exists()
        db.sync()
        assert canary.exists()  # the documented risk: any writer to the remote runs code
    finally:
        db.close()
        engine.dispose()
