#!/usr/bin/env python3
"""Set-up and task runner: `python3 dev.py demo` and `python3 dev.py test`.

Needs only a Python >= 3.11 on the machine. Each task first makes `.venv/` (if missing),
installs the project into it in editable mode with its test extra, then runs in it.
`test` also installs the `age` command-line tool (Debian package `age`) and the PostgreSQL
server binaries (Debian package `postgresql`) when they are missing and the machine allows it
(root with apt-get): the encryption interop tests use the first, the PostgreSQL runs of the
suites start a throw-away server from the second (`python3 dev.py test -m postgresql` runs
only those; without the binaries they are skipped, or fail when $CI is set).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".dimpledb-installed"


def run(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def ensure_venv() -> None:
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    pyproject = ROOT / "pyproject.toml"
    if not STAMP.exists() or STAMP.read_text() != pyproject.read_text():
        run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
        run(PY, "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]")
        STAMP.write_text(pyproject.read_text())


def apt_install(package: str, why: str) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        run("apt-get", "update", "-q")
        run("apt-get", "install", "-y", "-q", package)
    else:
        print(f"note: install the `{package}` package (e.g. `sudo apt-get install {package}`)"
              f" {why}", flush=True)


def ensure_age() -> None:
    if not shutil.which("age"):
        apt_install("age", "or the interop tests fail")


def ensure_postgresql() -> None:
    if shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return
    apt_install("postgresql", "or the PostgreSQL runs of the tests are skipped")


def main(argv: list[str]) -> int:
    task = argv[0] if argv else "help"
    rest = argv[1:]
    if task == "demo":
        ensure_venv()
        return run(PY, ROOT / "examples" / "demo.py", *rest, check=False)
    if task == "test":
        ensure_venv()
        ensure_age()
        ensure_postgresql()
        for check in (["-m", "ruff", "check", "."], ["-m", "mypy"]):
            if run(PY, *check, check=False):
                return 1
        return run(PY, "-m", "pytest", *rest, check=False)
    if task == "bench":
        ensure_venv()
        names = rest or ["capture", "sync", "live", "push_while_committing", "postgresql"]
        for name in names:
            if run(PY, ROOT / "benchmarks" / f"{name}.py", check=False):
                return 1
        return 0
    print(__doc__)
    print("tasks: demo | test [pytest args] | bench [capture|sync|live|push_while_committing|"
          "postgresql ...]")
    return 0 if task == "help" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
