"""The README's *Conflicts* example runs as written (in a temporary folder) and prints what
its comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_conflicts_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Conflicts"):]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    script = tmp_path / "conflicts.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["unique email ann@example.com", "[] []"]
