"""The README's quick start runs as written (in a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_start_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    code = blocks[0] + "\nsub.close()\nlive.close()\nprint('QUICKSTART-OK', report.pushed)\n"
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "QUICKSTART-OK 1" in proc.stdout
    assert "open todos: ['milk']" in proc.stdout
    assert (tmp_path / "app.db").exists() and (tmp_path / "sync-folder").is_dir()
