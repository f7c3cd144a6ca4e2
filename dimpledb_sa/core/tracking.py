"""Which tables are tracked, and how: resolving the models argument and checking keys.

:func:`resolve_tables` turns what the user passed to ``DimpleDb`` (a ``DeclarativeBase``
subclass, ``SQLModel`` or any class with a ``metadata``, a ``MetaData``, or an iterable of
mapped classes and ``Table`` objects) into :class:`TrackedTable` records, raising
:class:`ConfigurationError` for a table whose primary key cannot identify a row across
devices (with the fix written the way the table was declared: SQLModel ``Field``,
``Mapped``, declarative or Core ``Column``), or with a column whose pulled values would be
unpickled (``PickleType``, unless the column opts in with :data:`ALLOW_PICKLE`).
:func:`mapper_plans` precomputes, per ORM mapper and tracked table, the column attributes
capture reads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, Table
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import ArgumentError, NoInspectionAvailable, SQLAlchemyError
from sqlalchemy.orm import ColumnProperty, Mapper, class_mapper
from sqlalchemy.orm.exc import UnmappedClassError
from sqlalchemy.schema import Column

from ._compat import mapped_classes
from .errors import ConfigurationError
from .schema import BOOKKEEPING_PREFIX
from .values import Codec, codec_for, exact_encoder, unsafe_reason

__all__ = [
    "ALLOW_PICKLE",
    "MapperPlan",
    "TrackedTable",
    "declared_with_sqlmodel",
    "mapper_plan",
    "mapper_plans",
    "parents_first",
    "resolve_tables",
]


ALLOW_PICKLE = "dimpledb_allow_pickle"
"""The ``Column.info`` key that lets a ``PickleType`` column be tracked anyway:
``mapped_column(PickleType, info={"dimpledb_allow_pickle": True})``. Every device that can
write to the remote (anyone holding a key this database trusts, or any writer when
signatures are not required) can then run code on this device: see ``docs/API.md``."""


@dataclass(eq=False)
class TrackedTable:
    """A tracked table: its key column and a codec per column (by column name)."""

    table: Table
    pk: Column[Any]
    codecs: dict[str, Codec] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def pk_name(self) -> str:
        return self.pk.name


@dataclass(eq=False)
class MapperPlan:
    """What capture reads from one mapper's instances, precomputed for the hot path.

    ``attrs``: (attribute key, column name, codec) of every column of the tracked table;
    ``value_columns``/``value_encoders``: the same less the key, in insert order;
    ``by_key``: attribute key -> (position, key, column name, codec), the key column left
    out; ``single``: attribute key -> (the names text of that column alone, its encoder, and
    :func:`.values.exact_encoder`'s type and function, or ``None`` twice);
    ``insert_names_json``/``insert_olds_json``: the packed-row text of an insert's
    names (key first) and old values (all null); :meth:`names_json` the text of other
    lists of column names (cached).
    """

    tracked: TrackedTable
    attrs: list[tuple[str, str, Codec]]
    pk_key: str
    name: str = ""
    value_columns: list[tuple[str, str]] = field(default_factory=list)
    value_encoders: list[tuple[str, Any]] = field(default_factory=list)
    by_key: dict[str, tuple[int, str, str, Codec]] = field(default_factory=dict)
    single: dict[str, tuple[str, Any, Any, Any]] = field(default_factory=dict)
    pk_encode: Any = None
    pk_names_json: str = ""
    insert_names: list[str] = field(default_factory=list)
    insert_names_json: str = ""
    insert_olds_json: str = ""
    _names: dict[Any, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tt = self.tracked
        self.name = tt.name
        self.value_columns = [(k, c) for k, c, _ in self.attrs if c != tt.pk_name]
        self.value_encoders = [(k, codec.encode) for k, c, codec in self.attrs
                               if c != tt.pk_name]
        self.by_key = {k: (i, k, c, codec) for i, (k, c, codec) in enumerate(self.attrs)
                       if c != tt.pk_name}
        self.single = {k: (json.dumps([c]), codec.encode, *exact_encoder(codec))
                       for k, c, codec in self.attrs if c != tt.pk_name}
        self.pk_encode = tt.codecs[tt.pk_name].encode
        self.pk_names_json = json.dumps([tt.pk_name])
        self.insert_names = [tt.pk_name] + [c for _, c in self.value_columns]
        self.insert_names_json = json.dumps(self.insert_names)
        self.insert_olds_json = "[" + ",".join(["null"] * len(self.insert_names)) + "]"

    def names_json(self, names: tuple[str, ...]) -> str:
        """``json.dumps(list(names))``, cached per tuple of column names."""
        try:
            return self._names[names]
        except KeyError:
            text = json.dumps(list(names))
            if len(self._names) < 4096:
                self._names[names] = text
            return text


def _is_sqlmodel(cls: type[Any]) -> bool:
    return any(c.__name__ == "SQLModel" and c.__module__.startswith("sqlmodel")
               for c in cls.__mro__)


def declared_with_sqlmodel(tracked: dict[str, TrackedTable]) -> bool:
    """Whether a SQLModel class maps one of the tracked tables (sessions then need
    SQLModel's ``exec()``)."""
    return any(_is_sqlmodel(cls) for tt in tracked.values() for cls in mapped_classes(tt.table))


def _key_example(table: Table) -> str:
    """How to declare a globally unique key, in the style the table was declared in:
    SQLModel ``Field``, annotated ``Mapped``, a declarative ``Column`` attribute or a Core
    ``Column`` (for a ``Table``)."""
    pks = list(table.primary_key.columns)
    name = pks[0].name if len(pks) == 1 else "id"
    classes = mapped_classes(table)
    cls = classes[0] if classes else None
    if cls is None:
        return f'Column("{name}", String(36), primary_key=True, default=dimple.new_id)'
    key = name
    if len(pks) == 1:  # the attribute name, which may differ from the column's
        with contextlib.suppress(SQLAlchemyError, KeyError, AttributeError):
            key = class_mapper(cls).get_property_by_column(pks[0]).key
    if _is_sqlmodel(cls):
        return f"{key}: str = Field(default_factory=dimple.new_id, primary_key=True)"
    annotations: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        annotations.update(getattr(c, "__annotations__", {}))
    named = f'"{name}", ' if key != name else ""  # the column's name, when not the key's
    if key in annotations or any("Mapped" in str(a) for a in annotations.values()):
        return (f"{key}: Mapped[str] = mapped_column({named}primary_key=True, "
                "default=dimple.new_id)")
    return f"{key} = Column({named}String(36), primary_key=True, default=dimple.new_id)"


def _fix_hint(table: Table) -> str:
    return (
        f"give {table.name!r} a single primary-key column holding a globally unique value, "
        f"e.g. `{_key_example(table)}`, "
        f"or leave it untracked with DimpleDb(..., exclude=[{table.name!r}])"
    )


def _check_table(table: Table) -> TrackedTable:
    pks = list(table.primary_key.columns)
    if not pks:
        raise ConfigurationError(f"table {table.name!r} has no primary key: {_fix_hint(table)}")
    if len(pks) > 1:
        names = ", ".join(c.name for c in pks)
        raise ConfigurationError(
            f"table {table.name!r} has a composite primary key ({names}): {_fix_hint(table)}"
        )
    pk = pks[0]
    t = pk.type
    while isinstance(t, sqltypes.TypeDecorator):
        t = t.impl_instance
    if not isinstance(t, sqltypes.String | sqltypes.Uuid) or isinstance(t, sqltypes.Enum):
        raise ConfigurationError(
            f"table {table.name!r} has primary key {pk.name!r} of type {pk.type}, which cannot "
            f"identify a row across devices (an autoincrement integer repeats on every "
            f"device): {_fix_hint(table)}"
        )
    for column in table.columns:
        why = unsafe_reason(column.type)
        if why is not None and column.info.get(ALLOW_PICKLE) is not True:
            raise ConfigurationError(
                f"column {table.name}.{column.name} cannot be tracked safely: {why}, so a "
                "value pulled from another device could run code on this one. Store it as "
                "JSON or LargeBinary instead, leave the table untracked with "
                f"DimpleDb(..., exclude=[{table.name!r}]), or, if you trust every device "
                f"that can write to the remote, opt in with info={{{ALLOW_PICKLE!r}: True}} "
                "on the column")
    return TrackedTable(table, pk, {c.name: codec_for(c) for c in table.columns})


def _add(obj: Any, tables: dict[str, Table]) -> None:
    if isinstance(obj, Table):
        tables[obj.name] = obj
        return
    if isinstance(obj, MetaData):
        tables.update((t.name, t) for t in obj.tables.values())
        return
    md = getattr(obj, "metadata", None) if isinstance(obj, type) else None
    if isinstance(md, MetaData) and getattr(obj, "__table__", None) is None:
        # a declarative base, SQLModel, or any class with a metadata: all of its tables
        tables.update((t.name, t) for t in md.tables.values())
        return
    try:
        mapper = class_mapper(obj)
    except (UnmappedClassError, ArgumentError, NoInspectionAvailable, TypeError):
        raise ConfigurationError(
            f"cannot track {obj!r}: pass a DeclarativeBase subclass, SQLModel (or another "
            "class with a metadata), a MetaData, or an iterable of mapped classes and Table "
            "objects"
        ) from None
    for t in mapper.tables:
        if isinstance(t, Table):
            tables[t.name] = t


def _names(exclude: Iterable[Any]) -> set[str]:
    out: set[str] = set()
    for e in exclude:
        if isinstance(e, str):
            out.add(e)
        else:
            tables: dict[str, Table] = {}
            _add(e, tables)
            out.update(tables)
    return out


def resolve_tables(models: Any, exclude: Iterable[Any] = ()) -> dict[str, TrackedTable]:
    """The tracked tables named by ``models`` less ``exclude``, keyed by table name."""
    tables: dict[str, Table] = {}
    if isinstance(models, Table | MetaData | type):
        _add(models, tables)
    elif isinstance(models, Iterable):
        for m in models:
            _add(m, tables)
    else:
        _add(models, tables)
    skip = _names(exclude)
    out: dict[str, TrackedTable] = {}
    for name, table in tables.items():
        if name in skip or name.startswith(BOOKKEEPING_PREFIX):
            continue
        out[name] = _check_table(table)
    if not out:
        raise ConfigurationError("no tables to track: models (less exclude) hold no table")
    return out


def mapper_plan(mapper: Mapper[Any], tracked: dict[str, TrackedTable]) -> MapperPlan | None:
    """The capture plan of ``mapper``'s own table, or ``None`` when it is not tracked."""
    table = mapper.local_table
    return _table_plan(mapper, table, tracked) if isinstance(table, Table) else None


def mapper_plans(mapper: Mapper[Any], tracked: dict[str, TrackedTable]
                 ) -> tuple[MapperPlan, ...]:
    """A plan per tracked table an instance of ``mapper`` is stored in, base table first:
    one table, or with joined-table inheritance the tables of the mapper and its parents."""
    tables: list[Table] = []
    for m in mapper.iterate_to_root():
        t = m.local_table
        if isinstance(t, Table) and t not in tables:
            tables.insert(0, t)
        if m.concrete:
            break
    plans = (_table_plan(mapper, t, tracked) for t in tables)
    return tuple(p for p in plans if p is not None)


def _table_plan(mapper: Mapper[Any], table: Table, tracked: dict[str, TrackedTable]
                ) -> MapperPlan | None:
    if table.name not in tracked:
        return None
    tt = tracked[table.name]
    if tt.table is not table:
        return None
    attrs: list[tuple[str, str, Codec]] = []
    pk_key = tt.pk.name
    for prop in mapper.column_attrs:
        if not isinstance(prop, ColumnProperty):
            continue
        for col in prop.columns:
            if isinstance(col, Column) and col.table is table:
                attrs.append((prop.key, col.name, tt.codecs[col.name]))
                if col is tt.pk:
                    pk_key = prop.key
                break
    return MapperPlan(tt, attrs, pk_key)


def parents_first(tracked: dict[str, TrackedTable]) -> list[TrackedTable]:
    """The tracked tables, parents before children (as their ``MetaData`` sorts them by
    foreign key), then by name: the order inserts go in; deletes go in reverse."""
    order: dict[str, int] = {}
    for md in {id(t.table.metadata): t.table.metadata for t in tracked.values()}.values():
        for t in md.sorted_tables:
            order.setdefault(t.name, len(order))
    return sorted(tracked.values(), key=lambda t: (order.get(t.name, len(order)), t.name))
