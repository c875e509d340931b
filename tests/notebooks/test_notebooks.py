"""Every notebook runs headless without a cell error, and the headline table's numbers are
the summary.json values they come from."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from notebooks.execute import REPO, execute, sources

RESULTS = REPO / "results"
CLAIMS = {"steps": 0.70, "time": 0.70, "memory": 0.51}  # Reference section 3.


def run(name: str, tmp_path: Path, **env: str):
    source = REPO / "notebooks" / f"{name}.py"
    return execute(source, env={"AMOS_NOTEBOOK_OUT": str(tmp_path), **env}, timeout=300)


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first markdown table, keyed by its header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def close(cell: str, value) -> bool:
    """``cell`` is ``value`` printed to the decimals it shows ("never" stays "never")."""
    if not isinstance(value, (int, float)):
        return cell == str(value)
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return math.isclose(float(cell), value, abs_tol=0.5 * 10**-decimals + 1e-12)


def claim_verdict(ratio, claim: float) -> str:
    if ratio == "never":
        return "never reached"
    return "met" if ratio <= claim else "not met"


def test_kernel_is_this_python_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Wherever the caller runs, the kernel runs in the repo.
    source = tmp_path / "probe.py"
    source.write_text("# %%\nimport os, sys\nprint(sys.executable)\nprint(os.getcwd())\n")
    (output,) = execute(source, timeout=60).cells[0].outputs
    assert output["text"].split() == [sys.executable, str(REPO)]


def test_there_is_a_notebook_per_analysis():
    assert {s.stem for s in sources()} == {
        "headline_table",
        "loss_curves",
        "tuning_curves",
        "slot_memory",
        "horizon_ladder",
    }


@pytest.fixture(scope="module")
def headline(tmp_path_factory) -> str:
    """The headline table the notebook writes from results/."""
    out = tmp_path_factory.mktemp("headline")
    run("headline_table", out)
    return (out / "headline_table.md").read_text()


def test_headline_table_equals_the_summaries(headline):
    summaries = {
        p.parent.relative_to(RESULTS).as_posix(): json.loads(p.read_text())
        for p in sorted(RESULTS.rglob("summary.json"))
    }
    rows = table_rows(headline)
    assert [(r["experiment"], r["optimizer"]) for r in rows] == [
        (name, opt) for name, s in summaries.items() for opt in s["optimizers"]
    ]
    for row in rows:
        s = summaries[row["experiment"]]
        v = s["optimizers"][row["optimizer"]]
        where = (row["experiment"], row["optimizer"])
        assert row["seeds"] == str(len(v["seeds"])), where
        mean, std = row["final eval loss (mean ± std)"].split(" ± ")
        assert close(mean, v["final_eval_loss_mean"]), where
        assert close(std, v["final_eval_loss_std"]), where
        assert row["test loss"] == "not run yet", where  # No summary holds one yet.
        assert row["settings"] == "untuned", where
        assert close(row["steps to target"], v["steps_to_target_mean"]), where
        for claim, ratio_column, key in [
            ("steps", "steps ratio", "steps_ratio_to_baseline"),
            ("time", "time ratio", "time_ratio_to_baseline"),
            ("memory", "slot-bytes ratio", "slot_bytes_ratio_to_baseline"),
        ]:
            assert close(row[ratio_column], v[key]), (where, claim)
            verdict = row[f"{claim} claim (≤ {CLAIMS[claim]:.2f})"]
            if row["optimizer"] == s["baseline"]:
                assert verdict == "baseline", (where, claim)
            else:
                assert verdict == claim_verdict(v[key], CLAIMS[claim]), (where, claim)
        for key, label in [("collapsed_runs", "COLLAPSED"), ("stalled_runs", "STALLED")]:
            seeds = v.get(key) or {}
            assert (label in row["flagged runs"]) == bool(seeds), (where, key)
            assert all(seed in row["flagged runs"] for seed in seeds), (where, key)


def test_committed_headline_table_is_current(headline):
    """notebooks/headline_table.md is what the notebook writes now (after a new or changed
    summary: `make notebooks`)."""
    committed = (REPO / "notebooks" / "headline_table.md").read_text()
    assert committed == headline, "notebooks/headline_table.md is stale: run `make notebooks`"


def test_headline_table_tolerates_fields_a_sweep_adds(tmp_path):
    """A summary with a tuned flag, a test loss, an extra optimizer, and fields missing."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "t5_cpu", results / "t5_cpu", ignore=shutil.ignore_patterns("runs"))
    path = results / "t5_cpu" / "summary.json"
    s = json.loads(path.read_text())
    s["tuned"] = True
    s["optimizers"]["amos"]["test_loss"] = [2.5, 2.7]
    s["optimizers"]["amos_tuned"] = {
        "seeds": [0],
        "final_eval_loss": [2.1],
        # As launch/compare.py writes it for runs evaluated on test.
        "final_test_loss_mean": 2.2,
        "final_test_loss_std": 0.05,
    }
    del s["optimizers"]["adamw"]["slot_bytes_ratio_to_baseline"]
    path.write_text(json.dumps(s))
    run("headline_table", tmp_path, AMOS_RESULTS=str(results))
    rows = {r["optimizer"]: r for r in table_rows((tmp_path / "headline_table.md").read_text())}
    assert rows["amos"]["settings"] == "tuned"
    assert rows["amos"]["test loss"] == "2.6000 ± 0.1414"
    assert rows["adamw"]["test loss"] == "not run yet"
    assert rows["adamw"]["slot-bytes ratio"] == "not run yet"
    extra = rows["amos_tuned"]
    assert extra["final eval loss (mean ± std)"] == "2.1000 ± 0.0000"
    assert extra["test loss"] == "2.2000 ± 0.0500"
    assert extra["steps ratio"] == extra["steps claim (≤ 0.70)"] == "not run yet"
    assert extra["flagged runs"] == "not checked"


def test_loss_curves_figure(tmp_path):
    run("loss_curves", tmp_path)
    figure = tmp_path / "figures" / "loss_curves.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slot_memory(tmp_path):
    notebook = run("slot_memory", tmp_path)
    text = "".join(
        output.get("text", "") + output.get("data", {}).get("text/markdown", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    for model in ["BERT-base", "BERT-large", "T5 1.1 small", "T5 1.1 base", "T5 1.1 large"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {model} |"))
        assert "| met |" in row, row
    assert "not met" not in text
