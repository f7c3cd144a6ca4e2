"""A throw-away PostgreSQL server for the test suite and the benchmarks.

:func:`start` finds the server binaries (``$DIMPLEDB_PG_BIN``, the ``PATH``, then
``/usr/lib/postgresql/*/bin``, newest version first), runs ``initdb`` into a new temporary
folder (trust authentication, UTF-8, the C locale, no fsync) and ``pg_ctl start`` with a server
that listens on 127.0.0.1 only, on a free port, and on a unix socket in that folder, with
``fsync``, ``synchronous_commit`` and ``full_page_writes`` off (nothing here survives a crash on
purpose). ``initdb`` and ``postgres`` refuse to run as root: when the euid is 0 they run as the
``postgres`` system user (the Debian package's; else ``nobody``), which owns the folder.
:meth:`PgServer.stop` stops the server and removes the folder (also at exit, as a fallback).

:meth:`PgServer.create_database` makes a fresh, empty database (``TEMPLATE template0``) and
returns its SQLAlchemy URL (``postgresql+psycopg://``); :meth:`PgServer.drop_database`
removes one, closing what is still connected to it. The tests use the cheaper
:meth:`PgServer.create_schema` instead: one schema per database a test opens, reached through
the ``search_path`` of its engine (:meth:`PgServer.schema_url`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PgServer", "PgUnavailable", "find_bin_dir", "start"]

_PROGRAMS = ("initdb", "pg_ctl", "postgres")


class PgUnavailable(RuntimeError):
    """The PostgreSQL server binaries or the driver are missing, or the server did not start."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    explicit = os.environ.get("DIMPLEDB_PG_BIN")
    if explicit:  # that folder only
        candidates = [explicit]
    else:
        found = shutil.which("pg_ctl")
        candidates = [str(Path(found).resolve().parent)] if found else []

        def version(path: str) -> tuple[int, ...]:
            part = Path(path).parent.name
            return tuple(int(x) for x in part.split(".") if x.isdigit()) or (0,)

        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version,
                             reverse=True)
    for folder in candidates:
        if all(os.access(Path(folder) / p, os.X_OK) for p in _PROGRAMS):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root; ``None`` otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgUnavailable("running as root and there is no `postgres` or `nobody` user to run "
                        "the PostgreSQL server as")


class PgServer:
    """A running temporary server; see the module docstring."""

    def __init__(self, bin_dir: Path, folder: Path, user: pwd.struct_passwd | None,
                 port: int) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.data = folder / "data"
        self.user = user
        self.port = port
        self.host = "127.0.0.1"
        self._names = itertools.count(1)
        self._admin: Any = None
        self.running = False

    # -- running the programs ----------------------------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.folder)}
        done = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.folder,
                              env=env, capture_output=True, text=True, timeout=120, **kw)
        if check and done.returncode != 0:
            raise PgUnavailable(f"{args[0]} failed ({done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def _init(self) -> None:
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.folder}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# dimpledb-sa test server\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _start(self) -> None:
        log = self.folder / "server.log"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60",
                         "-o", f"-p {self.port}", "start", check=False)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PgUnavailable(f"pg_ctl start failed: {done.stderr.strip()} {tail}")
        self.running = True

    def stop(self) -> None:
        """Stop the server and remove its folder; idempotent."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                      check=False)
            self.running = False
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- databases ---------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def admin(self) -> Any:
        """A psycopg connection (autocommit) to the ``postgres`` database."""
        if self._admin is None or self._admin.closed:
            import psycopg

            self._admin = psycopg.connect(host=self.host, port=self.port, user="postgres",
                                          dbname="postgres", autocommit=True)
        return self._admin

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.admin().execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (closing its connections)."""
        name = url.rsplit("/", 1)[1]
        self.admin().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_schema(self, prefix: str = "s") -> str:
        """A new, empty schema in the ``postgres`` database; returns its name. An engine
        whose ``search_path`` is that schema (:meth:`schema_url`) sees only its own tables:
        a fresh database for a fraction of ``CREATE DATABASE``'s cost."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.admin().execute(f'CREATE SCHEMA "{name}"')
        return name

    def drop_schema(self, name: str) -> None:
        """Drop a schema and everything in it (give up after a few seconds if a connection
        still holds a lock on it: the server is thrown away at the end anyway)."""
        admin = self.admin()
        with contextlib.suppress(Exception):
            admin.execute("SET lock_timeout = '3s'")
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def schema_url(self, schema: str) -> str:
        """The URL of an engine living in ``schema`` of the ``postgres`` database (its
        ``search_path``, passed to the server as a connection option in the URL's query, so
        that the URL alone, e.g. handed to another process, reaches the same tables)."""
        return f"{self.url()}?options=-csearch_path%3D{schema}"


def start() -> PgServer:
    """Start a temporary server (see the module docstring); :class:`PgUnavailable` if it
    cannot be."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PgUnavailable("the psycopg driver is not installed "
                            "(pip install 'psycopg[binary]')") from exc
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PgUnavailable("the PostgreSQL server binaries (initdb, pg_ctl, postgres) were not "
                            "found on PATH nor in /usr/lib/postgresql/*/bin; install the "
                            "`postgresql` package or set $DIMPLEDB_PG_BIN")
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="dimpledb-pg-"))
    last: PgUnavailable | None = None
    server = PgServer(bin_dir, folder, user, _free_port())
    try:
        server._init()
        for _ in range(3):  # the free port can be taken between choosing and binding it
            try:
                server._start()
                break
            except PgUnavailable as exc:
                last = exc
                server.port = _free_port()
        else:
            raise last or PgUnavailable("the server did not start")
    except BaseException:
        server.stop()
        raise
    atexit.register(server.stop)
    return server
