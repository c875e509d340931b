"""Rewrites the results block of README.md from results/*/summary.json, and every
included results file.

The README's numbers are never typed by hand: run this after a comparison or a benchmark
finishes. An include block,

    <!-- include: results/benchmarks/optimizer_step.md -->
    ...
    <!-- end include -->

is replaced by that file's text, as written by the benchmark, in a code block.

  .venv/bin/python launch/readme_results.py [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launch.compare import training_revisions  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
INCLUDE = re.compile(r"(<!-- include: (\S+) -->\n)(.*?)(<!-- end include -->)", re.S)


def _fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _label(opt: str, v: dict) -> str:
    """A row's name; a sweep's tuned rows say so (launch/sweep.py)."""
    return f"{opt} (tuned)" if v.get("tuned") is True else opt


def block(results_dir: Path) -> str:
    out = []
    # compare.py's summaries, then the study's (launch/sweep.py: results/study/<experiment>).
    paths = sorted(results_dir.glob("*/summary.json")) + sorted(
        results_dir.glob("study/*/summary.json")
    )
    for path in paths:
        s = json.loads(path.read_text())
        rel = path.parent.relative_to(REPO)
        m = s.get("machine") or {}
        out += [
            f"**{s['experiment']}** (`{rel}/`; machine: {m.get('device_kind')} "
            f"x{m.get('device_count')}, {m.get('cpu_count')} CPUs; trained at git "
            f"{training_revisions(s)})",
            "",
        ]
        if "anchor_check" in s:
            a = s["anchor_check"]
            out += [
                f"Anchor: {a['optimizer']} final validation loss "
                f"{a['measured_eval_loss']:.4f}, expected {a['expected_eval_loss']} ± "
                f"{a['tolerance']}: {'PASS' if a['passed'] else 'FAIL'}.",
                "",
            ]
        out += [
            "| optimizer | seeds | final eval loss | steps to target (ratio) | "
            "time to target s (ratio) | slot bytes (ratio) |",
            "|---|---|---|---|---|---|",
        ]
        for opt, v in s["optimizers"].items():
            out.append(
                f"| {_label(opt, v)} | {len(v['seeds'])} | {v['final_eval_loss_mean']:.4f} ± "
                f"{v['final_eval_loss_std']:.4f} | {_fmt(v['steps_to_target_mean'], '.0f')} "
                f"({_fmt(v['steps_ratio_to_baseline'], '.2f')}) | "
                f"{_fmt(v['time_to_target_s_mean'], '.1f')} "
                f"({_fmt(v['time_ratio_to_baseline'], '.2f')}) | {v['slot_bytes']} "
                f"({_fmt(v['slot_bytes_ratio_to_baseline'], '.2f')}) |"
            )
        out += ["", f"Target: {s['target_definition']} = {s['target_eval_loss']:.4f}.", ""]
        out += block_test_split(s)
        for key, label in [("collapsed_runs", "COLLAPSED"), ("stalled_runs", "STALLED")]:
            flagged = [
                f"{opt} seed {seed} ({reason})"
                for opt, v in s["optimizers"].items()
                for seed, reason in v.get(key, {}).items()
            ]
            if flagged:
                out += [f"{label}: " + "; ".join(flagged) + ".", ""]
    return "\n".join(out).rstrip() + "\n"


def block_test_split(s: dict) -> list[str]:
    """The test-split table of one summary (runs evaluated on 'test'), or nothing."""
    if "target_test_loss" not in s:
        return []
    out = [
        "| optimizer | seeds | final test loss | steps to test target (ratio) | "
        "time to test target s (ratio) |",
        "|---|---|---|---|---|",
    ]
    for opt, v in s["optimizers"].items():
        if "final_test_loss_mean" not in v:
            out.append(f"| {_label(opt, v)} | {len(v['seeds'])} | not evaluated | | |")
            continue
        out.append(
            f"| {_label(opt, v)} | {len(v['seeds'])} | {v['final_test_loss_mean']:.4f} ± "
            f"{v['final_test_loss_std']:.4f} | {_fmt(v['steps_to_test_target_mean'], '.0f')} "
            f"({_fmt(v['test_steps_ratio_to_baseline'], '.2f')}) | "
            f"{_fmt(v['time_to_test_target_s_mean'], '.1f')} "
            f"({_fmt(v['test_time_ratio_to_baseline'], '.2f')}) |"
        )
    return out + [
        "",
        f"Test target: {s['target_test_definition']} = {s['target_test_loss']:.4f}.",
        "",
    ]


def includes(text: str, repo: Path) -> str:
    """``text`` with every include block refreshed from the file it names."""

    def refresh(m: re.Match) -> str:
        path = repo / m.group(2)
        if not path.is_file():
            raise SystemExit(f"README includes {m.group(2)}, which does not exist")
        return f"{m.group(1)}```\n{path.read_text().rstrip()}\n```\n{m.group(4)}"

    return INCLUDE.sub(refresh, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--results", default=str(REPO / "results"))
    args = p.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{BEGIN}\n{block(Path(args.results))}{END}{tail}"
    readme.write_text(includes(text, Path(args.results).parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
