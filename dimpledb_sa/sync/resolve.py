"""The rules that decide which rows may exist when the last writes break a constraint.

Last-write-wins gives each entity its *intended* row (see :mod:`.plan`). Where intended
rows break a unique constraint or a foreign key the metadata declares (see
:mod:`..core.constraints`), these rules decide, table by table, parents first, as a function
of the logged changes only (never of arrival order or of which device wrote what):

1. **Foreign keys.** A row whose checked foreign key names a parent row that is not in the
   parent table (deleted, kept out itself, or never seen) is kept out (kind
   ``foreign_key``; *held* instead when this replica has never seen the parent), unless the
   key is ``ON DELETE SET NULL`` and nullable: then the row stays with that column null.
2. **Unique values.** Among the rows left, in order of their *rank* (the id of the latest
   winning change to any of the table's unique columns; a row without history first), a row
   takes its unique values when no row before it took one of them. A row that could not
   falls back to the unique values it had before the transaction of its rank change, when it
   existed then and those are free (its other columns keep their last writes); otherwise it
   is kept out. Either way its colliding change is a ``unique`` conflict.
3. Rows the database refused (``excluded``, see :mod:`.merge`) are kept out (``check``).

A self-referencing table repeats 1 and 2 until no more rows leave. :class:`Resolver`
applies the rules to the entities a merge touched plus every entity whose decision can
depend on them (rows sharing a unique value, recorded conflicts on it, children of rows
that come or go), loaded as it goes; everything else is as the rules left it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, tuple_

from ..core import changelog, schema
from ..core.changes import (
    ROW_ATTRIBUTE,
    ROW_ID,
    ROW_NEW,
    ROW_OLD,
    ROW_TRANSACTION,
    ChangeRow,
)
from ..core.conflicts import (
    CHECK,
    FOREIGN_KEY,
    UNIQUE,
    entities_with_keys,
    entities_with_parents,
    key_hash,
)
from ..core.rows import CHUNK, chunks, fetch_rows
from .plan import required_columns, winners

if TYPE_CHECKING:
    from ..core.constraints import Constraints, Reference, UniqueSet
    from ..core.replica import Replica
    from ..core.tracking import TrackedTable

__all__ = ["MISSING_PARENT", "Entity", "Excluded", "Resolver"]

MISSING_PARENT = "missing parent row"
"""The ``dimple_held`` reason of a row whose parent this replica has never seen."""

Excluded = dict[tuple[str, str], str]
"""(entity type, entity id) -> why the database refused the entity's row."""

Key = tuple[str, tuple[str | None, ...]]  # (unique set label, the values' JSON texts)
_UNSET: Any = object()


class Entity:
    """One entity as the rules see it: its winning changes, its row, and the decision."""

    __slots__ = ("_alt", "_keys", "_rank", "_row_keys", "before", "eid", "fallback", "fixed",
                 "fk_out", "held", "log", "lost", "notes", "out", "over", "present", "quiet",
                 "row", "unotes", "win")

    def __init__(self, eid: str, win: dict[str, ChangeRow], row: dict[str, Any] | None,
                 log: Sequence[ChangeRow] | None, present: bool) -> None:
        self.eid = eid
        self.win = win
        self.row = row
        self.log = log
        self.present = present
        self.fixed = not win and row is not None  # a row without history: never moved
        # values before this replica's own recent changes (attribute -> JSON text), when
        # the merge settles those (see merge.settle_local)
        self.before: dict[str, str | None] | None = None
        self._rank: str | None = None
        self._alt: Any = _UNSET
        self._keys: list[Key] | None = None  # as last written by the winners (cached)
        self._row_keys: list[Key] | None = None
        self.out = False  # kept out by a foreign key or the database
        self.fk_out = False  # kept out by a parent in the same table
        self.lost = False  # kept out by a unique value
        self.held: str | None = None
        self.over: dict[str, ChangeRow] | None = None  # derived values (nulls)
        self.quiet: set[str] | None = None  # attributes of ``over``
        self.fallback: dict[str, ChangeRow] | None = None  # previous unique values
        self.notes: list[dict[str, Any]] | None = None  # conflicts (foreign keys, check)
        self.unotes: list[dict[str, Any]] | None = None  # conflicts (unique values)

    def reset(self) -> None:
        if self.out or self.fk_out or self.lost or self.held or self.over or self.notes \
                or self.unotes or self.fallback:
            self.out = self.fk_out = self.lost = False
            self.held = None
            if self.over:
                self._keys = None  # they were the keys with the derived values
            self.over = self.quiet = self.fallback = None
            self.notes = self.unotes = None

    def derive(self, attr: str, change: ChangeRow) -> None:
        """Write ``change``'s value for ``attr`` though no change sets it (a null)."""
        if self.over is None:
            self.over, self.quiet = {}, set()
        assert self.quiet is not None
        self.over[attr] = change
        self.quiet.add(attr)
        self._keys = None

    def note(self, note: dict[str, Any]) -> None:
        if self.notes is None:
            self.notes = []
        self.notes.append(note)

    def unote(self, note: dict[str, Any]) -> None:
        if self.unotes is None:
            self.unotes = []
        self.unotes.append(note)

    def written(self) -> dict[str, ChangeRow]:
        """The change whose value each attribute is written with."""
        if not self.over and not self.fallback:
            return self.win
        return {**self.win, **(self.over or {}), **(self.fallback or {})}

    @property
    def admitted(self) -> bool:
        """Whether the row is in the table once the merge is written."""
        return self.fixed or (self.present and not (self.out or self.fk_out or self.lost))

    def text(self, attr: str, codecs: dict[str, Any], alt: dict[str, ChangeRow] | None = None
             ) -> str | None:
        """The JSON text ``attr`` is written with (``alt``: a fallback)."""
        for source in (alt, self.fallback, self.over, self.win):
            if source and attr in source:
                return source[attr][ROW_NEW]
        if self.row is not None and attr in self.row:
            return codecs[attr].encode(self.row[attr])  # type: ignore[no-any-return]
        return None

    def full_log(self) -> list[ChangeRow]:
        if self.log is None:
            return []
        if not isinstance(self.log, list):
            self.log = list(self.log)
        self.log.sort()
        return self.log

    def latest(self) -> ChangeRow | None:
        return max(self.win.values(), default=None)

    def _was(self, pk: str) -> set[bool]:
        """Whether the row was in the table before this merge, and (when known) before this
        replica's own recent changes."""
        was = {self.row is not None}
        if self.before is not None and pk in self.before:
            was.add(self.before[pk] is not None)
        return was

    def arrived(self, pk: str) -> bool:
        return not self.fixed and self.admitted and False in self._was(pk)

    def left(self, pk: str) -> bool:
        return not self.fixed and not self.admitted and True in self._was(pk)


def _note(kind: str, etype: str, e: Entity, attr: str | None, change: ChangeRow,
          other: tuple[str, str] | None, detail: str, *, key: str | None = None,
          listed: bool = True) -> dict[str, Any]:
    return {"entity_type": etype, "entity_id": e.eid, "kind": kind, "attribute": attr,
            "change_id": change[ROW_ID], "transaction_id": change[ROW_TRANSACTION],
            "change_attribute": change[ROW_ATTRIBUTE], "old_value": change[ROW_OLD],
            "new_value": change[ROW_NEW],
            "other_entity_type": other[0] if other else None,
            "other_entity_id": other[1] if other else None,
            "key": key, "listed": listed, "detail": detail}


def _short(text: str | None) -> str:
    return "null" if text is None else (text if len(text) <= 60 else text[:59] + "…")


class Resolver:
    """Applies the rules to the entities :meth:`add` gave it and those they depend on."""

    def __init__(self, replica: Replica, conn: Connection, cons: Constraints,
                 excluded: Excluded) -> None:
        self.tracked = replica.tracked
        self.conn = conn
        self.cons = cons
        self.excluded = excluded
        self.entities: dict[str, dict[str, Entity]] = {}
        self._presence: dict[tuple[str, str], str] = {}
        self._looked: set[Key] = set()  # unique keys looked up
        c = schema.conflicts
        self.any_conflicts = conn.execute(select(c.c.id).limit(1)).first() is not None
        self._expanded: set[tuple[str, str]] = set()  # (child table, parent id) looked up
        self._required = {name: required_columns(tt) for name, tt in self.tracked.items()}

    # -- entities ---------------------------------------------------------------------------
    def add(self, name: str, eid: str, win: dict[str, ChangeRow], row: dict[str, Any] | None,
            log: Sequence[ChangeRow] | None) -> Entity:
        tt = self.tracked[name]
        pkw = win.get(tt.pk_name)
        present = pkw is not None and pkw[ROW_NEW] is not None
        if present and row is None and any(win.get(c) is None or win[c][ROW_NEW] is None
                                           for c in self._required[name]):
            present = False  # cannot be inserted yet: the plan holds it
        e = Entity(eid, win, row, log, present)
        self.entities.setdefault(name, {})[eid] = e
        return e

    def load(self, name: str, eids: set[str]) -> bool:
        """Add the entities ``eids`` of ``name`` not known yet, from the log and the table."""
        ents = self.entities.setdefault(name, {})
        new = sorted(eids - ents.keys())
        if not new:
            return False
        logs = changelog.entity_changes(self.conn, [(name, e) for e in new])
        rows = fetch_rows(self.conn, self.tracked[name], new)
        for eid in new:
            log = logs.get((name, eid), [])
            self.add(name, eid, winners(log), rows.get(eid), log)
        return True

    def run(self) -> None:
        """Decide every entity, table by table, parents first."""
        for name in self.cons.order:
            if self.entities.get(name):
                self._table(self.tracked[name])

    # -- one table --------------------------------------------------------------------------
    def _table(self, tt: TrackedTable) -> None:
        name = tt.name
        ents = self.entities[name]
        uniques = self.cons.uniques.get(name, [])
        refs = self.cons.checked(name)
        tree = [r for r in refs if r.parent == name]
        resolved = False
        while True:
            added = self._expand_unique(tt, uniques, ents) if uniques else False
            if resolved and tree:
                added = self._expand_children(tt, ents, tree) or added
            if resolved and not added:
                break
            self._resolve(tt, uniques, refs, tree, ents)
            resolved = True
        for r in self.cons.referrers.get(name, ()):
            if r.table != name:
                self._expand_children(tt, ents, [r])

    def _resolve(self, tt: TrackedTable, uniques: list[UniqueSet], refs: list[Reference],
                 tree: list[Reference], ents: dict[str, Entity]) -> None:
        name = tt.name
        cands: list[Entity] = []
        for eid in sorted(ents):
            e = ents[eid]
            e.reset()
            why = self.excluded.get((name, eid))
            latest = e.latest()
            if why is not None and latest is not None:
                e.out = True
                e.note(_note(CHECK, name, e, None, latest, None,
                                     f"{name} {eid} is kept out: the database refused it "
                                     f"({why})"))
                continue
            if not e.fixed and e.present:
                cands.append(e)
        cross = [r for r in refs if r.parent != name]
        if cross:
            self._check_refs(tt, cross, cands)
            cands = [e for e in cands if not e.out]
        while True:
            live = [e for e in cands if not e.fk_out]
            self._unique(tt, uniques, live, ents)
            if not tree or not self._check_tree(tt, tree, [e for e in live if not e.lost],
                                                ents):
                break

    # -- foreign keys -----------------------------------------------------------------------
    def _parent_of(self, tt: TrackedTable, e: Entity, r: Reference) -> str | None:
        text = e.text(r.column, tt.codecs)
        if text is None:
            return None
        if text[0] == '"' and "\\" not in text:  # a key as JSON text: a plain string
            return text[1:-1]
        return str(json.loads(text))

    def _presences(self, parent: str, pids: set[str]) -> dict[str, str]:
        """For each id: ``"yes"`` (its row is there), ``"known"`` (not there, but logged) or
        ``"unknown"`` (never seen), as the parent table ends up after this merge."""
        out: dict[str, str] = {}
        ents = self.entities.get(parent, {})
        ask: list[str] = []
        for pid in pids:
            e = ents.get(pid)
            if e is not None:
                out[pid] = "yes" if e.admitted else "known" if e.win else "unknown"
            elif (parent, pid) in self._presence:
                out[pid] = self._presence[(parent, pid)]
            else:
                ask.append(pid)
        if ask:
            ptt = self.tracked[parent]
            there = set(fetch_rows(self.conn, ptt, ask, [ptt.pk_name]))
            missing = [p for p in ask if p not in there]
            logged = _logged(self.conn, parent, missing) if missing else set()
            for pid in ask:
                state = "yes" if pid in there else "known" if pid in logged else "unknown"
                self._presence[(parent, pid)] = out[pid] = state
        return out

    def _missing_parent(self, tt: TrackedTable, e: Entity, r: Reference, pid: str,
                        state: str) -> bool:
        """Apply rule 1 to ``e`` whose parent ``pid`` is not there; whether it leaves."""
        name = tt.name
        change = e.win.get(r.column) or e.latest()
        assert change is not None
        if r.sets_null:
            w = e.win.get(r.column, change)
            e.derive(r.column, (w[ROW_ID], w[ROW_TRANSACTION], name, e.eid, r.column,
                                w[ROW_OLD], None))
            e.note(_note(FOREIGN_KEY, name, e, r.column, change, (r.parent, pid),
                                 f"{name} {e.eid} has {r.column} null: {r.parent} {pid} is "
                                 "not in its table"))
            return False
        if state == "unknown":
            e.held = MISSING_PARENT
        else:
            e.note(_note(FOREIGN_KEY, name, e, r.column, change, (r.parent, pid),
                                 f"{name} {e.eid} is kept out: its {r.column} names "
                                 f"{r.parent} {pid}, which is not in its table"))
        return True

    def _check_refs(self, tt: TrackedTable, refs: list[Reference], cands: list[Entity]
                    ) -> None:
        wanted: dict[str, set[str]] = {}
        named: list[tuple[Entity, list[tuple[Reference, str]]]] = []
        for e in cands:
            pairs = []
            for r in refs:
                pid = self._parent_of(tt, e, r)
                if pid is not None:
                    wanted.setdefault(r.parent, set()).add(pid)
                    pairs.append((r, pid))
            if pairs:
                named.append((e, pairs))
        states = {parent: self._presences(parent, pids) for parent, pids in wanted.items()}
        for e, pairs in named:
            for r, pid in pairs:
                state = states[r.parent][pid]
                if state != "yes" and self._missing_parent(tt, e, r, pid, state):
                    e.out = True
                    break

    def _check_tree(self, tt: TrackedTable, refs: list[Reference], live: list[Entity],
                    ents: dict[str, Entity]) -> bool:
        """Rule 1 within a self-referencing table; whether a row left."""
        left = False
        for e in live:
            for r in refs:
                pid = self._parent_of(tt, e, r)
                if pid is None or pid == e.eid or (e.over and r.column in e.over):
                    continue
                parent = ents.get(pid)
                if parent is not None:
                    state = "yes" if parent.admitted else "known" if parent.win else "unknown"
                else:
                    state = self._presences(tt.name, {pid})[pid]
                if state != "yes" and self._missing_parent(tt, e, r, pid, state):
                    e.fk_out = left = True
                    break
        return left

    def _expand_children(self, tt: TrackedTable, ents: dict[str, Entity],
                         refs: list[Reference]) -> bool:
        """Load the children (through ``refs``) of rows that come or go: those in the
        table naming a row that leaves it, those kept out for a row that arrives."""
        pk = tt.pk_name
        left = [e.eid for e in ents.values() if e.left(pk)]
        arrived = [e.eid for e in ents.values() if e.arrived(pk)] if self.any_conflicts else []
        added = False
        for r in refs:
            gone = [p for p in left if (r.table, p) not in self._expanded]
            back = [p for p in arrived if (r.table, p) not in self._expanded]
            self._expanded.update((r.table, p) for p in gone + back)
            child = self.tracked[r.table]
            col = child.table.c[r.column]
            to_value = child.codecs[r.column].from_json
            found: set[str] = set()
            for chunk in chunks(gone):
                values = [to_value(p) for p in chunk]
                found.update(str(k) for k in self.conn.execute(
                    select(child.pk).where(col.in_(values))).scalars())
            if back:
                found |= entities_with_parents(self.conn, r.table, tt.name, back)
            added = self.load(r.table, found) or added
        return added

    # -- unique values ----------------------------------------------------------------------
    def _rank(self, tt: TrackedTable, uniques: list[UniqueSet], e: Entity) -> str:
        if e._rank is None:
            ids = [e.win[c][ROW_ID] for u in uniques for c in u.columns if c in e.win]
            pkw = e.win.get(tt.pk_name)
            e._rank = max(ids) if ids else pkw[ROW_ID] if pkw is not None else ""
        return e._rank

    def _keys(self, tt: TrackedTable, uniques: list[UniqueSet], e: Entity,
              alt: dict[str, ChangeRow] | None = None, *, row: bool = False,
              before: bool = False) -> list[Key]:
        """``e``'s unique keys as it is written (with ``alt``), or as its row is (``row``),
        or as it was before this replica's own recent changes (``before``)."""
        plain = alt is None and not row and not before
        if plain and e._keys is not None and not e.fallback:
            return e._keys
        if row and e._row_keys is not None:
            return e._row_keys
        out: list[Key] = []
        for u in uniques:
            if row:
                if e.row is None:
                    continue
                texts = tuple(tt.codecs[c].encode(e.row[c]) for c in u.columns)
            elif before:
                old = e.before or {}
                texts = tuple(old[c] if c in old else e.text(c, tt.codecs) for c in u.columns)
            else:
                texts = tuple(e.text(c, tt.codecs, alt) for c in u.columns)
            if None not in texts:
                out.append((u.label, texts))
        if plain and not e.fallback:
            e._keys = out
        elif row:
            e._row_keys = out
        return out

    def _alt(self, tt: TrackedTable, uniques: list[UniqueSet], e: Entity
             ) -> dict[str, ChangeRow] | None:
        """``e``'s unique values as they were before the transaction of its rank change."""
        if e._alt is not _UNSET:
            alt: dict[str, ChangeRow] | None = e._alt
            return alt
        e._alt = None
        rank = self._rank(tt, uniques, e)
        ranked = next((w for w in e.win.values() if w[ROW_ID] == rank), None)
        if ranked is None:
            return None
        t0 = ranked[ROW_TRANSACTION]
        before = winners(c for c in e.full_log() if c[ROW_ID] < t0)
        pkw = before.get(tt.pk_name)
        if pkw is None or pkw[ROW_NEW] is None:
            return None  # it did not exist then: an insert that lost
        out: dict[str, ChangeRow] = {}
        for c in {c for u in uniques for c in u.columns}:
            w = before.get(c)
            if w is None:
                return None
            if e.win.get(c) is not w:
                out[c] = w
        e._alt = out or None
        return e._alt  # type: ignore[no-any-return]

    def _unique(self, tt: TrackedTable, uniques: list[UniqueSet], live: list[Entity],
                ents: dict[str, Entity]) -> None:
        """Rule 2 over ``live`` (rows without history in ``ents`` hold their values first)."""
        for e in live:
            e.lost = False
            e.fallback = e.unotes = None
        if not uniques:
            return
        taken: dict[Key, Entity] = {}
        for e in ents.values():
            if e.fixed:
                taken.update((k, e) for k in self._keys(tt, uniques, e))
        losers: list[tuple[Entity, Key, Entity]] = []
        for e in sorted(live, key=lambda e: (self._rank(tt, uniques, e), e.eid)):
            keys = self._keys(tt, uniques, e)
            clash = next((k for k in keys if k in taken), None)
            if clash is not None:
                e.lost = True
                losers.append((e, clash, taken[clash]))
            else:
                taken.update((k, e) for k in keys)
        for e, clash, holder in losers:
            self._fall_back(tt, uniques, e, clash, holder, taken)

    def _fall_back(self, tt: TrackedTable, uniques: list[UniqueSet], e: Entity, clash: Key,
                   holder: Entity, taken: dict[Key, Entity]) -> None:
        name = tt.name
        cols = clash[0].split(",")
        attr = max((c for c in cols if c in e.win), key=lambda c: e.win[c][ROW_ID],
                   default=cols[0])
        change = e.win.get(attr) or e.latest()
        assert change is not None
        value = _short(e.text(attr, tt.codecs))
        other = (name, holder.eid)
        alt = self._alt(tt, uniques, e)
        if alt is not None:
            keys = self._keys(tt, uniques, e, alt)
            clash1 = next((k for k in keys if k in taken), None)
            if clash1 is None:
                e.lost = False
                e.fallback = alt
                taken.update((k, e) for k in keys)
                e.unote(_note(UNIQUE, name, e, attr, change, other,
                              f"{name} {e.eid} keeps its previous {attr}: {value} belongs "
                              f"to {name} {holder.eid}, which set it first",
                              key=key_hash(*clash)))
                return
            e.unote(_note(UNIQUE, name, e, attr, change, (name, taken[clash1].eid),
                          "its previous value is taken too", key=key_hash(*clash1),
                          listed=False))
        e.unote(_note(UNIQUE, name, e, attr, change, other,
                      f"{name} {e.eid} is kept out: its {attr} {value} belongs to "
                      f"{name} {holder.eid}, which set it first", key=key_hash(*clash)))

    def _expand_unique(self, tt: TrackedTable, uniques: list[UniqueSet],
                       ents: dict[str, Entity]) -> bool:
        """Load the entities that hold, or wait for, a unique value one of ``ents`` has,
        wants or falls back to (rows hold only their own values: no need to ask for those)."""
        ask_rows: dict[str, set[tuple[str | None, ...]]] = {}
        ask_conflicts: list[str] = []
        for e in list(ents.values()):
            own = self._keys(tt, uniques, e, row=True)
            keys = self._keys(tt, uniques, e) + own
            if e.before:
                keys += self._keys(tt, uniques, e, before=True)
            if e.lost:
                alt = self._alt(tt, uniques, e)
                if alt is not None:
                    keys += self._keys(tt, uniques, e, alt)
            for k in keys:
                if k in self._looked:
                    continue
                self._looked.add(k)
                if k not in own:
                    ask_rows.setdefault(k[0], set()).add(k[1])
                if self.any_conflicts:
                    ask_conflicts.append(key_hash(*k))
        found: set[str] = set()
        for label, texts in ask_rows.items():
            found |= self._holders(tt, label.split(","), list(texts))
        if ask_conflicts:
            found |= entities_with_keys(self.conn, tt.name, ask_conflicts)
        return self.load(tt.name, found)

    def _holders(self, tt: TrackedTable, cols: list[str],
                 keys: list[tuple[str | None, ...]]) -> set[str]:
        """Keys of the rows whose ``cols`` hold one of ``keys`` (JSON texts)."""
        codecs = tt.codecs
        values = [tuple(codecs[c].decode(t) for c, t in zip(cols, k, strict=True))
                  for k in keys]
        columns = [tt.table.c[c] for c in cols]
        out: set[str] = set()
        size = max(1, CHUNK // len(cols))
        for i in range(0, len(values), size):
            part = values[i:i + size]
            if len(cols) == 1:
                cond = columns[0].in_([v[0] for v in part])
            else:
                cond = tuple_(*columns).in_(part)
            out.update(str(k) for k in self.conn.execute(select(tt.pk).where(cond)).scalars())
        return out

    # -- results ----------------------------------------------------------------------------
    def notes(self) -> list[dict[str, Any]]:
        return [n for ents in self.entities.values() for e in ents.values()
                for n in (*(e.notes or ()), *(e.unotes or ()))]


def _logged(conn: Connection, name: str, entity_ids: Sequence[str]) -> set[str]:
    """The ids among ``entity_ids`` with at least one change in the (folded) log."""
    return changelog.logged_entities(conn, name, entity_ids)

