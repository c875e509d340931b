"""Rewrites the results block of README.md from the headline table, and every included
results file of README.md and docs/*.md.

The README's numbers are never typed by hand: after a comparison, a sweep or a benchmark
finishes, run `make notebooks` (the headline-table notebook writes
notebooks/headline_table.md from every results/**/summary.json), then this. The block

    <!-- results:begin -->
    ...
    <!-- results:end -->

is that table, its title dropped, its headings one level down (under README's "Results")
and its last section, the earlier untuned comparisons that predate the study, left to
notebooks/headline_table.md (README keeps the study's tables short). An include block,

    <!-- include: results/benchmarks/optimizer_step.md -->
    ...
    <!-- end include -->

is replaced by that file's text, as written by the benchmark, in a code block, in README
and in every page of docs/ (the benchmark's table is in docs/optimizer.md, the device-count
drift in docs/harness.md).

  .venv/bin/python launch/readme_results.py [--readme README.md] [--docs docs]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
INCLUDE = re.compile(r"(<!-- include: (\S+) -->\n)(.*?)(<!-- end include -->)", re.S)
HEADLINE = Path("notebooks") / "headline_table.md"
# The headline table's section that README leaves out (see the module docstring).
EARLIER = "## The earlier comparisons"


def block(headline: Path) -> str:
    """The headline table's text for README: without its title, headings demoted."""
    if not headline.is_file():
        raise SystemExit(f"no {headline}: run `make notebooks` first")
    lines = headline.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    earlier = next((i for i, line in enumerate(lines) if line.startswith(EARLIER)), None)
    if earlier is not None:
        rest = next((i for i in range(earlier + 1, len(lines)) if lines[i].startswith("## ")), None)
        lines = lines[:earlier] + ([] if rest is None else lines[rest:])
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", f"The earlier, untuned comparisons that predate the study: `{HEADLINE}`."]
    lines = ["#" + line if line.startswith("#") else line for line in lines]
    return "\n".join(lines).strip() + "\n"


def includes(text: str, repo: Path) -> str:
    """``text`` with every include block refreshed from the file it names."""

    def refresh(m: re.Match) -> str:
        path = repo / m.group(2)
        if not path.is_file():
            raise SystemExit(f"an include block names {m.group(2)}, which does not exist")
        return f"{m.group(1)}```\n{path.read_text().rstrip()}\n```\n{m.group(4)}"

    return INCLUDE.sub(refresh, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--headline", default=str(REPO / HEADLINE), help="the notebook's table")
    p.add_argument("--repo", default=str(REPO), help="where included paths are read")
    p.add_argument(
        "--docs", default=str(REPO / "docs"), help="whose *.md pages' include blocks to refresh"
    )
    args = p.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{BEGIN}\n{block(Path(args.headline))}{END}{tail}"
    readme.write_text(includes(text, Path(args.repo)))
    for page in sorted(Path(args.docs).glob("*.md")):
        old = page.read_text()
        new = includes(old, Path(args.repo))
        if new != old:
            page.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
