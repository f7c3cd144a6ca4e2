"""The README demo: two devices, two SQLite files, syncing through a local folder.

A "laptop" and a "phone" each keep a to-do list in their own SQLite file and sync through
a folder (any fsspec location works the same: memory://, s3://). Each device has its own
age identity and encrypts to both. The laptop adds, edits and deletes; the phone watches a
live query that prints the list whenever it changes; both edit the same row at once (last
write wins per attribute, so both edits survive); then the phone syncs in the background.
Run it with ``python3 dev.py demo`` (or ``python examples/demo.py [--keep]``); it needs no
service and finishes in a few seconds. Data goes to a temporary folder, or to
``./demo-data/`` with ``--keep`` (then try ``dimpledb status demo-data/phone.db``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models import Base, Todo
from sqlalchemy import create_engine, select

import dimpledb_sa as dimple

__all__ = ["main"]


class Device:
    """One device: its database, its sessions and a name to print."""

    def __init__(self, name: str, folder: Path, remote: Path, identity: str,
                 recipients: list[str]) -> None:
        self.name = name
        self.engine = create_engine(f"sqlite:///{folder / name}.db")
        self.db = dimple.DimpleDb(self.engine, Base, remote=str(remote), identity=identity,
                                  recipients=recipients)
        self.db.create_all()
        self.Session = self.db.sessionmaker(expire_on_commit=False)

    def sync(self) -> dimple.SyncReport:
        report = self.db.sync()
        print(f"   {self.name} syncs: pushed {report.pushed} transaction(s), pulled "
              f"{report.pulled}, applied {report.applied} change(s)")
        return report

    def todos(self) -> list[tuple[str, bool]]:
        with self.Session() as s:
            return [(t.text, t.done) for t in s.scalars(select(Todo).order_by(Todo.text))]

    def close(self) -> None:
        self.db.close()
        self.engine.dispose()


def show(rows: Sequence[Any]) -> str:
    return ", ".join(repr(t) for t in rows) or "(empty)"


def run(folder: Path) -> int:
    remote = folder / "remote"
    laptop_key, laptop_pub = dimple.generate_identity()
    phone_key, phone_pub = dimple.generate_identity()
    for name, key, pub in (("laptop", laptop_key, laptop_pub), ("phone", phone_key, phone_pub)):
        (folder / f"{name}.key").write_text(f"# public key: {pub}\n{key}\n")  # as age-keygen
    laptop = Device("laptop", folder, remote, laptop_key, [phone_pub])
    phone = Device("phone", folder, remote, phone_key, [laptop_pub])
    names = {laptop.db.author_id: "laptop", phone.db.author_id: "phone"}
    print(f"laptop and phone: two SQLite files in {folder}, syncing through {remote}")
    print("each has its own age identity and encrypts to both public keys\n")

    coffee = threading.Event()

    def on_phone_change(rows: list[Todo]) -> None:
        print(f"   [phone, live query] {show(rows)}", flush=True)
        if any(t.text == "coffee" for t in rows):
            coffee.set()

    print("the phone opens a live query on its todos; it prints now and on every change:")
    live = phone.db.live(select(Todo).order_by(Todo.text))
    sub = live.subscribe(on_phone_change)
    try:
        print('\n1. the laptop adds "milk", "eggs" and "bread"; both sync')
        with laptop.Session() as s:
            milk, eggs, bread = Todo(text="milk"), Todo(text="eggs"), Todo(text="bread")
            s.add_all([milk, eggs, bread])
            s.commit()
        laptop.sync()
        phone.sync()

        print('\n2. the laptop renames "milk" to "oat milk" and ticks "eggs"')
        with laptop.Session() as s:
            s.get_one(Todo, milk.id).text = "oat milk"
            s.get_one(Todo, eggs.id).done = True
            s.commit()
        laptop.sync()
        phone.sync()

        print('\n3. the laptop deletes "bread"')
        with laptop.Session() as s:
            s.delete(s.get_one(Todo, bread.id))
            s.commit()
        laptop.sync()
        phone.sync()

        print('\n4. offline, both edit "oat milk": the phone renames it, the laptop ticks it')
        with phone.Session() as s:
            s.get_one(Todo, milk.id).text = "oat milk, 2 l"
            s.commit()
        with laptop.Session() as s:
            s.get_one(Todo, milk.id).done = True
            s.commit()
        laptop.sync()
        phone.sync()
        laptop.sync()
        print("   last write wins per attribute: both edits survive on both devices")

        print('\n5. the phone syncs in the background; the laptop adds "coffee"')
        phone.db.start_sync(interval=0.1)
        with laptop.Session() as s:
            s.add(Todo(text="coffee"))
            s.commit()
        laptop.sync()
        arrived = coffee.wait(15)
        phone.db.stop_sync()
        if not arrived:
            print("error: the background sync did not bring the change", file=sys.stderr)
            return 1

        print('\n6. the history of "oat milk", as the phone knows it:')
        for ch in phone.db.history(Todo, milk.id):
            if ch.attribute == "id":  # the primary key: null -> id is an insert
                what = "created" if ch.new_value is not None else "deleted"
            else:
                what = f"{ch.attribute:<4}  {ch.old_value!r} -> {ch.new_value!r}"
            print(f"   {ch.timestamp:%H:%M:%S.%f}"[:-3] + f"  {names[ch.author]:<6}  {what}")
    finally:
        sub.close()
        live.close()

    print("\n7. the remote folder: one folder per device, a manifest and encrypted bundles")
    for author in sorted(p for p in remote.iterdir() if p.is_dir()):
        files = sorted(f.name for f in author.iterdir() if not f.name.startswith("."))
        bundles = [f for f in files if f != "dimple_db.json"]
        head = (author / bundles[0]).read_bytes()[:21].decode() if bundles else "-"
        print(f"   {author.name} ({names.get(author.name, '?')}): dimple_db.json and "
              f"{len(bundles)} bundle(s), starting {head!r}")

    same = laptop.todos() == phone.todos()
    laptop.close()
    phone.close()
    if not same:
        print("error: the devices differ", file=sys.stderr)
        return 1
    print(f"\ndemo finished: both devices hold the same {len(phone.todos())} todos")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the data in ./demo-data/ (emptied first) to look at it")
    args = parser.parse_args(argv)
    if args.keep:
        folder = Path("demo-data").resolve()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        code = run(folder)
        print(f"data kept in {folder}; try:\n  dimpledb status {folder / 'phone.db'} "
              f"--remote {folder / 'remote'}\n  dimpledb inspect {folder / 'remote'}\n"
              f"  dimpledb verify {folder / 'remote'} --identity-file {folder / 'phone.key'}")
        return code
    with tempfile.TemporaryDirectory(prefix="dimpledb-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
