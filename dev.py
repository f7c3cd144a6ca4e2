#!/usr/bin/env python3
"""Set-up and task runner: `python3 dev.py demo` and `python3 dev.py test`.

Needs only a Python >= 3.11 on the machine. Each task first makes `.venv/` (if missing),
installs the project into it in editable mode with its test extra, then runs in it; the
first run says what it installs and how long that takes (2 to 5 minutes on a fresh
machine; later runs start at once, until `pyproject.toml` changes). `test` also installs
the `age` command-line tool (Debian package `age`) and the PostgreSQL server binaries
(Debian package `postgresql`) when they are missing and the machine allows it (root with
apt-get): the encryption interop tests use the first, the PostgreSQL runs of the suites
start a throw-away server from the second (`python3 dev.py test -m postgresql` runs only
those; without the binaries they are skipped, or fail when $CI is set). The `dimpledb`
command is then `.venv/bin/dimpledb` (or `.venv/bin/python -m dimpledb_sa.cli`).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".dimpledb-installed"


def run(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def say(message: str) -> None:
    print(f"dev.py: {message}", flush=True)


def _packages(pyproject: str) -> list[str]:
    """The distributions the project and its test extra name (without versions)."""
    project = tomllib.loads(pyproject)["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [re.split(r"[\s<>=!~;\[]", w, maxsplit=1)[0] for w in wanted]


def ensure_venv() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == pyproject:
        return
    started = time.monotonic()
    if not PY.exists():
        say("first run: setting up .venv/ with the project and its test tools; this takes "
            "2 to 5 minutes on a fresh machine (mostly downloads and installs), later runs "
            "start at once")
        say("1/3 creating the virtual environment .venv/ (about 10 s)")
        venv.EnvBuilder(with_pip=True).create(VENV)
    else:
        say("pyproject.toml changed since .venv/ was set up: updating it (under a minute)")
    say("2/3 upgrading pip")
    run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    say("3/3 installing dimpledb-sa (editable) with its test extra (most of the time): "
        + ", ".join(_packages(pyproject)) + " and what they need; pip's progress follows")
    run(PY, "-m", "pip", "install", "--progress-bar", "off", "-e", f"{ROOT}[test]")
    STAMP.write_text(pyproject)
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    say(f".venv/ is ready ({minutes} min {seconds} s); the command line is "
        f"{PY.parent / 'dimpledb'}")


def apt_install(package: str, why: str) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing the Debian package `{package}` with apt-get (a minute or two)")
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
