"""Tests for ``alembic_ext``: plain Alembic on a tracked database.

The acceptance test drives the real ``alembic`` command line in a temporary project:
``init``, the three lines added to the generated ``env.py``, a migration calling
``op.create_dimpledb_tables()``, ``revision --autogenerate`` (which never mentions the
``dimple_*`` tables), ``upgrade`` (after which the changes an older schema held are
replayed) and ``check``. In-process tests cover the filters, the ops' rendering and
``--sql`` mode, the drop op, and the transaction ``replay_held`` runs in (its own, Alembic's
outer one with transactional DDL, or one the caller opened before ``configure()``).
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata, render_python_code
from alembic.config import Config
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from databases import Databases
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    inspect,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import alembic_ext
import dimpledb_sa as dimple
from dimpledb_sa.core import changelog, schema
from dimpledb_sa.core.rows import insert_many
from dimpledb_sa.sync import merge

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[1]
ALEMBIC = Path(sys.executable).with_name("alembic")

MODELS_V1 = '''
import dimpledb_sa as dimple
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
'''

MODELS_V2 = MODELS_V1 + '''    priority: Mapped[int | None]


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    word: Mapped[str]
'''

# The three lines a user adds to the env.py that ``alembic init`` wrote.
LINE_IMPORT = "import alembic_ext"
LINE_FILTERS = ("include_object=alembic_ext.include_object, "
                "include_name=alembic_ext.include_name,")
LINE_REPLAY = "alembic_ext.replay_held(connection, target_metadata)"


def _patch_env(env: str) -> str:
    """The generated env.py with the three lines (and the models' metadata) added."""
    edits = [
        ("from alembic import context\n", f"from alembic import context\n{LINE_IMPORT}\n"),
        ("target_metadata = None\n", "import models\ntarget_metadata = models.Base.metadata\n"),
        ("            connection=connection, target_metadata=target_metadata\n",
         "            connection=connection, target_metadata=target_metadata,\n"
         f"            {LINE_FILTERS}\n"),
        ("        with context.begin_transaction():\n            context.run_migrations()\n",
         "        with context.begin_transaction():\n            context.run_migrations()\n"
         f"            {LINE_REPLAY}\n"),
    ]
    for old, new in edits:
        assert env.count(old) == 1, f"alembic's env.py template changed: {old!r}"
        env = env.replace(old, new)
    return env


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Project:
    """A temporary Alembic project driven through the real command line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ,
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def alembic(self, *args: str) -> str:
        done = subprocess.run([str(ALEMBIC), *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"alembic {' '.join(args)} failed:\n{out}"
        return out

    def new_scripts(self, before: set[Path]) -> Path:
        (made,) = set((self.root / "migrations" / "versions").glob("*.py")) - before
        return made

    def scripts(self) -> set[Path]:
        return set((self.root / "migrations" / "versions").glob("*.py"))

    def models(self, source: str, version: int) -> ModuleType:
        (self.root / "models.py").write_text(source)
        return _load(self.root / "models.py", f"alembic_ext_test_models_v{version}")


def _table_rows(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        table = Table(name, MetaData(), autoload_with=conn)
        return sorted(tuple(r) for r in conn.execute(select(table)))


def _held(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.held)).scalar_one())


@pytest.mark.skipif(not ALEMBIC.exists(), reason="the alembic command is not installed")
def test_alembic_command_line_end_to_end(tmp_path: Path, database: str,
                                        databases: Databases) -> None:
    project = Project(tmp_path / "project")
    project.root.mkdir()
    project.alembic("init", "migrations")
    ini = project.root / "alembic.ini"
    url = "sqlite:///app.db" if database == "sqlite" else databases.url(database, "app")
    ini.write_text(re.sub(r"(?m)^sqlalchemy\.url = .*$",
                          lambda _: "sqlalchemy.url = " + url.replace("%", "%%"),
                          ini.read_text()))
    env_py = project.root / "migrations" / "env.py"
    env_py.write_text(_patch_env(env_py.read_text()))
    v1 = project.models(MODELS_V1, 1)

    # a first migration, written by hand, creates the bookkeeping tables with the op
    before = project.scripts()
    project.alembic("revision", "-m", "dimpledb bookkeeping tables")
    first = project.new_scripts(before)
    script = first.read_text()
    script = re.sub(r'(def upgrade\(\) -> None:\n    """Upgrade schema."""\n)    pass',
                    r"\1    op.create_dimpledb_tables()", script)
    script = re.sub(r'(def downgrade\(\) -> None:\n    """Downgrade schema."""\n)    pass',
                    r"\1    op.drop_dimpledb_tables()", script)
    assert "op.create_dimpledb_tables()" in script and "op.drop_dimpledb_tables()" in script
    first.write_text(script)
    project.alembic("upgrade", "head")
    app_engine = (create_engine(f"sqlite:///{project.root / 'app.db'}") if database == "sqlite"
                  else databases.engine(database, "app"))
    insp = inspect(app_engine)
    assert set(schema.metadata.tables) <= set(insp.get_table_names())
    assert "todo" not in insp.get_table_names()
    assert {i["name"] for i in insp.get_indexes("dimple_changes")} >= {
        "ix_dimple_changes_transaction"}

    # autogenerate proposes the models' table, and nothing about the bookkeeping tables
    before = project.scripts()
    project.alembic("revision", "--autogenerate", "-m", "todo")
    script = project.new_scripts(before).read_text()
    assert "op.create_table('todo'" in script
    assert "dimple" not in script
    project.alembic("upgrade", "head")

    # an older device (this database) and a newer one that has a priority and tags
    remote = str(tmp_path / "remote")
    newer_engine = create_engine(f"sqlite:///{tmp_path / 'newer.db'}")
    v2 = _load_v2(tmp_path)
    app = dimple.DimpleDb(app_engine, v1.Base, remote=remote, encryption=False)
    newer = dimple.DimpleDb(newer_engine, v2.Base, remote=remote, encryption=False)
    try:
        newer.create_all()
        with app.sessionmaker(expire_on_commit=False)() as s:
            todo = v1.Todo(text="written before the upgrade")
            s.add(todo)
            s.commit()
        app.sync()
        newer.sync()
        with newer.sessionmaker()() as s:
            s.add_all([v2.Tag(word="home"), v2.Tag(word="work"),
                       v2.Todo(text="from the newer device", priority=3)])
            row = s.get(v2.Todo, todo.id)
            assert row is not None
            row.priority = 1
            s.commit()
        newer.sync()
        report = app.sync()
        assert report.held == 2 + 2 * 2  # two priorities, two tags of two columns
    finally:
        app.close()
        app_engine.dispose()

    # the new models, autogenerated, upgraded: env.py replays what was held
    project.models(MODELS_V2, 2)
    before = project.scripts()
    project.alembic("revision", "--autogenerate", "-m", "priority and tags")
    script = project.new_scripts(before).read_text()
    assert "op.add_column('todo'" in script and "'priority'" in script
    assert "op.create_table('tag'" in script
    assert "dimple" not in script
    project.alembic("upgrade", "head")
    assert _held(app_engine) == 0
    for table in ("todo", "tag"):
        assert _table_rows(app_engine, table) == _table_rows(newer_engine, table)
    assert "No new upgrade operations detected" in project.alembic("check")

    # the upgraded app syncs on with nothing held
    app = dimple.DimpleDb(app_engine, v2.Base, remote=remote, encryption=False)
    try:
        report = app.sync()
        assert report.held == 0 and report.errors == {} and report.applied == 0
    finally:
        app.close()
        newer.close()
        app_engine.dispose()
        newer_engine.dispose()


def _load_v2(tmp_path: Path) -> ModuleType:
    path = tmp_path / "models_v2.py"
    path.write_text(MODELS_V2)
    return _load(path, "alembic_ext_test_newer_models")


EXAMPLE = REPO / "examples" / "alembic_project"


@pytest.mark.skipif(not ALEMBIC.exists(), reason="the alembic command is not installed")
def test_example_project_upgrades_checks_and_runs(tmp_path: Path) -> None:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(
        "*.db", "remote", "__pycache__"))
    env_py = (root / "migrations" / "env.py").read_text()
    for line in (LINE_IMPORT, LINE_FILTERS, LINE_REPLAY):
        assert line in env_py
    project = Project(root)
    project.alembic("upgrade", "head")
    assert "No new upgrade operations detected" in project.alembic("check")
    done = subprocess.run([sys.executable, "app.py", "buy", "milk"], cwd=root, env=project.env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "[ ] buy milk" in done.stdout


# --------------------------------------------------------------------------- filters


def test_filters_keep_bookkeeping_tables_out_and_pass_the_rest() -> None:
    todo = Table("todo", MetaData(), Column("id", String, primary_key=True),
                 Column("text", String))
    bk = schema.changes
    inc = alembic_ext.include_object
    assert inc(bk, bk.name, "table", False, None) is False
    assert inc(bk.c.entity_id, "entity_id", "column", False, None) is False
    index = next(iter(bk.indexes))
    assert inc(index, index.name, "index", False, None) is False
    assert inc(todo, "todo", "table", False, None) is True
    assert inc(todo.c.text, "text", "column", True, None) is True

    name = alembic_ext.include_name
    assert name("dimple_held", "table", {"schema_name": None}) is False
    assert name("reason", "column", {"table_name": "dimple_held"}) is False
    assert name("todo", "table", {"schema_name": None}) is True
    assert name("text", "column", {"table_name": "todo"}) is True
    assert name(None, "schema", {}) is True

    seen: list[str | None] = []

    def user_object(obj: Any, n: str | None, type_: str, reflected: bool, cmp: Any) -> bool:
        seen.append(n)
        return n != "skipme"

    def user_name(n: str | None, type_: str, parents: Any) -> bool:
        seen.append(n)
        return n != "skipme"

    inc2 = alembic_ext.make_include_object(user_object)
    assert inc2(bk, bk.name, "table", False, None) is False
    assert inc2(todo, "todo", "table", False, None) is True
    assert inc2(todo, "skipme", "table", False, None) is False
    name2 = alembic_ext.make_include_name(user_name)
    assert name2("dimple_meta", "table", {}) is False
    assert name2("skipme", "table", {}) is False
    assert seen == ["todo", "skipme", "skipme"]  # never asked about bookkeeping objects


def test_autogenerate_comparison_ignores_bookkeeping_tables(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'cmp.db'}")
    models = MetaData()
    Table("todo", models, Column("id", String, primary_key=True))
    with engine.begin() as conn:
        schema.metadata.create_all(conn)  # in the database, not in the models
        unfiltered = compare_metadata(MigrationContext.configure(conn), models)
        assert any(d[0] == "remove_table" and d[1].name.startswith("dimple_")
                   for d in unfiltered if isinstance(d, tuple))  # what the filters prevent
        opts = {"include_object": alembic_ext.include_object,
                "include_name": alembic_ext.include_name}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), models)
        assert [d[0] for d in diff] == ["add_table"]
        # models that list the bookkeeping tables too (db.metadata): still nothing for them
        both = MetaData()
        Table("todo", both, Column("id", String, primary_key=True))
        for t in schema.metadata.tables.values():
            t.to_metadata(both)
        conn.exec_driver_sql("DROP TABLE dimple_meta")
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), both)
        assert [d[0] for d in diff] == ["add_table"]
    engine.dispose()


# --------------------------------------------------------------------------- ops


def test_ops_render_reverse_and_emit_sql_offline() -> None:
    code = render_python_code(ops.UpgradeOps(ops=[alembic_ext.CreateDimpleDbTablesOp()]))
    assert "op.create_dimpledb_tables()" in code
    code = render_python_code(ops.UpgradeOps(
        ops=[alembic_ext.DropDimpleDbTablesOp(checkfirst=False)]))
    assert "op.drop_dimpledb_tables(checkfirst=False)" in code
    assert isinstance(alembic_ext.CreateDimpleDbTablesOp().reverse(),
                      alembic_ext.DropDimpleDbTablesOp)
    assert isinstance(alembic_ext.DropDimpleDbTablesOp().reverse(),
                      alembic_ext.CreateDimpleDbTablesOp)


ENV_PY = '''
from alembic import context
from sqlalchemy import create_engine

import alembic_ext

config = context.config
target_metadata = None  # tables made by migrations only: replay reflects them


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      include_object=alembic_ext.include_object,
                      include_name=alembic_ext.include_name)
    with context.begin_transaction():
        context.run_migrations()
        config.attributes["replayed"] = alembic_ext.replay_held(None)


def run_migrations_online():
    mode = config.attributes.get("mode", "plain")
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    opener = engine.begin if mode == "external" else engine.connect
    with opener() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transactional_ddl=True if mode == "transactional" else None,
                          include_object=alembic_ext.include_object,
                          include_name=alembic_ext.include_name)
        with context.begin_transaction():
            context.run_migrations()
            config.attributes["replayed"] = alembic_ext.replay_held(connection,
                                                                    target_metadata)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

REV_1 = '''
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_dimpledb_tables()
    op.create_table("todo", sa.Column("id", sa.String(36), primary_key=True),
                    sa.Column("text", sa.String, nullable=False))


def downgrade():
    op.drop_table("todo")
    op.drop_dimpledb_tables()
'''

REV_2 = '''
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("todo", sa.Column("priority", sa.Integer, nullable=True))


def downgrade():
    op.drop_column("todo", "priority")
'''


class OldBase(DeclarativeBase):
    pass


class OldTodo(OldBase):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=dimple.new_id)
    text: Mapped[str]


class NewBase(DeclarativeBase):
    pass


class NewTodo(NewBase):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    priority: Mapped[int | None]


@pytest.fixture
def inproc(tmp_path: Path, database: str, databases: Databases
           ) -> Iterator[tuple[Config, Engine]]:
    """An in-process Alembic project (revisions 0001, 0002) on the database ``app``."""
    root = tmp_path / "inproc"
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(ENV_PY)
    (root / "script.py.mako").write_text("")
    (root / "versions" / "0001_dimpledb.py").write_text(textwrap.dedent(REV_1))
    (root / "versions" / "0002_priority.py").write_text(textwrap.dedent(REV_2))
    url = databases.url(database, "app")
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(root))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser escapes
    engine = create_engine(url)
    yield cfg, engine
    engine.dispose()


def _hold_a_priority(engine: Engine, tmp_path: Path) -> str:
    """Make ``engine``'s database (at 0001) hold a newer device's ``priority`` change."""
    newer_engine = create_engine(f"sqlite:///{tmp_path / 'newer.db'}")
    newer = dimple.DimpleDb(newer_engine, NewBase)
    app = dimple.DimpleDb(engine, OldBase)
    try:
        newer.create_all()
        with newer.sessionmaker(expire_on_commit=False)() as s:
            todo = NewTodo(text="from the newer device", priority=7)
            s.add(todo)
            s.commit()
        with newer_engine.connect() as conn:
            txs = changelog.transactions_since(conn, newer.author_id, None)
        with engine.begin() as conn:
            result = merge.merge(app.replica, conn, txs)
        assert result.held == 1
    finally:
        app.close()
        newer.close()
        newer_engine.dispose()
    return str(todo.id)


@pytest.mark.parametrize("mode", ["plain", "transactional", "external"])
def test_replay_after_upgrade_in_each_transaction_mode(
        inproc: tuple[Config, Engine], tmp_path: Path, mode: str) -> None:
    cfg, engine = inproc
    cfg.attributes["mode"] = mode
    command.upgrade(cfg, "0001")
    assert cfg.attributes["replayed"] == 0
    todo_id = _hold_a_priority(engine, tmp_path)
    assert _held(engine) == 1
    command.upgrade(cfg, "head")
    assert cfg.attributes["replayed"] == 1
    assert _held(engine) == 0  # committed: a new connection sees it
    assert _table_rows(engine, "todo") == [(todo_id, "from the newer device", 7)]
    assert "alembic_version" in inspect(engine).get_table_names()

    # at head, nothing to migrate: what the models' schema held is still replayed, and
    # committed (SQLite: Alembic leaves its reads' transaction for us to end)
    second = _hold_a_priority(engine, tmp_path)
    command.upgrade(cfg, "head")
    assert cfg.attributes["replayed"] == 1
    assert _held(engine) == 0
    assert [r[0] for r in _table_rows(engine, "todo")] == sorted([todo_id, second])

    command.downgrade(cfg, "base")  # the drop twin
    assert inspect(engine).get_table_names() == ["alembic_version"]


def test_sql_mode_emits_the_tables_and_replays_nothing(inproc: tuple[Config, Engine],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    cfg, engine = inproc
    command.upgrade(cfg, "head", sql=True)
    out = capsys.readouterr().out
    for table in schema.metadata.sorted_tables:
        assert f"CREATE TABLE {table.name}" in out
    assert "CREATE INDEX ix_dimple_changes_transaction" in out
    assert cfg.attributes["replayed"] == 0
    assert inspect(engine).get_table_names() == []  # nothing touched the database


def test_create_op_skips_tables_that_exist(inproc: tuple[Config, Engine]) -> None:
    cfg, engine = inproc
    db = dimple.DimpleDb(engine, OldBase)
    try:
        db.create_all(models=False)  # the app made them before it used Alembic
        author = db.author_id
    finally:
        db.close()
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        m = schema.meta
        assert conn.execute(select(m.c.value).where(m.c.key == "author_id")).scalar() == author


def test_replay_held_outside_alembic(tmp_path: Path) -> None:
    """Without env.py: no bookkeeping tables -> 0; untrackable tables stay held."""
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    with engine.connect() as conn:
        assert alembic_ext.replay_held(conn) == 0
        assert alembic_ext.rename_held(conn, "todo", "a", "b") == 0
    md = MetaData()
    Table("counter", md, Column("n", String), Column("id", String, ForeignKey("x.id")))
    Table("x", md, Column("id", String, primary_key=True), Index("ix_x", "id"))
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
        md.create_all(conn)
        insert_many(conn, schema.held, [("counter", "1", "n", "unknown table"),
                                               ("missing", "2", "n", "unknown table")])
        assert alembic_ext.replay_held(conn) == 0  # no key / no table: still held
    assert _held(engine) == 2
    engine.dispose()


@pytest.mark.sqlite_only("SQLite's lock wait (a second writer on one file)")
def test_first_write_after_tables_made_by_a_migration(inproc: tuple[Config, Engine],
                                                      tmp_path: Path) -> None:
    """No ``create_all()``: the author id is made on the writing connection (SQLite would
    otherwise see a second writer and wait for its own lock)."""
    cfg, _ = inproc
    command.upgrade(cfg, "head")
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}", connect_args={"timeout": 0.2})
    db = dimple.DimpleDb(engine, NewBase)
    try:
        with db.sessionmaker()() as s:
            s.add(NewTodo(text="first write"))
            s.commit()
        assert len(_table_rows(engine, "todo")) == 1
    finally:
        db.close()
        engine.dispose()


def test_all_is_the_public_api() -> None:
    assert set(alembic_ext.__all__) == {
        "CreateDimpleDbTablesOp", "DropDimpleDbTablesOp", "include_name", "include_object",
        "is_bookkeeping", "make_include_name", "make_include_object", "rename_held",
        "replay_held"}
    for name in alembic_ext.__all__:
        assert hasattr(alembic_ext, name)
