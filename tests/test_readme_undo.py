"""The README's "Undo and time travel" example runs as written, after its quick start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_undo_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    [undo] = [b for b in blocks if "db.revert(" in b]
    script = tmp_path / "undo.py"
    script.write_text(blocks[0] + "\n" + undo + "\nsub.close()\nlive.close()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[1:]  # after the quick start's history line
    assert lines[0] == "open todos: ['milk']"
    assert lines[1] == "open todos: ['a bulk edit, by accident']"
    assert lines[2].startswith("before the edit: {") and "'text': 'milk'" in lines[2]
    assert lines[3:] == ["open todos: ['milk']", "after the revert: milk"]  # live sees the undo
