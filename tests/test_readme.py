"""The README's optimizer example runs as written and trains."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_example_runs_and_trains(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using the optimizer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loss = float(re.search(r"train loss ([0-9.]+)", result.stdout).group(1))
    assert loss < 0.02
    ratio = float(re.search(r"'ratio': ([0-9.]+)", result.stdout).group(1))
    assert 0.5 < ratio < 0.6
