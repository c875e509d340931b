"""What the notebooks (notebooks/*.py) share: where they read and write, the
tables and figures they write, the second edition's files (`read_second_edition`) and
how its intervals and settings are printed, and the evaluation curves of the runs a
summary.json lists (read from their copies under the summary's directory,
`results/<experiment>/runs/`), so that every notebook does each of these one way.

`AMOS_RESULTS` (default the repository's `results/`) is the directory a notebook reads,
`AMOS_NOTEBOOK_OUT` (default `notebooks/`) where it writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from launch.trainer import run_folder

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("AMOS_RESULTS", REPO / "results"))
OUT = Path(os.environ.get("AMOS_NOTEBOOK_OUT", REPO / "notebooks"))


def read_summaries() -> dict[str, tuple[Path, dict]]:
    """Every `summary.json` under RESULTS by its directory relative to RESULTS (for example
    `study/quickstart`), with its path; an unreadable one is skipped with a line saying
    so. The runs a sweep continued past its horizon (`continued_<K>x/`) are left to
    notebooks/plug_and_play.py: their rows are not a comparison at one horizon."""
    out = {}
    for path in sorted(RESULTS.rglob("summary.json")):
        name = path.parent.relative_to(RESULTS).as_posix()
        if path.parent.name.startswith("continued_"):
            continue
        try:
            out[name] = (path, json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            print(f"skipped {path}: {e}")
    return out


def read_second_edition() -> dict[str, dict]:
    """Every experiment of the study's second edition (`RESULTS/study2/<experiment>/`,
    launch/study2.py) that has run, by name: ``{"dir": its directory, "study": its
    study.json (the tuning trials, the picks, `picks_from`), "summary": its summary.json
    (the rows over the fresh seeds and their `claims`), "family": the experiment whose
    tuning its picks come from (itself when it tuned; a rung of the horizon ladder,
    `study2.py --picks_from`, names its source), "retunes": the rung it tunes afresh or
    None, "horizon": its TRAIN_STEPS}``, a file not written yet as None. In order of
    family, then horizon. An experiment with neither file (only its EVAL_BATCHES sizing so
    far) is left out; an unreadable file is skipped with a line saying so.

    A re-tuned rung is a directory that tuned (`study2.py --results`) the experiment of
    another directory that holds carried picks: it belongs to that rung's family, beside
    it, and shows whether the picks carry to the rung's horizon."""
    out = {}
    for directory in sorted(p for p in (RESULTS / "study2").glob("*") if p.is_dir()):
        files = {}
        for key in ("study", "summary"):
            path = directory / f"{key}.json"
            try:
                files[key] = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, ValueError) as e:
                print(f"skipped {path}: {e}")
                files[key] = None
        if files["study"] is not None or files["summary"] is not None:
            out[directory.name] = {"dir": directory, **files}
    for name, e in out.items():
        e["retunes"] = _retuned_rung(name, out)
        e["family"] = _source_experiment(e["retunes"] or name, out)
        adamw = ((e["summary"] or {}).get("optimizers") or {}).get("adamw") or {}
        e["horizon"] = (e["study"] or {}).get("train_steps") or adamw.get("train_steps")
    order = sorted(out, key=lambda n: (out[n]["family"], out[n]["horizon"] or 0, n))
    return {name: out[name] for name in order}


def _retuned_rung(name: str, experiments: dict[str, dict]) -> str | None:
    """The rung (a directory of carried picks, `picks_from`) whose experiment directory
    `name` tuned afresh, or None."""
    study = (experiments.get(name) or {}).get("study") or {}
    rung = study.get("experiment")
    if study.get("picks_from") or not rung or rung == name:
        return None
    rung_study = (experiments.get(rung) or {}).get("study") or {}
    return rung if rung_study.get("picks_from") else None


def _source_experiment(name: str, experiments: dict[str, dict]) -> str:
    """The first experiment up the `picks_from` chain (a results directory, named by its
    last component) that tuned: the family of a ladder rung."""
    seen = {name}
    while True:
        source = ((experiments.get(name) or {}).get("study") or {}).get("picks_from")
        if not source or Path(source).name in seen:
            return name
        name = Path(source).name
        seen.add(name)


NOT_RUN = "not run yet"


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt(x, spec: str) -> str:
    """A number in ``spec``; a word compare.py or study2.py wrote ("never") as it is; None
    as not run."""
    if x is None:
        return NOT_RUN
    return format(x, spec) if is_number(x) and math.isfinite(x) else str(x)


def interval(c: dict | None, spec: str) -> str:
    """``point [low, high]`` of one of study2.py's claims (a bound can be "never"), or the
    note it left instead of an interval."""
    if not c or "point" not in c:
        return (c or {}).get("note", NOT_RUN)
    return f"{fmt(c['point'], spec)} [{fmt(c['low'], spec)}, {fmt(c['high'], spec)}]"


KNOB_NAMES = {"AMOS_XI": "xi", "AMOS_BETA": "beta", "ADAMW_LR": "lr"}


def setting_text(values: dict[str, float]) -> str:
    """A second-edition setting's knobs and values, short: ``xi 0.0265, beta 0.95`` or
    ``lr 0.004, warmup 5%``."""
    return ", ".join(
        f"warmup {x:.0%}" if k == "WARMUP_FRACTION" else f"{KNOB_NAMES.get(k, k)} {x:.3g}"
        for k, x in values.items()
    )


def markdown_table(columns: list[str], rows: list[dict[str, str]]) -> list[str]:
    """The lines of a markdown table: a header of ``columns``, then each row's values."""
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row.values()) + " |" for row in rows),
    ]


def write_markdown(name: str, text: str) -> Path:
    """``text`` as OUT/<name>."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(text)
    print(f"wrote {path}")
    return path


def save_figure(fig, name: str) -> Path:
    """``fig`` as OUT/figures/<name> (80 dpi), then closed."""
    import matplotlib.pyplot as plt  # here: slow to import; the notebooks chose the backend

    path = OUT / "figures" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def eval_records(path: Path, key: str) -> list[dict]:
    """The eval lines of a metrics.jsonl that hold ``key``; a half-written line is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") == "eval" and key in record:
            records.append({**record, "loss": record[key]})
    return records


def seed_curves(summary_dir: Path, summary: dict, key: str) -> dict[str, list[list[dict]]]:
    """{row: one curve per seed}, from the copies under ``summary_dir/runs`` of the run
    directories the summary lists per row (below its run_parent)."""
    curves: dict[str, list[list[dict]]] = {}
    parent = Path(summary.get("run_parent") or "")
    for opt, v in (summary.get("optimizers") or {}).items():
        for run_dir in v.get("run_dirs") or []:
            try:
                rel = Path(run_dir).relative_to(parent)
            except ValueError:
                continue
            metrics = summary_dir / "runs" / rel / run_folder.METRICS_JSONL
            curve = eval_records(metrics, key) if metrics.is_file() else []
            if curve:
                curves.setdefault(opt, []).append(curve)
    return curves


def band(curves: list[list[dict]]) -> dict[str, np.ndarray]:
    """Mean step, mean training time, and mean / min / max loss over seeds, at the steps
    every seed evaluated."""
    steps = sorted(set.intersection(*({r["step"] for r in c} for c in curves)))
    by_step = [{r["step"]: r for r in c} for c in curves]
    loss = np.array([[c[s]["loss"] for s in steps] for c in by_step], dtype=float)
    time = np.array([[c[s].get("train_time_s", np.nan) for s in steps] for c in by_step])
    return {
        "step": np.array(steps, dtype=float),
        "train_time_s": np.nanmean(time, axis=0) if len(steps) else np.array([]),
        "mean": loss.mean(0),
        "min": loss.min(0),
        "max": loss.max(0),
    }
