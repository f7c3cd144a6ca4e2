"""The README's "Async apps" and "SQLModel" examples run as written (in a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section_code(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"README's {title} section has no python block"
    return str(blocks[0])


def run(tmp_path: Path, code: str) -> str:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_async_example_runs(tmp_path: Path) -> None:
    out = run(tmp_path, section_code("Async apps"))
    assert "pushed 1 transaction of 3 changes" in out
    assert "todos: ['milk']" in out
    assert (tmp_path / "async-app.db").exists() and (tmp_path / "sync-folder").is_dir()


def test_sqlmodel_example_runs(tmp_path: Path) -> None:
    prelude = ("import dimpledb_sa as dimple\nfrom sqlalchemy import create_engine\n"
               "engine = create_engine('sqlite:///heroes.db')\n"
               "key, _ = dimple.generate_identity()\n")
    code = prelude + section_code("SQLModel")
    out = run(tmp_path, code + "\nprint('HEROES', [h.name for h in heroes])\n")
    assert "HEROES ['Deadpond']" in out
