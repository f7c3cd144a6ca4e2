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
