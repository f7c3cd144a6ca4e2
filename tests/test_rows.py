"""Row reads and writes of ``core.rows``: ``fetch_rows`` on SQLite spells its own statement
only for column types that leave the SQL alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import String, TypeDecorator, create_engine, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple
from dimpledb_sa.core.rows import fetch_rows


class Lowered(TypeDecorator[str]):
    """Read through ``lower()`` in SQL, looked up through ``upper()``."""

    impl = String
    cache_ok = True

    def column_expression(self, col: Any) -> Any:
        return func.lower(col)

    def bind_expression(self, value: Any) -> Any:
        return func.upper(value)


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "plain"
    id: Mapped[str] = mapped_column(primary_key=True)
    word: Mapped[str] = mapped_column(Lowered)


class Keyed(Base):
    __tablename__ = "keyed"
    id: Mapped[str] = mapped_column(Lowered, primary_key=True)
    word: Mapped[str]


def test_types_that_wrap_their_sql_are_read_as_select_reads_them(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    db = dimple.DimpleDb(engine, Base, encryption=False)
    try:
        db.create_all()
        with engine.begin() as conn:
            conn.execute(insert(Plain.__table__).values(id="p", word="ABC"))
            conn.execute(insert(Keyed.__table__).values(id="k", word="w"))
            want = conn.execute(select(Plain.word)).scalar_one()
            assert want == "abc"
            assert fetch_rows(conn, db.replica.tracked["plain"], ["p"]) == {
                "p": {"id": "p", "word": "abc"}}
            found = fetch_rows(conn, db.replica.tracked["keyed"], ["k"])
            assert [r["word"] for r in found.values()] == ["w"]
    finally:
        db.close()
        engine.dispose()


def test_bound_values_are_what_the_processors_make() -> None:
    """Known without a call per value: floats through ``to_float``, booleans through
    SQLite's processor (integers) or PostgreSQL's (as they are); anything else, or a null
    among booleans, is left to the processor (``None``)."""
    from sqlalchemy import Boolean, Float, Integer
    from sqlalchemy.dialects import postgresql, sqlite

    from dimpledb_sa.core.rows import bound_values

    def check(t: Any, dialect: Any, values: list[Any]) -> Any:
        impl = t.dialect_impl(dialect)
        proc = impl.bind_processor(dialect)
        got = bound_values(impl, proc, values)
        if got is not None:  # exactly what the processor makes, of the same types
            made = [None if v is None else proc(v) for v in values]
            assert list(got) == made and list(map(type, got)) == list(map(type, made))
        return got

    lite, pg = sqlite.dialect(), postgresql.dialect()
    assert check(Float(), lite, [1.5, None, -0.0]) == [1.5, None, -0.0]
    assert check(Float(), lite, [1.5, 2]) is None  # an integer: float() of it
    assert check(Boolean(), lite, [True, False]) == [1, 0]
    assert check(Boolean(), pg, [True, False]) == [True, False]
    assert check(Boolean(), lite, [True, None]) is None
    assert check(Boolean(), lite, [1, 0]) is None  # not booleans: the processor decides
    assert check(Integer(), lite, [1]) is None or Integer().bind_processor(lite) is None
