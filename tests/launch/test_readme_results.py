"""README's results block and included results files are what launch/readme_results.py
writes from results/: no number in them is typed by hand or left stale."""

from __future__ import annotations

import shutil
from pathlib import Path

from launch import readme_results
from tests.launch.harness_helpers import REPO


def test_readme_equals_what_the_results_give(tmp_path: Path):
    copy = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", copy)
    assert readme_results.main(["--readme", str(copy), "--results", str(REPO / "results")]) == 0
    assert copy.read_text() == (REPO / "README.md").read_text(), (
        "README.md is stale: run launch/readme_results.py"
    )


def test_an_include_block_takes_the_file_text(tmp_path: Path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    text = "before\n<!-- include: results/table.md -->\nold\n<!-- end include -->\nafter\n"
    assert readme_results.includes(text, tmp_path) == (
        "before\n<!-- include: results/table.md -->\n```\n| a | b |\n|---|---|\n| 1 | 2 |\n```\n"
        "<!-- end include -->\nafter\n"
    )
