"""The ``dimpledb`` command itself: its argument parser, dispatch and exit codes.

This module owns :func:`main` (the console script ``dimpledb = dimpledb_sa.cli:main`` and
``python -m dimpledb_sa.cli``) and :func:`build_parser`: the subcommands and their options,
usage errors that point at ``--help``, ``--debug`` (library log messages and tracebacks),
and the mapping of failures to exit codes: 0 success, 1 the operation failed (sync errors,
verification problems, a database or remote that cannot be read, a wrong key), 2 the
command line is wrong (bad arguments or option values, unreadable key), 130 interrupted.
Results go to stdout, messages to stderr; the commands live in their own modules.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from sqlalchemy.exc import SQLAlchemyError

from ..core.errors import ConfigurationError, DimpleError
from .keys import add_key_options, cmd_keygen
from .local import cmd_history, cmd_status, cmd_sync
from .output import PROG, CliError
from .recipients import cmd_recipients
from .remote import add_remote_options, cmd_inspect, cmd_verify
from .timeline import cmd_log, cmd_revert, cmd_show

__all__ = ["build_parser", "main"]


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

    p = sub.add_parser("keygen", parents=[common], help="make a new age identity or device key",
                       description="Write a new age X25519 identity (secret key) in the "
                                   "age-keygen format, or with --device a device key (an "
                                   "unencrypted OpenSSH Ed25519 private key, which also signs "
                                   "what the device uploads), and print its public key "
                                   "(recipient) on stderr. With -y, print the public key of "
                                   "an existing identity file.")
    p.add_argument("--device", action="store_true",
                   help="make a device key (OpenSSH Ed25519; with -o also writes FILE.pub)")
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
    add_key_options(p, recipients=True)
    add_remote_options(p)
    p.add_argument("--models", metavar="MODULE:ATTR",
                   help="the app's models (a DeclarativeBase, MetaData or list) instead of "
                        "reflection; needed for types reflection cannot see (e.g. Uuid on "
                        "SQLite, custom TypeDecorators)")
    p.add_argument("--exclude", action="append", metavar="TABLE",
                   help="do not track TABLE; repeatable")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="with a device key: also accept other authors' unsigned files "
                        "(require_signatures=False)")
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
    add_remote_options(p)
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

    p = sub.add_parser("log", parents=[common], help="transactions, newest first",
                       description="The database's transactions (its own and those pulled), "
                                   "newest first, each with what it changed: rows created "
                                   "and deleted, attributes changed from old to new value.")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("--author", metavar="A",
                   help="only transactions by author id A (`me`: this database)")
    p.add_argument("--table", metavar="T", help="only transactions that changed a row of T")
    p.add_argument("--limit", "-n", metavar="N", type=int, default=20,
                   help="show at most N transactions (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("revert", parents=[common], help="undo one transaction",
                       description="Record a new local transaction that undoes transaction "
                                   "TX (of any author): attributes it changed go back to "
                                   "their values before it unless changed since, rows it "
                                   "created are deleted, rows it deleted come back. The next "
                                   "sync shares it. Tables are reflected unless --models.")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("transaction", metavar="TX", help="the transaction id (see `log`)")
    p.add_argument("--models", metavar="MODULE:ATTR",
                   help="the app's models instead of reflection (see `sync --help`)")
    p.add_argument("--exclude", action="append", metavar="TABLE",
                   help="do not track TABLE; repeatable")
    p.add_argument("--json", action="store_true", help="print the new transaction as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_revert)

    p = sub.add_parser("show", parents=[common], help="one row as it was at a time",
                       description="One row's values as of a point in time, re-derived from "
                                   "its history (the log's JSON values).")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("table", metavar="TABLE", help="the table name (entity type)")
    p.add_argument("id", metavar="ID", help="the row's primary key")
    p.add_argument("--as-of", metavar="TIME", default="now",
                   help="an ISO-8601 time, UTC unless it has an offset "
                        "(2026-11-26T10:30:00Z, 2026-11-26 11:30+01:00), or `now` (default)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("inspect", parents=[common], help="look at a remote",
                       description="List the authors, manifests and bundles of a remote; "
                                   "with --bundle and a key, decrypt one bundle and print it.")
    p.add_argument("remote", metavar="REMOTE", help="folder path or fsspec URL")
    add_key_options(p)
    add_remote_options(p)
    p.add_argument("--bundle", "-b", metavar="AUTHOR/NAME",
                   help="decrypt and pretty-print this bundle")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", parents=[common], help="check every bundle of a remote",
                       description="Check that every bundle listed in every manifest exists, "
                                   "decrypts with the key, parses, and matches its manifest "
                                   "entry, and that every signature (FILE.sig) verifies, each "
                                   "author's files by one key. Exit code 0 when all is well, "
                                   "1 otherwise, with a FAIL line per problem.")
    p.add_argument("remote", metavar="REMOTE", help="folder path or fsspec URL")
    add_key_options(p)
    add_remote_options(p)
    p.add_argument("--require-signatures", action="store_true",
                   help="an unsigned manifest or bundle is a problem (not just counted)")
    p.add_argument("--allowed-signers", metavar="FILE",
                   help="an OpenSSH allowed_signers file ('AUTHOR_ID ssh-ed25519 AAAA...' "
                        "lines, '*' for any author): a file signed by a key it does not "
                        "list for its author is a problem")
    p.add_argument("--quiet", "-q", action="store_true", help="print only problems")
    p.add_argument("--verbose", "-v", action="store_true", help="also list good bundles")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("recipients", parents=[common], help="the keys a database trusts",
                       description="List, add or remove (revoke) the public keys a database "
                                   "encrypts to and accepts signatures from; every later "
                                   "sync uses them. Removed keys stay listed as revoked.")
    p.add_argument("action", choices=["list", "add", "remove", "unpin"],
                   help="list: keys and pinned signers; add/remove KEY...: list or revoke "
                        "keys; unpin AUTHOR: forget an author's pinned signing key")
    p.add_argument("database", metavar="DB", help="SQLAlchemy URL or SQLite file path")
    p.add_argument("keys", metavar="KEY", nargs="*",
                   help="age1... or 'ssh-ed25519 AAAA...' keys, or files of them (for unpin: "
                        "the author id)")
    p.add_argument("--restore", action="store_true", help="add: trust a revoked key again")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=cmd_recipients)
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
