"""Shared test fixtures.

The database: ``database`` is the kind a test runs on, ``"sqlite"`` or ``"postgresql"`` (marked
``postgresql``: ``pytest -m postgresql`` runs only those); every test that uses it (through
``engine``, ``db``, ``devs`` or ``databases``) runs on both, the PostgreSQL run with the memory
remote only (``pytest_generate_tests``). ``pg_server`` is the PostgreSQL server
(``pgserver.py``), started once per session when a PostgreSQL test first needs it; when it
cannot start, those tests are skipped with the reason, or fail when ``$CI`` is set.
``databases`` makes engines of either kind (``databases.py``). A test marked
``@pytest.mark.sqlite_only("reason")`` skips its PostgreSQL run with that reason.

A tracked database: ``engine`` is a SQLite file (``app.db`` in the test's temporary folder) or
a fresh PostgreSQL schema, and ``db`` a ``DimpleDb`` on it tracking ``models`` (tables created,
closed afterwards, which also closes its live queries and watchers). ``models`` is
``models.Base``, the capture tests' schema; a test module that needs another set overrides the
``models`` fixture (the live-query and watcher tests return ``models.LiveBase``).

Remote storage: ``remote`` runs a test once per backend (``memory``, ``local`` folder and
``s3``), each time on a fresh, empty location; ``s3_server`` is the loopback S3 endpoint
(moto's ``ThreadedMotoServer``), started once per session and only when an S3 test runs;
``devs`` makes sync devices on ``remote``.

The command line: ``world`` (module-scoped, a copy of the session's ``world_template``) and
``no_key_in_env``, see ``cliworld``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import DeclarativeBase

if importlib.util.find_spec("dimpledb_sa") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pgserver

# after the path set-up above: they import dimpledb_sa
from cliworld import World, copy_world, make_world
from databases import Databases
from models import Base, make_engine
from syncworld import Devices, device_set

import dimpledb_sa as dimple

# --------------------------------------------------------------------------- the database kind

BACKENDS = ("memory", "local", "s3")
PG = pytest.mark.postgresql


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests on every database kind and remote backend: SQLite with each backend,
    PostgreSQL with the memory one (the backends do not depend on the database)."""
    names = metafunc.fixturenames
    direct: set[str] = set()
    for m in metafunc.definition.iter_markers("parametrize"):
        arg = m.args[0]
        direct.update(x.strip() for x in arg.split(",")) if isinstance(arg, str) else (
            direct.update(arg))
    db_here = "database" in names and "database" not in direct
    remote_here = "remote" in names and "remote" not in direct
    if db_here and remote_here:
        metafunc.parametrize(
            ("database", "remote"),
            [*[("sqlite", b) for b in BACKENDS],
             pytest.param("postgresql", "memory", marks=PG)],
            indirect=True, ids=[*BACKENDS, "postgresql-memory"])
    elif db_here:
        metafunc.parametrize("database", ["sqlite", pytest.param("postgresql", marks=PG)],
                             indirect=True)
    elif remote_here:
        metafunc.parametrize("remote", BACKENDS, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the PostgreSQL runs of tests that name other remotes than memory themselves."""
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        p = params.params if params is not None else {}
        if p.get("database") == "postgresql" and p.get("remote", "memory") != "memory":
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    """The session's PostgreSQL server (see ``pgserver.py``)."""
    try:
        server = pgserver.start()
    except pgserver.PgUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL is required in CI and could not start: {exc}",
                        pytrace=False)
        pytest.skip(f"PostgreSQL is not available here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgresql_url(pg_server: pgserver.PgServer) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database on the session's server (the async
    tests' PostgreSQL runs), dropped afterwards."""
    url = pg_server.create_database("a")
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """The kind of database this run of the test uses: ``"sqlite"`` or ``"postgresql"``."""
    kind: str = getattr(request, "param", "sqlite")
    if kind == "postgresql":
        marker = request.node.get_closest_marker("sqlite_only")
        if marker is not None:
            pytest.skip(f"SQLite only: {marker.args[0] if marker.args else 'by nature'}")
        request.getfixturevalue("pg_server")
    return kind


@pytest.fixture
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    """Engines of either kind (``databases.Databases``), disposed afterwards."""
    made = Databases(tmp_path, lambda: request.getfixturevalue("pg_server"))
    yield made
    made.close()


# --------------------------------------------------------------------------- a tracked database


@pytest.fixture
def models() -> type[DeclarativeBase]:
    """What ``db`` tracks: ``models.Base``, unless the test module overrides this fixture."""
    return Base


@pytest.fixture
def engine(tmp_path: Path, database: str, databases: Databases) -> Iterator[Engine]:
    eng = (make_engine(tmp_path / "app.db") if database == "sqlite"
           else databases.engine(database, "app"))
    yield eng
    eng.dispose()


@pytest.fixture
def db(engine: Engine, models: type[DeclarativeBase]) -> Iterator[dimple.DimpleDb]:
    d = dimple.DimpleDb(engine, models)
    d.create_all()
    yield d
    d.close()


# --------------------------------------------------------------------------- remote storage

S3_KEY = "dimpledb-test-key"
S3_SECRET = "dimpledb-test-secret"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class Remote:
    """A fresh, empty remote location: pass ``url`` and ``storage_options`` to the library."""

    backend: str  # "memory" | "local" | "s3"
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def filesystem(self, **extra: Any) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem and root path, to look at or tamper with the remote
        (local folders are created as files are written)."""
        if self.backend == "local":
            extra = {"auto_mkdir": True, **extra}
        fs, root = fsspec.core.url_to_fs(self.url, **{**self.storage_options, **extra})
        return fs, root


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of an S3 server on 127.0.0.1 (a free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


def s3_options(endpoint: str) -> dict[str, Any]:
    """storage_options for the test server: explicit credentials, nothing from the env."""
    return {
        "endpoint_url": endpoint,
        "key": S3_KEY,
        "secret": S3_SECRET,
        "client_kwargs": {"region_name": S3_REGION},
    }


def reset_s3(endpoint: str) -> None:
    """Forget every bucket and object on the test server."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    with opener.open(request, timeout=30) as response:
        response.read()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on a freshly reset test server; returns its name."""
    reset_s3(s3_server)
    bucket = f"dimpledb-{uuid.uuid4().hex[:20]}"
    fs, _ = fsspec.core.url_to_fs(f"s3://{bucket}", **s3_options(s3_server))
    fs.call_s3("create_bucket", Bucket=bucket)  # no LocationConstraint: us-east-1
    fs.invalidate_cache()
    return bucket


@pytest.fixture
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    """A fresh, empty remote location on each backend in turn."""
    backend: str = request.param
    if backend == "memory":
        top = f"/dimpledb-test-{uuid.uuid4().hex}"  # the memory filesystem is process-global
        yield Remote(backend, f"memory:/{top}/remote", {})
        mem = fsspec.filesystem("memory")
        if mem.exists(top):
            mem.rm(top, recursive=True)
    elif backend == "local":
        yield Remote(backend, str(tmp_path / "remote"), {})  # not created yet, on purpose
    else:
        endpoint: str = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        yield Remote(backend, f"s3://{bucket}/remote", s3_options(endpoint))


@pytest.fixture
def devs(tmp_path: Path, remote: Remote, database: str,
         databases: Databases) -> Iterator[Devices]:
    """Devices (``syncworld``) on ``remote`` and ``database``, closed afterwards;
    ``test_merge`` has its own."""
    with device_set(tmp_path, remote.url, remote.storage_options, database=database,
                    databases=databases) as d:
        yield d


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="session")
def world_template(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The command-line tests' world (``cliworld.make_world``), built once per session and
    never changed: ``world`` copies it."""
    return make_world(tmp_path_factory.mktemp("cli-template"))


@pytest.fixture(scope="module")
def world(world_template: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The command-line tests' world, fresh for each test module: a copy of
    ``world_template`` (``cliworld.copy_world``), which the module's tests may change."""
    return copy_world(world_template, tmp_path_factory.mktemp("cli"))


@pytest.fixture
def no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``$DIMPLEDB_IDENTITY*`` from the caller's environment."""
    for name in ("DIMPLEDB_IDENTITY", "DIMPLEDB_IDENTITY_FILE"):
        monkeypatch.delenv(name, raising=False)
