"""Rows a merge must hold because their foreign-key parent is missing, on databases that
check foreign keys at once (PostgreSQL).

SQLite with ``PRAGMA foreign_keys=ON`` lets the merge write everything, checks at the end
(``PRAGMA foreign_key_check``) and takes the orphans back out (``merge._hold_orphans``).
PostgreSQL refuses the first statement that breaks a key, so :func:`hold_orphans_first`
finds the same rows *before* the merge writes, from the merge's plans and a few queries:
rows it would insert or update to point at a parent that is not there (nor arriving), and
rows already here whose parent the merge deletes (and their own children, and so on). Their
writes are dropped from the plans, rows already stored are deleted instead, and each is held
(``missing parent row``) until the parent arrives, as on SQLite. Only single-column foreign
keys between tracked tables are handled; a broken key of another kind fails the author's
merge (rolled back to its savepoint and reported, as any constraint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Column, Connection, ForeignKey, select

from ..core import schema
from ..core.changes import ROW_ENTITY_ID, ROW_ENTITY_TYPE
from ..core.rows import chunks, insert_many

if TYPE_CHECKING:
    from ..core.replica import Replica
    from ..core.tracking import TrackedTable
    from .merge import MergeResult

__all__ = ["hold_orphans_first"]


class Plan(Protocol):
    """What :func:`hold_orphans_first` needs of a merge's ``_TablePlan``."""

    tt: TrackedTable
    inserts: list[dict[str, Any]]
    updates: dict[tuple[str, ...], list[dict[str, Any]]]
    deletes: list[Any]


def _links(replica: Replica) -> list[tuple[TrackedTable, Column[Any], TrackedTable,
                                          Column[Any]]]:
    """(child table, its column, parent table, the referenced column) of every single-column
    foreign key between tracked tables."""
    by_table = {tt.table: tt for tt in replica.tracked.values()}
    out = []
    for child in replica.tracked.values():
        for fkc in child.table.foreign_key_constraints:
            if len(fkc.elements) != 1:
                continue
            fk: ForeignKey = fkc.elements[0]
            parent = by_table.get(fk.column.table)
            if parent is not None:
                out.append((child, fk.parent, parent, fk.column))
    return out


def hold_orphans_first(replica: Replica, conn: Connection, plans: list[Plan],
                       result: MergeResult, new_plan: Callable[[TrackedTable], Plan]) -> None:
    """Drop from ``plans`` the writes that would break a foreign key, delete the stored rows
    left without a parent, and hold them all (see the module docstring). ``new_plan`` makes a
    plan for a table the merge did not touch (a local child of a deleted parent)."""
    links = _links(replica)
    if not links:
        return
    by_name: dict[str, Plan] = {p.tt.name: p for p in plans}

    def plan_of(tt: TrackedTable) -> Plan:
        found = by_name.get(tt.name)
        if found is None:
            found = by_name[tt.name] = new_plan(tt)
            plans.append(found)
        return found

    held: set[tuple[str, str]] = set()
    while True:
        leaving = {name: {str(k): k for k in p.deletes} for name, p in by_name.items()}
        changed = _cascade(conn, links, leaving, plan_of, held)
        changed |= _check_arrivals(conn, links, by_name, leaving, plan_of, held)
        if not changed:
            break
    if not held:
        return
    insert_many(conn, schema.held, [(t, e, replica.tracked[t].pk_name, "missing parent row")
                                    for t, e in sorted(held)], ignore_existing=True)
    result.held += len(held)
    result.applied_changes[:] = [c for c in result.applied_changes
                                 if (c[ROW_ENTITY_TYPE], c[ROW_ENTITY_ID]) not in held]


def _cascade(conn: Connection, links: Iterable[tuple[Any, Any, Any, Any]],
             leaving: dict[str, dict[str, Any]], plan_of: Callable[[Any], Plan],
             held: set[tuple[str, str]]) -> bool:
    """Stored rows whose parent leaves: delete and hold them. Returns whether any was found."""
    changed = False
    for child, col, parent, ref in links:
        gone = leaving.get(parent.name)
        if not gone:
            continue
        for chunk in chunks(list(gone.values())):
            stmt = select(child.pk).where(col.in_(select(ref).where(parent.pk.in_(chunk))))
            for (pk,) in conn.execute(stmt):
                eid = str(pk)
                if eid in leaving.setdefault(child.name, {}):
                    continue
                leaving[child.name][eid] = pk
                plan_of(child).deletes.append(pk)
                held.add((child.name, eid))
                changed = True
    return changed


def _check_arrivals(conn: Connection, links: Iterable[tuple[Any, Any, Any, Any]],
                    by_name: dict[str, Plan], leaving: dict[str, dict[str, Any]],
                    plan_of: Callable[[Any], Plan], held: set[tuple[str, str]]) -> bool:
    """Inserts and updates pointing at a parent that is neither stored (and staying) nor
    arriving: drop them (a stored row is deleted instead) and hold them."""
    changed = False
    for child, col, parent, ref in links:
        plan = by_name.get(child.name)
        if plan is None:
            continue
        wanted = {str(v): v for v in _pointed(plan, col.name)}
        if not wanted:
            continue
        there = _available(conn, by_name.get(parent.name), parent, ref, wanted,
                           leaving.get(parent.name, {}))
        missing = wanted.keys() - there
        if not missing:
            continue
        changed = True
        pkn = child.pk_name
        keep = []
        for values in plan.inserts:
            v = values.get(col.name)
            if v is not None and str(v) in missing:
                held.add((child.name, str(values[pkn])))
            else:
                keep.append(values)
        plan.inserts[:] = keep
        for cols, batch in list(plan.updates.items()):
            if col.name not in cols:
                continue
            stay = []
            for values in batch:
                v = values.get(col.name)
                if v is not None and str(v) in missing:
                    pk = values["_dimple_pk"]
                    held.add((child.name, str(pk)))
                    plan_of(child).deletes.append(pk)
                else:
                    stay.append(values)
            plan.updates[cols] = stay
    return changed


def _pointed(plan: Plan, column: str) -> set[Any]:
    """The values ``plan`` writes into ``column`` (inserted rows and updates)."""
    out = {v[column] for v in plan.inserts if v.get(column) is not None}
    for cols, batch in plan.updates.items():
        if column in cols:
            out.update(v[column] for v in batch if v.get(column) is not None)
    return out


def _available(conn: Connection, plan: Plan | None, parent: TrackedTable, ref: Column[Any],
               wanted: dict[str, Any], leaving: dict[str, Any]) -> set[str]:
    """Which of ``wanted`` (values of ``ref`` by their string forms) a parent row will hold
    after the merge: stored and not leaving, or inserted by it."""
    there: set[str] = set()
    if plan is not None:
        there.update(str(v[ref.name]) for v in plan.inserts if v.get(ref.name) is not None)
    keys = [v for k, v in wanted.items() if k not in there]
    for chunk in chunks(keys):
        for value, pk in conn.execute(select(ref, parent.pk).where(ref.in_(chunk))):
            if str(pk) not in leaving:
                there.add(str(value))
    return there
