"""What the tracked tables' metadata declares that the merge keeps and capture records:
unique column sets and single-column foreign keys.

:func:`constraints_of` reads the ``Table`` objects once: every ``UniqueConstraint``, every
unique ``Index`` over plain columns without a ``WHERE`` clause, and ``unique=True`` columns
(which SQLAlchemy turns into one of those) become a :class:`UniqueSet`, less those that
contain the primary key (the key is unique by itself); every single-column foreign key
becomes a :class:`Reference` with its ``ON DELETE`` action. A reference is *checked* by the
merge when its parent is a tracked table, it points at the parent's key, and the parent
sorts before the child (parents first) or is the child itself (a tree); other foreign keys
(to untracked tables, to other columns, or closing a cycle between tables) are left to the
database. Nothing here reads or writes a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, ForeignKeyConstraint, Index, UniqueConstraint

from .tracking import parents_first

if TYPE_CHECKING:
    from sqlalchemy import Table

    from .tracking import TrackedTable

__all__ = ["Constraints", "Reference", "UniqueSet", "constraints_of"]


@dataclass(frozen=True)
class UniqueSet:
    """Columns whose values, taken together, no two rows may share (unless one is null)."""

    columns: tuple[str, ...]

    @property
    def label(self) -> str:
        return ",".join(self.columns)


@dataclass(frozen=True)
class Reference:
    """A single-column foreign key ``table.column -> parent.parent_column``."""

    table: str
    column: str
    parent: str
    parent_column: str
    ondelete: str  # upper case: "CASCADE", "SET NULL", "RESTRICT", "NO ACTION" or ""
    nullable: bool
    checked: bool  # the merge keeps it (see the module docstring)

    @property
    def sets_null(self) -> bool:
        """``ON DELETE SET NULL`` on a nullable column: a missing parent nulls the column."""
        return self.ondelete == "SET NULL" and self.nullable

    @property
    def cascades(self) -> bool:
        return self.ondelete == "CASCADE"


@dataclass
class Constraints:
    """The unique sets and references of a set of tracked tables, by table name."""

    uniques: dict[str, list[UniqueSet]] = field(default_factory=dict)
    references: dict[str, list[Reference]] = field(default_factory=dict)  # by child table
    referrers: dict[str, list[Reference]] = field(default_factory=dict)  # checked, by parent
    order: list[str] = field(default_factory=list)  # tracked tables, parents first

    def constrained(self, name: str) -> bool:
        """Whether the merge must resolve ``name``'s entities together (it has unique sets
        or checked references, or checked references point at it)."""
        return bool(self.uniques.get(name) or self.referrers.get(name)
                    or any(r.checked for r in self.references.get(name, ())))

    def checked(self, name: str) -> list[Reference]:
        return [r for r in self.references.get(name, ()) if r.checked]

    def relevant(self, name: str, key: str) -> set[str]:
        """The attributes of ``name`` whose local changes can change what the rules decide:
        the key, the unique columns and the checked foreign-key columns (empty when the
        table is not constrained)."""
        if not self.constrained(name):
            return set()
        out = {key}
        for u in self.uniques.get(name, ()):
            out.update(u.columns)
        out.update(r.column for r in self.checked(name))
        return out


def _plain_columns(index: Index) -> tuple[str, ...] | None:
    cols: list[str] = []
    for expr in index.expressions:
        if not isinstance(expr, Column):
            return None
        cols.append(expr.name)
    for options in index.dialect_options.values():
        if _option(options, "where") is not None:
            return None  # a partial index: only the database can tell
    return tuple(cols)


def _option(options: Any, name: str) -> Any:
    try:
        return options[name]
    except (KeyError, TypeError):
        return None


def unique_sets(table: Table) -> list[UniqueSet]:
    """The unique column sets ``table`` declares, without those holding its primary key."""
    pk = {c.name for c in table.primary_key.columns}
    found: list[tuple[str, ...]] = []
    for con in table.constraints:
        if isinstance(con, UniqueConstraint):
            found.append(tuple(c.name for c in con.columns))
    for index in table.indexes:
        if index.unique:
            cols = _plain_columns(index)
            if cols:
                found.append(cols)
    out: list[UniqueSet] = []
    for cols in sorted(set(found)):
        if cols and not pk & set(cols):
            out.append(UniqueSet(cols))
    return out


def _references(tt: TrackedTable, tracked: dict[str, TrackedTable],
                rank: dict[str, int]) -> list[Reference]:
    out: list[Reference] = []
    table = tt.table
    for fkc in sorted(table.foreign_key_constraints, key=lambda f: tuple(f.column_keys)):
        if not isinstance(fkc, ForeignKeyConstraint) or len(fkc.elements) != 1:
            continue
        element = fkc.elements[0]
        column = element.parent
        try:
            target = element.column
        except Exception:  # an unresolvable target (a table not in the metadata)
            continue
        parent = tracked.get(target.table.name)
        checked = (parent is not None and parent.table is target.table
                   and target is parent.pk
                   and (parent is tt or rank[parent.name] < rank[tt.name]))
        out.append(Reference(tt.name, column.name, target.table.name, target.name,
                             (fkc.ondelete or "").upper(), bool(column.nullable), checked))
    return out


def constraints_of(tracked: dict[str, TrackedTable]) -> Constraints:
    """The :class:`Constraints` of ``tracked``."""
    order = [t.name for t in parents_first(tracked)]
    rank = {name: i for i, name in enumerate(order)}
    out = Constraints(order=order)
    for name in order:
        tt = tracked[name]
        uniques = unique_sets(tt.table)
        if uniques:
            out.uniques[name] = uniques
        refs = _references(tt, tracked, rank)
        if refs:
            out.references[name] = refs
            for r in refs:
                if r.checked:
                    out.referrers.setdefault(r.parent, []).append(r)
    return out
