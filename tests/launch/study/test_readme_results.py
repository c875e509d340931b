"""README's results block is the notebook's headline table, and the results files README
and docs/ include are what launch/readme_results.py writes: no number in them is typed by
hand or stale."""

from __future__ import annotations

import shutil
from pathlib import Path

from launch.study import readme_results
from tests.launch.harness_helpers import REPO


def test_readme_and_docs_equal_what_the_results_give(tmp_path: Path):
    copy = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", copy)
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    assert readme_results.main(["--readme", str(copy), "--docs", str(docs)]) == 0
    assert copy.read_text() == (REPO / "README.md").read_text(), (
        "README.md is stale: run launch/readme_results.py"
    )
    for page in sorted((REPO / "docs").glob("*.md")):
        assert (docs / page.name).read_text() == page.read_text(), (
            f"docs/{page.name} is stale: run launch/readme_results.py"
        )


def test_the_docs_include_the_benchmarks_records():
    """The records the README once included now live in docs/, where the script refreshes
    them (the test above)."""
    for page, record in [
        ("optimizer.md", "results/benchmarks/optimizer_step.md"),
        ("harness.md", "results/device_count/drift.md"),
    ]:
        assert f"<!-- include: {record} -->" in (REPO / "docs" / page).read_text()


def test_an_include_block_takes_the_file_text(tmp_path: Path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    text = "before\n<!-- include: results/table.md -->\nold\n<!-- end include -->\nafter\n"
    assert readme_results.includes(text, tmp_path) == (
        "before\n<!-- include: results/table.md -->\n```\n| a | b |\n|---|---|\n| 1 | 2 |\n```\n"
        "<!-- end include -->\nafter\n"
    )


def test_the_results_block_is_the_headline_table_under_readmes_heading(tmp_path: Path):
    headline = tmp_path / "headline_table.md"
    headline.write_text("# Headline table\n\nIntro.\n\n## The study\n\n| a |\n|---|\n| 1 |\n")
    assert readme_results.block(headline) == "Intro.\n\n### The study\n\n| a |\n|---|\n| 1 |\n"
    readme = tmp_path / "README.md"
    readme.write_text("## Results\n<!-- results:begin -->\nold\n<!-- results:end -->\nend\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    readme_results.main(["--readme", str(readme), "--headline", str(headline), "--docs", str(docs)])
    assert readme.read_text() == (
        "## Results\n<!-- results:begin -->\nIntro.\n\n### The study\n\n| a |\n|---|\n| 1 |\n"
        "<!-- results:end -->\nend\n"
    )
    # The committed README holds the committed table.
    assert (
        readme_results.block(REPO / "notebooks" / "headline_table.md")
        in (REPO / "README.md").read_text()
    )
