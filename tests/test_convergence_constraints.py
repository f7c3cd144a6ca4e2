"""Convergence with constraints, as a property: whatever replicas do to users with a unique
email, items with a cascading foreign key to their user, and notes whose key to an item is
``ON DELETE SET NULL``, and however their syncs interleave, after everyone has synced twice
every replica holds the same rows, the same log and the same conflicts; those rows are what
the documented rules (README, *Conflicts*) make of that log, computed here from scratch by
:func:`expected`; and every change is either in the rows or listed by ``db.conflicts()``.

Each example makes 3 replicas on SQLite files, foreign keys on, off and on, in a fresh
temporary folder on a fresh ``memory://`` remote (plaintext), then runs random inserts that
collide on emails, edits, deletes of parents (cascading on the deleting replica), re-inserts
of deleted ids and syncs, over small pools of ids and emails.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import fsspec
from conflictmodels import Base, Item, Note, User
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError
from syncworld import (
    Device,
    device_set,
)

from dimpledb_sa.core.clock import HybridClock
from dimpledb_sa.sync import merge, pull
from dimpledb_sa.sync.wire import ChangeRow


def _ids(prefix: int, n: int) -> list[str]:
    return [str(uuid.UUID(int=(prefix << 112) | (7 << 76) | (2 << 62) | k)) for k in range(n)]


USERS, ITEMS, NOTES = _ids(0x0190, 3), _ids(0x0191, 3), _ids(0x0192, 2)
EMAILS = ["a@x", "b@x", "c@x"]
REPLICAS = 3
FOREIGN_KEYS = [True, False, True]


def _turn(pool: list[str], r: int) -> st.SearchStrategy[str]:
    """An id from ``pool``, replica ``r``'s own first (hypothesis favours the first
    element: replicas then favour different rows with the same values, which collide)."""
    return st.sampled_from(pool[r % len(pool):] + pool[:r % len(pool)])


def writes(r: int) -> st.SearchStrategy[tuple[Any, ...]]:
    """One write by replica ``r``."""
    user = st.tuples(st.just("write-user"), st.just(r), _turn(USERS, r),
                     st.sampled_from(EMAILS), st.sampled_from(["n", "m"]))
    item = st.tuples(st.just("write-item"), st.just(r), _turn(ITEMS, r),
                     _turn(USERS, r + 2), st.sampled_from(["t", "u"]))
    return st.one_of(
        user, user,
        st.tuples(st.just("delete"), st.just(r), _turn(USERS, r + 1)),
        item,
        st.tuples(st.just("delete"), st.just(r), _turn(ITEMS, r)),
        st.tuples(st.just("write-note"), st.just(r), _turn(NOTES, r),
                  st.none() | _turn(ITEMS, r), st.sampled_from(["p", "q"])),
        st.tuples(st.just("delete"), st.just(r), _turn(NOTES, r)),
    )


def rounds() -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Rounds in which every replica writes once (concurrently, so that they collide), then
    some of them sync."""
    one = st.tuples(*(writes(r) for r in range(REPLICAS)),
                    st.lists(st.integers(0, REPLICAS - 1), max_size=REPLICAS))
    return st.lists(one, min_size=2, max_size=6).map(
        lambda rs: [op for *ws, syncs in rs for op in (*ws, *(("sync", i) for i in syncs))])


MODEL = {USERS[0][:4]: User, ITEMS[0][:4]: Item, NOTES[0][:4]: Note}


def run(dev: Device, op: tuple[Any, ...]) -> None:
    """Do ``op`` on ``dev``, as an app would: a write inserts (or re-inserts) a missing row,
    else updates it; what the local database refuses (an email taken here) or cannot apply
    (a parent missing here) is skipped."""
    if op[0] == "sync":
        assert dev.sync().errors == {}
        return
    with dev.Session() as s:
        kind, _, eid = op[:3]
        if kind == "delete":
            obj = s.get(MODEL[eid[:4]], eid)
            if obj is None:
                return
            s.delete(obj)
        elif kind == "write-user":
            email, name = op[3:]
            user = s.get(User, eid)
            if user is None:
                s.add(User(id=eid, email=email, name=name))
            else:
                user.email, user.name = email, name
        elif kind == "write-item":
            user_id, title = op[3:]
            if s.get(User, user_id) is None:
                return
            item = s.get(Item, eid)
            if item is None:
                s.add(Item(id=eid, user_id=user_id, title=title))
            else:
                item.user_id, item.title = user_id, title
        else:
            item_id, text = op[3:]
            if item_id is not None and s.get(Item, item_id) is None:
                return
            note = s.get(Note, eid)
            if note is None:
                s.add(Note(id=eid, item_id=item_id, text=text))
            else:
                note.item_id, note.text = item_id, text
        try:
            s.commit()
        except IntegrityError:  # the email is taken here
            s.rollback()


# --------------------------------------------------------------------------- the rules


def _winners(changes: list[ChangeRow]) -> dict[str, ChangeRow]:
    win: dict[str, ChangeRow] = {}
    for c in changes:
        if c[4] not in win or c[0] > win[c[4]][0]:
            win[c[4]] = c
    return win


def _value(c: ChangeRow) -> Any:
    return None if c[6] is None else json.loads(c[6])


def _users(by_entity: dict[tuple[str, str], list[ChangeRow]]
           ) -> dict[str, dict[str, Any]]:
    """Rule 2 over the users: the earliest email change keeps the email; a loser that
    existed before the transaction of that change falls back to its email then, if free."""
    cands: dict[str, dict[str, ChangeRow]] = {}
    for (etype, eid), changes in by_entity.items():
        win = _winners(changes)
        if etype == "user" and win["id"][6] is not None:
            cands[eid] = win
    taken: dict[str, str] = {}
    losers: list[str] = []
    for eid in sorted(cands, key=lambda e: (cands[e]["email"][0], e)):
        email = _value(cands[eid]["email"])
        if email in taken:
            losers.append(eid)
        else:
            taken[email] = eid
    rows = {eid: {a: _value(c) for a, c in cands[eid].items()} for eid in cands}
    for eid in losers:
        t0 = cands[eid]["email"][1]
        before = _winners([c for c in by_entity[("user", eid)] if c[0] < t0])
        alt = before.get("email")
        if (before.get("id") is not None and before["id"][6] is not None and alt is not None
                and alt is not cands[eid]["email"] and _value(alt) not in taken):
            taken[_value(alt)] = eid
            rows[eid]["email"] = _value(alt)
        else:
            del rows[eid]
    return rows


def expected(log: set[ChangeRow]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows the rules make of ``log``: users by rule 2; an item only when its user is
    there (else kept out); a note with ``item_id`` null when its item is not there."""
    by_entity: dict[tuple[str, str], list[ChangeRow]] = {}
    for c in log:
        by_entity.setdefault((c[2], c[3]), []).append(c)
    users = _users(by_entity)
    items: dict[str, dict[str, Any]] = {}
    notes: dict[str, dict[str, Any]] = {}
    for (etype, eid), changes in by_entity.items():
        win = _winners(changes)
        if etype == "user" or win["id"][6] is None:
            continue
        row = {a: _value(c) for a, c in win.items()}
        if etype == "item" and row["user_id"] in users:
            items[eid] = row
        elif etype == "note":
            notes[eid] = row
    for row in notes.values():
        if row["item_id"] not in items:
            row["item_id"] = None
    tables = {"user": users, "item": items, "note": notes}
    return {name: sorted((tuple([r["id"], *(r[c] for c in sorted(r) if c != "id")])
                          for r in rows.values()), key=repr)
            for name, rows in tables.items()}


# --------------------------------------------------------------------------- the property


def conflicts_of(dev: Device) -> set[tuple[Any, ...]]:
    return {(c.kind, c.entity_type, c.entity_id, c.attribute, c.change.id, c.other_entity_id)
            for c in dev.db.conflicts()}


def check(replicas: list[Device]) -> None:
    first = replicas[0]
    rows, log, kept = first.snapshot(), first.log(), conflicts_of(first)
    for dev in replicas[1:]:
        assert dev.log() == log, f"{dev.name}'s log differs from {first.name}'s"
        assert dev.snapshot() == rows, f"{dev.name}'s rows differ from {first.name}'s"
        assert conflicts_of(dev) == kept, f"{dev.name}'s conflicts differ"
        assert dev.held() == first.held()
    assert {k: v for k, v in rows.items() if k in ("user", "item", "note")} == expected(log)
    for c in first.db.conflicts():
        event(f"conflict: {c.kind}{' (fallback)' if 'previous' in c.detail else ''}")
    if not first.db.conflicts():
        event("no conflict at the end")
    listed = {(c[1], c[2]) for c in kept} | {(h[0], h[1]) for h in first.held()}
    by_entity: dict[tuple[str, str], list[ChangeRow]] = {}
    for c in log:
        by_entity.setdefault((c[2], c[3]), []).append(c)
    for (etype, eid), changes in by_entity.items():  # applied, or listed
        win = _winners(changes)
        if win["id"][6] is None:
            continue
        lww = tuple([eid, *(_value(win[c]) for c in sorted(win) if c != "id")])
        assert lww in rows[etype] or (etype, eid) in listed, (etype, eid)


def seed(replicas: list[Device]) -> None:
    """Every user (distinct emails) with an item, and a note on the first, on every replica:
    then concurrent deletes of users meet new items for them."""
    first = replicas[0]
    first.add(*(User(id=u, email=e) for u, e in zip(USERS, EMAILS, strict=True)))
    first.add(*(Item(id=i, user_id=u, title="t") for i, u in zip(ITEMS, USERS, strict=True)))
    first.add(Note(id=NOTES[0], item_id=ITEMS[0]))
    for dev in replicas:
        dev.sync()


@settings(max_examples=18, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_with_unique_and_foreign_keys(data: st.DataObject) -> None:
    converge(data)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_when_every_change_merges_and_settles_in_its_own_batch(
        data: st.DataObject) -> None:
    """The same property with the pull committing after every file it reads and the local
    rules settling one transaction at a time (the bounded batches of a large sync)."""
    with mock.patch.object(pull, "MERGE_CHANGES", 1), \
            mock.patch.object(merge, "SETTLE_CHANGES", 1):
        converge(data)


def converge(data: st.DataObject) -> None:
    steps = data.draw(rounds(), label="steps")
    url = f"memory://constraints-{uuid.uuid4().hex}/remote"
    with tempfile.TemporaryDirectory() as tmp, \
            device_set(Path(tmp), url, encryption=False) as devs:
        replicas = [devs.new(f"r{i}", models=Base, clock=HybridClock(), foreign_keys=fk)
                    for i, fk in enumerate(FOREIGN_KEYS)]
        if data.draw(st.booleans(), label="start from a shared world"):
            seed(replicas)
        for op in steps:
            run(replicas[op[1]], op)
        order = data.draw(st.permutations(range(REPLICAS)), label="final sync order")
        for _ in range(2):
            for i in order:
                assert replicas[i].sync().errors == {}
        check(replicas)
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root.rsplit("/", 1)[0]):
        fs.rm(root.rsplit("/", 1)[0], recursive=True)
