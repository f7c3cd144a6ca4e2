"""Autogenerate filters: keep the bookkeeping tables out of Alembic's comparison.

``include_object`` and ``include_name`` are the hooks ``context.configure(...)`` takes in
``env.py``. Both answer ``False`` for the ``dimple_*`` tables (and their columns, indexes
and constraints), so ``alembic revision --autogenerate`` never proposes to create, drop or
alter them, whether or not ``target_metadata`` includes ``db.metadata``; everything else is
passed to the user's own filter, if any (``make_include_object(user_filter)``), else kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from dimpledb_sa.core.schema import BOOKKEEPING_PREFIX

__all__ = [
    "IncludeName",
    "IncludeObject",
    "include_name",
    "include_object",
    "is_bookkeeping",
    "make_include_name",
    "make_include_object",
]


class IncludeObject(Protocol):
    """Alembic's ``include_object`` hook: ``(object, name, type_, reflected, compare_to)``."""

    def __call__(self, object: Any, name: str | None, type_: str, reflected: bool,
                 compare_to: Any, /) -> bool: ...


class IncludeName(Protocol):
    """Alembic's ``include_name`` hook: ``(name, type_, parent_names)``."""

    def __call__(self, name: str | None, type_: str,
                 parent_names: Mapping[str, str | None], /) -> bool: ...


def is_bookkeeping(table_name: str | None) -> bool:
    """Whether ``table_name`` is one of dimpledb's bookkeeping tables (``dimple_*``)."""
    return bool(table_name) and str(table_name).startswith(BOOKKEEPING_PREFIX)


def _owner_table(obj: Any, type_: str, name: str | None) -> str | None:
    """The name of the table an autogenerate object belongs to (itself for a table)."""
    if type_ == "table":
        return name
    table = getattr(obj, "table", None)  # Column, Index, constraints
    if table is None:
        parent = getattr(obj, "parent", None)  # a ForeignKey's column
        table = getattr(parent, "table", None)
    return getattr(table, "name", None)


def make_include_object(user_filter: IncludeObject | None = None) -> IncludeObject:
    """An ``include_object`` hook: bookkeeping objects are out, the rest go to ``user_filter``."""

    def include_object(object: Any, name: str | None, type_: str, reflected: bool,
                       compare_to: Any) -> bool:
        if is_bookkeeping(_owner_table(object, type_, name)) or (
                compare_to is not None and is_bookkeeping(
                    _owner_table(compare_to, type_, name))):
            return False
        if user_filter is None:
            return True
        return bool(user_filter(object, name, type_, reflected, compare_to))

    return include_object


def make_include_name(user_filter: IncludeName | None = None) -> IncludeName:
    """An ``include_name`` hook: bookkeeping names are out, the rest go to ``user_filter``."""

    def include_name(name: str | None, type_: str,
                     parent_names: Mapping[str, str | None]) -> bool:
        table = name if type_ == "table" else parent_names.get("table_name")
        if is_bookkeeping(table):
            return False
        if user_filter is None:
            return True
        return bool(user_filter(name, type_, parent_names))

    return include_name


include_object: IncludeObject = make_include_object()
"""Pass as ``context.configure(include_object=...)``; no user filter."""

include_name: IncludeName = make_include_name()
"""Pass as ``context.configure(include_name=...)``; no user filter."""
