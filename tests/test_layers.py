"""The package's dependency rule (see ``dimpledb_sa/__init__.py``), checked by an AST walk.

Every ``import`` and ``from ... import`` in every module is resolved to the module it
names, including imports inside functions and under ``TYPE_CHECKING``, and checked against
the layer table: a module imports only its own layer or lower; ``capture`` and ``sync``
never import each other; nothing below the facade imports ``dimpledb_sa.db`` (or the
facade package itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dimpledb_sa", "alembic_ext")

# layer name -> the layers its modules may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "capture": {"core", "capture"},
    "sync": {"core", "sync"},
    "live": {"core", "capture", "sync", "live"},
    "facade": {"core", "capture", "sync", "live", "facade"},
    "tools": {"core", "capture", "sync", "live", "facade", "tools"},
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name of this project."""
    parts = module.split(".")
    if parts[0] == "alembic_ext":
        return "tools"
    if len(parts) == 1:
        return "facade"  # the package itself re-exports the facade
    sub = parts[1]
    if sub in ("core", "capture", "sync", "live"):
        return sub
    if sub == "cli":
        return "tools"
    return "facade"  # db, session, signals (the public alias) and other top-level modules


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imported_modules(module: str, is_package: bool, source: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import of this project's modules in ``source``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                target = node.module or ""
            # ``from pkg import name``: name may be a module of pkg
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{a.name}") for a in node.names)
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def violations(module: str, is_package: bool, source: str) -> list[str]:
    """The imports in ``source`` (the text of ``module``) that break the dependency rule."""
    mine = layer_of(module)
    out: list[str] = []
    for line, target in imported_modules(module, is_package, source):
        if not _is_module(target) or target == module:
            continue
        theirs = layer_of(target)
        below_facade = mine in ("core", "capture", "sync", "live")
        if theirs not in ALLOWED[mine] or (below_facade and target in (
                "dimpledb_sa", "dimpledb_sa.db", "dimpledb_sa.session")):
            out.append(f"{module}:{line} ({mine}) imports {target} ({theirs})")
    return out


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_keeps_the_dependency_rule() -> None:
    problems: list[str] = []
    for path in _modules():
        module, is_package = _module_name(path)
        problems.extend(violations(module, is_package, path.read_text()))
    assert problems == []


def test_the_layers_are_the_sub_packages() -> None:
    subs = {p.name for p in (ROOT / "dimpledb_sa").iterdir() if (p / "__init__.py").exists()}
    assert {"core", "capture", "sync", "live", "cli"} <= subs
    for name in ("core", "capture", "sync", "live"):
        doc = ast.get_docstring(ast.parse((ROOT / "dimpledb_sa" / name / "__init__.py")
                                          .read_text()))
        assert doc and "import" in doc, f"dimpledb_sa/{name}/__init__.py must say what it imports"


@pytest.mark.parametrize(("module", "source"), [
    ("dimpledb_sa.core.clock", "from ..db import DimpleDb"),
    ("dimpledb_sa.core.clock", "from ..capture import unit_of_work"),
    ("dimpledb_sa.capture.adopt", "from ..sync.merge import merge"),
    ("dimpledb_sa.sync.merge", "from dimpledb_sa.capture.unit_of_work import Capture"),
    ("dimpledb_sa.sync.merge",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..db import DimpleDb"),
    ("dimpledb_sa.live.query", "def f():\n    from .. import db"),
    ("dimpledb_sa.core.changelog", "import dimpledb_sa.live.query"),
])
def test_a_forbidden_import_is_found(module: str, source: str) -> None:
    assert violations(module, False, source)


@pytest.mark.parametrize(("module", "source"), [
    ("dimpledb_sa.core.changelog", "from . import schema\nfrom .clock import new_id"),
    ("dimpledb_sa.sync.merge", "from ..core import changelog"),
    ("dimpledb_sa.db", "from .capture.unit_of_work import Capture\nfrom .sync import run"),
    ("dimpledb_sa.cli.local", "from ..db import DimpleDb"),
])
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert violations(module, False, source) == []
