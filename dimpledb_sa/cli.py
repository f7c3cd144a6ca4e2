"""The ``dimpledb`` command line: keygen, sync, status, history, inspect and verify.

This module owns the console script (``dimpledb = dimpledb_sa.cli:main``). It knows no
application models: ``sync`` reflects the database's tables and tracks every one the library
can (a single string or UUID primary key), unless ``--models module:Base`` names the real
ones; ``status`` and ``history`` read the bookkeeping tables without writing; ``inspect``
and ``verify`` read a remote without changing it. Keys come from ``--identity-file`` (as
written by ``keygen`` or ``age-keygen``), ``--identity`` / ``$DIMPLEDB_IDENTITY``,
``--passphrase-env VAR`` or ``--no-encryption``. Progress goes to stderr (a redrawn line on a
terminal, plain lines otherwise), results to stdout. Exit codes: 0 success, 1 the operation
failed (sync errors, verification problems, a database or remote that cannot be read, a
wrong key), 2 the command line is wrong (bad arguments or option values, unreadable key).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from sqlalchemy import CHAR, Engine, MetaData, Uuid, create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from . import log as changelog
from . import schema
from .bundle import decode_bundle, decode_manifest, is_bundle_name, is_uuid
from .clock import id_datetime
from .errors import ConfigurationError, DecryptionError, DimpleError, SyncError

if TYPE_CHECKING:
    from .changes import Change
    from .crypto import Cipher
    from .report import SyncReport
    from .storage import Storage

__all__ = ["Progress", "build_parser", "main"]

PROG = "dimpledb"
_SECRET_PREFIX = "AGE-SECRET-KEY-1"
_NOT_TRACKED = ("alembic_version",)


class CliError(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _usage(message: str) -> CliError:
    return CliError(message, 2)


# ------------------------------------------------------------------------------- output
class Progress:
    """Progress on stderr: one redrawn line on a terminal, plain phase lines otherwise."""

    def __init__(self, stream: IO[str], *, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self._drawn = False

    def line(self, text: str) -> None:
        """A phase: redrawn in place on a terminal, a plain line otherwise."""
        if not self.enabled:
            return
        if self.tty:
            self._draw(text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def bar(self, done: int, total: int, text: str) -> None:
        """``done`` of ``total`` steps: a bar redrawn in place (terminals only)."""
        if not self.tty:
            return
        width = 24
        filled = width * done // total if total else width
        self._draw(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text}")

    def _draw(self, text: str) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns - 1  # no wrap: \r must work
        self.stream.write(f"\r\x1b[K{text[:columns]}")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def finish(self) -> None:
        if self.enabled:
            self._clear()
            self.stream.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def _when(tx_id: str | None) -> str:
    """The time in a UUIDv7 id, for people."""
    if not tx_id:
        return "never"
    try:
        return id_datetime(tx_id).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return "?"


def _value(v: Any, limit: int = 60) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------- keys
@dataclass
class Keys:
    """The encryption settings read from the command line, as ``DimpleDb`` takes them."""

    identity: str | None = None
    recipients: list[str] = field(default_factory=list)
    passphrase: str | None = None
    encryption: bool = True
    what: str = "key"
    """How to name the key in messages: "identity", "passphrase"."""
    recipient: str | None = None
    """The identity's public key."""

    @property
    def given(self) -> bool:
        return self.identity is not None or self.passphrase is not None or not self.encryption

    def kwargs(self) -> dict[str, Any]:
        return {"identity": self.identity, "recipients": self.recipients or None,
                "passphrase": self.passphrase, "encryption": self.encryption}

    def cipher(self) -> Cipher:
        from .crypto import make_cipher

        try:
            return make_cipher(**self.kwargs())
        except ConfigurationError as e:
            raise _usage(str(e)) from None


def _read_identity_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise _usage(f"cannot read identity file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise _usage(f"identity file {path} is not a text file") from None
    keys = [ln.strip() for ln in text.splitlines()
            if ln.strip().upper().startswith(_SECRET_PREFIX)]
    if not keys:
        raise _usage(f"identity file {path} holds no secret key line ({_SECRET_PREFIX}...)")
    if len(keys) > 1:
        raise _usage(f"identity file {path} holds {len(keys)} secret keys; "
                     "dimpledb uses exactly one")
    return keys[0]


def _read_recipients_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _usage(f"cannot read recipients file {path}: {e}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _keys(args: argparse.Namespace) -> Keys:
    """The key options, then ``$DIMPLEDB_IDENTITY_FILE`` / ``$DIMPLEDB_IDENTITY``."""
    from .crypto import X25519Cipher

    keys = Keys()
    chosen = [name for name, on in (
        ("--identity-file", args.identity_file is not None),
        ("--identity", args.identity is not None),
        ("--passphrase-env", args.passphrase_env is not None),
        ("--no-encryption", args.no_encryption),
    ) if on]
    if len(chosen) > 1:
        raise _usage(f"give only one of {' and '.join(chosen)}")
    identity: str | None = None
    if args.identity_file is not None:
        identity = _read_identity_file(args.identity_file)
    elif args.identity is not None:
        identity = args.identity
    elif args.passphrase_env is not None:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise _usage(f"environment variable {args.passphrase_env} (--passphrase-env) "
                         "is not set or empty")
        keys.passphrase = value
        keys.what = "passphrase"
    elif args.no_encryption:
        keys.encryption = False
        keys.what = "no key (--no-encryption)"
    elif os.environ.get("DIMPLEDB_IDENTITY_FILE"):
        identity = _read_identity_file(os.environ["DIMPLEDB_IDENTITY_FILE"])
    elif os.environ.get("DIMPLEDB_IDENTITY"):
        identity = os.environ["DIMPLEDB_IDENTITY"]
    keys.recipients = list(args.recipient or [])
    for path in args.recipients_file or []:
        keys.recipients.extend(_read_recipients_file(path))
    if identity is not None:
        try:
            cipher = X25519Cipher(identity, keys.recipients)
        except ConfigurationError as e:
            raise _usage(f"bad key: {e}") from None
        keys.identity = identity
        keys.what = "identity"
        keys.recipient = cipher.recipient
    elif keys.recipients:
        raise _usage("--recipient needs an identity (--identity-file or --identity) too")
    return keys


def _add_key_options(p: argparse.ArgumentParser, *, recipients: bool = False) -> None:
    g = p.add_argument_group("keys (default: $DIMPLEDB_IDENTITY_FILE, then $DIMPLEDB_IDENTITY)")
    g.add_argument("--identity-file", "-i", metavar="PATH",
                   help="an age identity file, as written by `dimpledb keygen` or `age-keygen`")
    g.add_argument("--identity", metavar="AGE-SECRET-KEY-1...",
                   help="the secret key itself (visible to other users in the process list: "
                        "prefer --identity-file or $DIMPLEDB_IDENTITY)")
    g.add_argument("--passphrase-env", metavar="VAR",
                   help="read a passphrase (age scrypt mode) from environment variable VAR")
    g.add_argument("--no-encryption", action="store_true",
                   help="the remote holds plaintext (no key)")
    if recipients:
        g.add_argument("--recipient", "-r", action="append", metavar="age1...",
                       help="also encrypt to this public key (another device); repeatable")
        g.add_argument("--recipients-file", "-R", action="append", metavar="PATH",
                       help="also encrypt to the public keys in PATH, one a line; repeatable")
    else:
        p.set_defaults(recipient=None, recipients_file=None)


# ------------------------------------------------------------------------------- database
def _db_url(text: str) -> str:
    """A SQLAlchemy URL, or a plain path taken as a SQLite file."""
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def _open_engine(text: str, *, readonly: bool) -> Engine:
    """An engine for a database that must exist; ``readonly`` opens SQLite files read-only."""
    try:
        url = make_url(_db_url(text))
    except ArgumentError as e:
        raise _usage(f"not a database URL or SQLite file path: {text!r} ({e})") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:") or db.startswith("file:") or url.query.get("uri"):
            pass  # nothing to check on disk
        else:
            path = Path(db)
            if not path.is_file():
                what = "is a folder, not" if path.is_dir() else "does not exist: no such"
                raise CliError(f"cannot open database {shown}: {path} {what} SQLite file")
            if readonly:
                url = url.set(database=f"file:{path.resolve().as_posix()}?mode=ro",
                              query={**url.query, "uri": "true"})
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            inspect(conn).get_table_names()
    except (NoSuchModuleError, ImportError) as e:
        raise CliError(f"cannot open database {shown}: no driver for it ({e})") from None
    except SQLAlchemyError as e:
        raise CliError(f"cannot open database {shown}: {_sa_message(e)}") from None
    return engine


def _sa_message(e: SQLAlchemyError) -> str:
    orig = getattr(e, "orig", None)
    return str(orig) if orig is not None else str(e).splitlines()[0]


def _bookkeeping(engine: Engine) -> None:
    """Make sure ``engine``'s database is tracked (has ``dimple_meta``); read-only."""
    if not inspect(engine).has_table(schema.meta.name):
        raise CliError(f"{engine.url.render_as_string(hide_password=True)} is not a dimpledb "
                       "database (it has no dimple_meta table): sync it once, or open it "
                       "with dimpledb_sa.DimpleDb and call create_all()")


def _author(engine: Engine) -> str | None:
    m = schema.meta
    with engine.connect() as conn:
        value: str | None = conn.execute(
            select(m.c.value).where(m.c.key == "author_id")).scalar()
    return value


def _reflect(engine: Engine, exclude: Sequence[str],
             notes: Callable[[str], None]) -> tuple[MetaData, list[str]]:
    """The database's tables, and the names of those the library cannot track.

    Reflection sees storage types, not the app's Python types. One matters for sync: where
    the database has no UUID type, SQLAlchemy's ``Uuid`` is stored as ``CHAR(32)`` hex,
    while the change log holds canonical UUID strings; so ``CHAR(32)`` columns are read as
    ``Uuid(as_uuid=False)``, which converts between the two (``--models`` avoids guessing).
    """
    from .tracking import resolve_tables

    metadata = MetaData()
    try:
        metadata.reflect(engine)
    except SQLAlchemyError as e:
        raise CliError(f"cannot read the database's tables: {_sa_message(e)}") from None
    skip = []
    for name, table in metadata.tables.items():
        if name.startswith(schema.BOOKKEEPING_PREFIX):
            continue
        for column in table.columns:
            if (not engine.dialect.supports_native_uuid
                    and isinstance(column.type, CHAR) and column.type.length == 32):
                column.type = Uuid(as_uuid=False)
                notes(f"reading CHAR(32) column {name}.{column.name} as a UUID "
                      "(SQLAlchemy's Uuid); pass --models if it is not one")
        if name in _NOT_TRACKED or name in exclude:
            skip.append(name)
            continue
        try:
            resolve_tables([table])
        except ConfigurationError as e:
            notes(f"not tracking {name!r}: {str(e).split(':')[0].removeprefix('table ')}")
            skip.append(name)
    return metadata, skip


def _load_models(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise _usage(f"--models takes module:attribute (e.g. myapp.models:Base), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise _usage(f"cannot load --models {spec}: {e}") from None
    return obj


# ------------------------------------------------------------------------------- remote
def _storage_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they are JSON; dots nest keys)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _usage(f"--storage-option takes key=value, not {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = out
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise _usage(f"--storage-option {key}: {part} is not a group of options")
        target[last] = value
    return out


def _remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", "-o", action="append", metavar="KEY=VALUE",
                   help="an fsspec storage option, e.g. endpoint_url=http://127.0.0.1:9000 "
                        "or client_kwargs.region_name=eu-west-1; repeatable")


def _is_folder(storage: Storage) -> bool:
    protocol = storage.fs.protocol
    names = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in names or "local" in names


def _open_remote(text: str, options: Sequence[str] | None, *, must_exist: bool) -> Storage:
    from .storage import Storage

    try:
        storage = Storage.from_remote(text, _storage_options(options) or None)
    except ConfigurationError as e:
        raise _usage(str(e)) from None
    if must_exist and _is_folder(storage) and not storage.fs.isdir(storage.root):
        what = "is not a folder" if storage.fs.exists(storage.root) else "does not exist"
        raise CliError(f"remote {text}: {storage.root} {what}")
    return storage


@contextmanager
def _remote_errors(text: str) -> Iterator[None]:
    """Turn backend failures (network, permissions, missing bucket) into one clear line."""
    try:
        yield
    except (CliError, DimpleError, KeyboardInterrupt):
        raise
    except OSError as e:
        raise CliError(f"cannot read remote {text}: {e}") from None
    except Exception as e:  # botocore and friends raise their own exception types
        raise CliError(f"cannot read remote {text}: {type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------------- keygen
def cmd_keygen(args: argparse.Namespace) -> int:
    from .crypto import X25519Cipher, generate_identity

    if args.convert is not None:
        text = sys.stdin.read() if args.convert == "-" else None
        if text is None:
            secret = _read_identity_file(args.convert)
        else:
            keys = [ln.strip() for ln in text.splitlines()
                    if ln.strip().upper().startswith(_SECRET_PREFIX)]
            if len(keys) != 1:
                raise _usage("standard input holds no single secret key line")
            secret = keys[0]
        try:
            print(X25519Cipher(secret).recipient)
        except ConfigurationError as e:
            raise _usage(f"bad key: {e}") from None
        return 0
    secret, public = generate_identity()
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"# created: {created}\n# public key: {public}\n{secret}\n"
    if args.output:
        path = Path(args.output)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force
                                                           else os.O_EXCL), 0o600)
        except FileExistsError:
            raise CliError(f"{path} exists; not overwriting a key (use --force)") from None
        except OSError as e:
            raise CliError(f"cannot write {path}: {e.strerror or e}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if not args.quiet:
        print(f"Public key: {public}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------- sync
def _instrument(storage: Storage, me: str, progress: Progress) -> dict[str, int]:
    """Report push and pull steps by wrapping this ``Storage`` object's calls.

    (Phase-level: sync.py has no progress hook yet; each wrapper only observes.)
    """
    stats: Counter[str] = Counter()
    state = {"done": 0, "total": 0}
    list_authors, read_manifest = storage.list_authors, storage.read_manifest
    read_bundles, write_bundle = storage.read_bundles, storage.write_bundle

    def w_list_authors() -> tuple[list[str], list[str]]:
        progress.line("pull: listing the remote")
        authors, bad = list_authors()
        state["total"] = len([a for a in authors if a != me])
        progress.line(f"pull: {state['total']} other author(s)")
        return authors, bad

    def w_read_manifest(author: str) -> bytes | None:
        if author != me:
            state["done"] += 1
            progress.bar(state["done"] - 1, state["total"], f"author {author}: manifest")
        return read_manifest(author)

    def w_read_bundles(author: str, names: Sequence[str]) -> dict[str, bytes | Exception]:
        progress.bar(state["done"] - 1, state["total"],
                     f"author {author}: {len(names)} bundle(s)")
        got = read_bundles(author, names)
        size = sum(len(v) for v in got.values() if isinstance(v, bytes))
        stats["bundles"] += len(names)
        stats["bytes"] += size
        progress.bar(state["done"], state["total"], f"author {author}: {_size(size)}")
        if not progress.tty:
            progress.line(f"pull: author {author}: {len(names)} bundle(s), {_size(size)}")
        return got

    def w_write_bundle(author: str, name: str, data: bytes) -> None:
        progress.line(f"push: uploading a bundle of {_size(len(data))}")
        write_bundle(author, name, data)
        stats["pushed_bytes"] += len(data)

    for attr, fn in (("list_authors", w_list_authors), ("read_manifest", w_read_manifest),
                     ("read_bundles", w_read_bundles), ("write_bundle", w_write_bundle)):
        setattr(storage, attr, fn)
    return stats


def _unpushed(engine: Engine, me: str) -> tuple[int, str | None]:
    t, m = schema.transactions, schema.meta
    with engine.connect() as conn:
        since = conn.execute(select(m.c.value).where(m.c.key == "pushed_through")).scalar()
        stmt = select(func.count(), func.min(t.c.id)).where(t.c.author == me)
        if since:
            stmt = stmt.where(t.c.id > since)
        count, oldest = conn.execute(stmt).one()
    return int(count), oldest


def _report_doc(report: SyncReport) -> dict[str, Any]:
    return {"pushed": report.pushed, "pulled": report.pulled, "applied": report.applied,
            "held": report.held, "errors": dict(report.errors),
            "requests": dict(report.requests)}


def cmd_sync(args: argparse.Namespace) -> int:
    from .db import DimpleDb

    keys = _keys(args)
    if not keys.given:
        raise _usage("sync needs a key: --identity-file PATH (or --identity, "
                     "$DIMPLEDB_IDENTITY_FILE, $DIMPLEDB_IDENTITY), --passphrase-env VAR, "
                     "or --no-encryption")
    keys.cipher()
    options = _storage_options(args.storage_option)
    progress = Progress(sys.stderr, enabled=not args.quiet and not args.no_progress)

    def notes(text: str) -> None:
        if args.verbose:
            print(f"note: {text}", file=sys.stderr)

    engine = _open_engine(args.database, readonly=False)
    fresh = not inspect(engine).has_table(schema.meta.name)
    if args.models:
        models: Any = _load_models(args.models)
        exclude: list[str] = list(args.exclude or [])
    else:
        models, exclude = _reflect(engine, args.exclude or [], notes)
    try:
        db = DimpleDb(engine, models, exclude=exclude, remote=args.remote,
                      storage_options=options or None, **keys.kwargs())
    except ConfigurationError as e:
        if "no tables to track" in str(e):
            raise CliError(f"nothing to sync in {args.database}: no table has a single string "
                           "or UUID primary key (see --models)") from None
        raise _usage(str(e)) from None
    try:
        storage = db.storage
        if _is_folder(storage) and not storage.fs.exists(storage.root) and not args.quiet:
            print(f"note: remote folder {storage.root} does not exist yet; it is created "
                  "on the first push", file=sys.stderr)
        db.create_all(models=False)
        if fresh and not args.quiet:
            print(f"note: {args.database} had no dimpledb bookkeeping tables; created them "
                  f"(author {db.author_id})" + ("" if args.adopt else
                  "; rows written before are not synced unless you pass --adopt"),
                  file=sys.stderr)
        notes(f"tracking {', '.join(sorted(db.tracked))}")
        if args.adopt:
            adopted = db.adopt()
            if not args.quiet:
                print(f"adopted {adopted} existing row(s)", file=sys.stderr)
        me = db.author_id
        count, _ = _unpushed(engine, me)
        if count:
            progress.line(f"push: {count} local transaction(s)")
        stats = _instrument(storage, me, progress)
        started = time.perf_counter()
        error: SyncError | None = None
        with _remote_errors(args.remote):
            try:
                report = db.sync()
            except SyncError as e:
                if e.report is None:
                    raise
                error, report = e, e.report
            finally:
                progress.finish()
        elapsed = time.perf_counter() - started
    finally:
        db.close()
        engine.dispose()
    if args.json:
        _print_json({**_report_doc(report), "ok": report.ok,
                     "bytes_downloaded": stats["bytes"], "bytes_uploaded": stats["pushed_bytes"]})
    elif not args.quiet:
        print(f"pushed {report.pushed} transaction(s), pulled {report.pulled}, applied "
              f"{report.applied} change(s), {report.held} held, in {elapsed:.2f} s")
    for who, message in sorted(report.errors.items()):
        kind = report.error_kinds.get(who)
        if who == "push":
            print(f"{PROG}: push failed: {message}", file=sys.stderr)
        elif kind == "decrypt":
            print(f"{PROG}: cannot decrypt the bundles of author {who} with the given "
                  f"{keys.what}: {message}", file=sys.stderr)
        else:
            print(f"{PROG}: author {who}: {message}", file=sys.stderr)
    if error is not None and not str(error).startswith("sync finished with errors"):
        print(f"{PROG}: {error}", file=sys.stderr)  # e.g. the remote could not be listed
    return 0 if error is None else 1


# ------------------------------------------------------------------------------- status
def _remote_status(storage: Storage, me: str, cursors: dict[str, str],
                   pushed_through: str | None) -> dict[str, Any]:
    authors, bad = storage.list_authors()
    out: dict[str, Any] = {"authors": [], "bad_entries": bad}
    for author in authors:
        entry: dict[str, Any] = {"author": author, "is_me": author == me}
        try:
            data = storage.read_manifest(author)
            if data is None:
                entry["error"] = "no manifest"
            else:
                m = decode_manifest(data, author)
                cursor = cursors.get(author) if author != me else pushed_through
                entry["last_transaction_id"] = m.last_transaction_id
                entry["last_sync_timestamp"] = m.last_sync_timestamp
                entry["pending"] = sum(b.transaction_count for b in m.bundles
                                       if cursor is None or b.last_transaction_id > cursor)
        except DimpleError as e:
            entry["error"] = str(e)
        out["authors"].append(entry)
    return out


def cmd_status(args: argparse.Namespace) -> int:
    engine = _open_engine(args.database, readonly=True)
    try:
        _bookkeeping(engine)
        me = _author(engine) or ""
        m, c, h, t = schema.meta, schema.cursors, schema.held, schema.transactions
        with engine.connect() as conn:
            pushed = conn.execute(select(m.c.value).where(m.c.key == "pushed_through")
                                  ).scalar()
            local = conn.execute(select(func.count()).select_from(t)
                                 .where(t.c.author == me)).scalar_one()
            cursors = list(conn.execute(select(c.c.author, c.c.last_transaction_id,
                                               c.c.synced_at).order_by(c.c.author)))
            held = list(conn.execute(select(h.c.entity_type, h.c.attribute, h.c.reason,
                                            func.count()).group_by(
                h.c.entity_type, h.c.attribute, h.c.reason).order_by(h.c.entity_type,
                                                                     h.c.attribute)))
        unpushed, oldest = _unpushed(engine, me)
    finally:
        engine.dispose()
    remote: dict[str, Any] | None = None
    if args.remote:
        storage = _open_remote(args.remote, args.storage_option, must_exist=True)
        with _remote_errors(args.remote):
            remote = _remote_status(storage, me, {a: tx for a, tx, _ in cursors}, pushed)
    if args.json:
        _print_json({
            "database": make_url(_db_url(args.database)).render_as_string(hide_password=True),
            "author_id": me, "local_transactions": local, "pushed_through": pushed,
            "unpushed": unpushed,
            "held": [{"entity_type": e, "attribute": a, "reason": r, "count": n}
                     for e, a, r, n in held],
            "cursors": [{"author": a, "last_transaction_id": tx, "synced_at": at}
                        for a, tx, at in cursors],
            "remote": remote,
        })
        return 0
    print(f"author       {me}")
    print(f"pushed       {pushed or 'nothing yet'}"
          + (f" ({_when(pushed)})" if pushed else ""))
    print(f"not pushed   {unpushed} of {local} local transaction(s)"
          + (f", oldest from {_when(oldest)}" if unpushed else ""))
    total_held = sum(n for *_, n in held)
    print(f"held         {total_held} change(s)")
    for e, a, r, n in held:
        print(f"               {e}.{a}: {n} ({r})")
    print(f"authors      {len(cursors)} pulled from")
    for a, tx, at in cursors:
        print(f"  {a}  through {tx} ({_when(tx)}), last pulled {at}")
    if remote is not None:
        print(f"remote       {args.remote}: {len(remote['authors'])} author(s)")
        for entry in remote["authors"]:
            who = entry["author"] + (" (this database)" if entry["is_me"] else "")
            if "error" in entry:
                print(f"  {who}: {entry['error']}")
            elif entry["is_me"]:
                print(f"  {who}: {entry['pending']} transaction(s) on the remote not "
                      "recorded as pushed here")
            else:
                print(f"  {who}: {entry['pending']} transaction(s) to pull, last sync "
                      f"{entry['last_sync_timestamp']}")
        for name in remote["bad_entries"]:
            print(f"  {name!r}: not an author folder (sync reports it as an error)")
    return 0


# ------------------------------------------------------------------------------- history
def _history_ids(entity_id: str) -> list[str]:
    ids = [entity_id]
    try:
        canonical = str(uuid.UUID(entity_id))
    except ValueError:
        return ids
    if canonical != entity_id:
        ids.append(canonical)
    return ids


def cmd_history(args: argparse.Namespace) -> int:
    engine = _open_engine(args.database, readonly=True)
    try:
        _bookkeeping(engine)
        me = _author(engine)
        changes: list[Change] = []
        with engine.connect() as conn:
            for entity_id in _history_ids(args.id):
                changes = changelog.history(conn, args.table, entity_id)
                if changes:
                    break
            known = changes or conn.execute(
                select(schema.changes.c.id).where(schema.changes.c.entity_type == args.table)
                .limit(1)).first() is not None
    finally:
        engine.dispose()
    if not changes:
        hint = "" if known else f" (no change of any row of table {args.table!r} is recorded)"
        raise CliError(f"no history for {args.table} {args.id}{hint}")
    if args.json:
        _print_json([{"id": ch.id, "transaction_id": ch.transaction_id, "author": ch.author,
                      "timestamp": ch.timestamp.isoformat(), "entity_type": ch.entity_type,
                      "entity_id": ch.entity_id, "attribute": ch.attribute,
                      "old_value": ch.old_value, "new_value": ch.new_value}
                     for ch in changes])
        return 0
    pk_names = {ch.attribute for ch in changes if ch.new_value == ch.entity_id
                and ch.old_value is None}
    print(f"{args.table} {changes[0].entity_id}: {len(changes)} change(s)")
    width = max(len(ch.attribute) for ch in changes)
    tx = None
    for ch in changes:
        if ch.transaction_id != tx:
            tx = ch.transaction_id
            who = ch.author + (" (this database)" if ch.author == me else "")
            print(f"{ch.timestamp.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC  "
                  f"transaction {tx}  by {who}")
        if ch.attribute in pk_names and ch.new_value is None:
            print(f"    {'(deleted)':<{width}}")
        elif ch.attribute in pk_names and ch.old_value is None:
            print(f"    {'(created)':<{width}}")
        else:
            print(f"    {ch.attribute:<{width}}  {_value(ch.old_value)} -> "
                  f"{_value(ch.new_value)}")
    return 0


# ------------------------------------------------------------------------------- inspect
def _manifest_doc(storage: Storage, author: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"author_id": author}
    try:
        data = storage.read_manifest(author)
        if data is None:
            doc["error"] = "no manifest (dimple_db.json)"
            manifest = None
        else:
            manifest = decode_manifest(data, author)
    except DimpleError as e:
        doc["error"] = f"bad manifest: {e}"
        manifest = None
    listed: set[str] = set()
    if manifest is not None:
        doc["last_transaction_id"] = manifest.last_transaction_id
        doc["last_sync_timestamp"] = manifest.last_sync_timestamp
        doc["transactions"] = sum(b.transaction_count for b in manifest.bundles)
        doc["bundles"] = [{"filename": b.filename, "transaction_count": b.transaction_count,
                           "first_transaction_id": b.first_transaction_id,
                           "last_transaction_id": b.last_transaction_id,
                           "created_at": b.created_at} for b in manifest.bundles]
        listed = {b.filename for b in manifest.bundles}
    doc["unlisted_files"] = [n for n in storage.list_files(author)
                             if n not in listed and n != "dimple_db.json"]
    return doc


def _decrypt(cipher: Cipher | None, blob: bytes, where: str, keys: Keys) -> bytes:
    from .crypto import is_age_file

    if cipher is None:
        if is_age_file(blob):
            raise _usage(f"{where} is encrypted: give --identity-file (or --identity, "
                         "--passphrase-env)")
        return blob
    try:
        return cipher.decrypt(blob)
    except DecryptionError as e:
        raise CliError(f"cannot decrypt {where} with the given {keys.what}: {e}") from None


def _inspect_bundle(storage: Storage, spec: str, keys: Keys) -> int:
    author, sep, name = spec.strip("/").partition("/")
    if not sep or not is_uuid(author) or not is_bundle_name(name):
        raise _usage(f"--bundle takes AUTHOR_ID/FIRST_LAST.json (as `inspect` lists them), "
                     f"not {spec!r}")
    cipher = keys.cipher() if keys.given else None
    try:
        blob = storage.read_bundle(author, name)
    except FileNotFoundError:
        raise CliError(f"no bundle {author}/{name} in the remote") from None
    plain = _decrypt(cipher, blob, f"{author}/{name}", keys)
    try:
        doc = json.loads(plain)
    except ValueError:
        doc = None
    if doc is not None:
        _print_json(doc)
    try:
        txs = decode_bundle(plain, author, name=name)
    except DimpleError as e:
        raise CliError(f"{author}/{name} is not a valid bundle: {e}") from None
    changes = sum(len(t[2]) for t in txs)
    print(f"{author}/{name}: {len(txs)} transaction(s), {changes} change(s)", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    keys = _keys(args)
    storage = _open_remote(args.remote, args.storage_option, must_exist=True)
    with _remote_errors(args.remote):
        if args.bundle:
            return _inspect_bundle(storage, args.bundle, keys)
        authors, bad = storage.list_authors()
        docs = [_manifest_doc(storage, a) for a in authors]
    if args.json:
        _print_json({"remote": args.remote, "authors": docs, "other_entries": bad})
        return 0
    print(f"remote {args.remote}: {len(authors)} author(s)")
    for doc in docs:
        print(f"\nauthor {doc['author_id']}")
        if "error" in doc:
            print(f"  {doc['error']}")
        if "bundles" in doc:
            print(f"  {len(doc['bundles'])} bundle(s), {doc['transactions']} transaction(s), "
                  f"last transaction {doc['last_transaction_id'] or '-'} "
                  f"({_when(doc['last_transaction_id'])}), manifest written "
                  f"{doc['last_sync_timestamp']}")
            for b in doc["bundles"]:
                print(f"  {b['filename']}  {b['transaction_count']:>6} tx  "
                      f"created {b['created_at']}")
        for n in doc["unlisted_files"]:
            print(f"  {n}  (not in the manifest: ignored by sync)")
    for name in bad:
        print(f"\n{name!r}: not an author folder (sync reports it as an error)")
    return 0


# ------------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if not keys.given:
        raise _usage("verify needs the key the bundles were encrypted to: --identity-file "
                     "PATH (or --identity, --passphrase-env VAR), or --no-encryption")
    cipher = keys.cipher()
    storage = _open_remote(args.remote, args.storage_option, must_exist=True)
    problems: list[str] = []
    notes: list[str] = []
    checked = transactions = 0
    with _remote_errors(args.remote):
        authors, bad = storage.list_authors()
        problems += [f"{n!r}: not an author folder (a canonical UUID)" for n in bad]
        for author in authors:
            data = storage.read_manifest(author)
            if data is None:
                notes.append(f"{author}: no manifest (nothing published yet)")
                continue
            try:
                manifest = decode_manifest(data, author)
            except DimpleError as e:
                problems.append(f"{author}/dimple_db.json: {e}")
                continue
            listed = {b.filename for b in manifest.bundles}
            blobs = storage.read_bundles(author, sorted(listed))
            for info in manifest.bundles:
                where = f"{author}/{info.filename}"
                checked += 1
                blob = blobs.get(info.filename)
                if not isinstance(blob, bytes):
                    problems.append(f"{where}: listed in the manifest but cannot be read "
                                    f"({blob or 'missing'})")
                    continue
                try:
                    plain = cipher.decrypt(blob)
                except DecryptionError as e:
                    problems.append(f"{where}: cannot decrypt with the given {keys.what}: {e}")
                    continue
                try:
                    txs = decode_bundle(plain, author, name=info.filename)
                except DimpleError as e:
                    problems.append(f"{where}: {e}")
                    continue
                ids = [t[0] for t in txs]
                if len(txs) != info.transaction_count:
                    problems.append(f"{where}: holds {len(txs)} transaction(s), the manifest "
                                    f"says {info.transaction_count}")
                elif ids[0] != info.first_transaction_id or ids[-1] != info.last_transaction_id:
                    problems.append(f"{where}: transaction ids do not match the manifest")
                else:
                    transactions += len(txs)
                    if args.verbose:
                        print(f"ok   {where}: {len(txs)} transaction(s)")
            for n in storage.list_files(author):
                if n not in listed and n != "dimple_db.json":
                    notes.append(f"{author}/{n}: not in the manifest (ignored by sync)")
    for p in problems:
        print(f"FAIL {p}")
    if not args.quiet:
        for n in notes:
            print(f"note {n}")
        verdict = "all good" if not problems else f"{len(problems)} problem(s)"
        print(f"verified {checked} bundle(s) ({transactions} transaction(s)) of "
              f"{len(authors)} author(s): {verdict}")
    return 1 if problems else 0


# ------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n"
                     f"(run `{self.prog} --help` for the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dimpledb`` command."""
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show library log messages and tracebacks")
    parser = _Parser(
        prog=PROG, parents=[common],
        description="Local-first sync for SQLAlchemy apps: keys, sync, and a look at the "
                    "change log and the remote.",
        epilog="Exit codes: 0 success; 1 the operation failed (sync or verification errors, "
               "a database or remote that cannot be read, a wrong key); 2 bad command line. "
               "DB is a SQLAlchemy URL or the path of a SQLite file; REMOTE a folder, "
               "file://, memory:// or s3://bucket/prefix URL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    p = sub.add_parser("keygen", parents=[common], help="make a new age identity",
                       description="Write a new age X25519 identity (secret key) in the "
                                   "age-keygen format, and print its public key (recipient) "
                                   "on stderr. With -y, print the public key of an existing "
                                   "identity file.")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the identity to FILE (mode 0600) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    p.add_argument("-y", dest="convert", metavar="IDENTITY_FILE", nargs="?", const="-",
                   help="print the public key of IDENTITY_FILE (or of stdin) and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the public key")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sync", parents=[common], help="push and pull a database",
                       description="Push the database's new transactions to REMOTE, pull "
                                   "the other authors' and merge them. Without --models, the "
                                   "tables are reflected from the database and every table "
                                   "with a single string/UUID primary key is tracked.")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("remote", metavar="REMOTE", help="folder path or fsspec URL")
    _add_key_options(p, recipients=True)
    _remote_options(p)
    p.add_argument("--models", metavar="MODULE:ATTR",
                   help="the app's models (a DeclarativeBase, MetaData or list) instead of "
                        "reflection; needed for types reflection cannot see (e.g. Uuid on "
                        "SQLite, custom TypeDecorators)")
    p.add_argument("--exclude", action="append", metavar="TABLE",
                   help="do not track TABLE; repeatable")
    p.add_argument("--adopt", action="store_true",
                   help="first record existing rows that have no history (a database used "
                        "before tracking) so that they sync")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="say which tables are tracked and which are not")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("status", parents=[common], help="what a database has synced",
                       description="This database's author id, what it pushed and has not "
                                   "pushed yet, what it pulled from each author, and held "
                                   "changes; with --remote, what waits there to be pulled.")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("--remote", metavar="REMOTE", help="also compare with this remote")
    _remote_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("history", parents=[common], help="the changes of one row",
                       description="Every recorded change of one row (entity), oldest first, "
                                   "grouped by transaction.")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("table", metavar="TABLE", help="the table name (entity type)")
    p.add_argument("id", metavar="ID", help="the row's primary key")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("inspect", parents=[common], help="look at a remote",
                       description="List the authors, manifests and bundles of a remote; "
                                   "with --bundle and a key, decrypt one bundle and print it.")
    p.add_argument("remote", metavar="REMOTE", help="folder path or fsspec URL")
    _add_key_options(p)
    _remote_options(p)
    p.add_argument("--bundle", "-b", metavar="AUTHOR/NAME",
                   help="decrypt and pretty-print this bundle")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", parents=[common], help="check every bundle of a remote",
                       description="Check that every bundle listed in every manifest exists, "
                                   "decrypts with the key, parses, and matches its manifest "
                                   "entry. Exit code 0 when all is well, 1 otherwise, with a "
                                   "FAIL line per problem.")
    p.add_argument("remote", metavar="REMOTE", help="folder path or fsspec URL")
    _add_key_options(p)
    _remote_options(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print only problems")
    p.add_argument("--verbose", "-v", action="store_true", help="also list good bundles")
    p.set_defaults(func=cmd_verify)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dimpledb-sa")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dimpledb`` command; returns (and, as a script, exits with) its exit code."""
    args = build_parser().parse_args(argv)
    args.debug = getattr(args, "debug", False)
    lib_log = logging.getLogger("dimpledb_sa")
    old = lib_log.level, lib_log.propagate
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    else:  # the CLI prints the errors itself; keep the library's warnings off stderr
        lib_log.setLevel(logging.CRITICAL)
        lib_log.propagate = False
    try:
        code: int = args.func(args)
        return code
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except ConfigurationError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dimpledb ... | head`: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (DimpleError, OSError, SQLAlchemyError) as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG}: error: unexpected {type(e).__name__}: {e} (run with --debug for "
              "the traceback)", file=sys.stderr)
        return 1
    finally:
        lib_log.setLevel(old[0])
        lib_log.propagate = old[1]


if __name__ == "__main__":
    sys.exit(main())
