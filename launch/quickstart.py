"""`make quickstart`: Amos vs AdamW on a tiny GPT and generated text, in a few minutes.

Needs only the installed packages (no corpus, no network): it runs launch/compare.py on the
`quickstart` experiment (gin_configs/experiments/quickstart.gin with each optimizer, 3 seeds
each), prints the summary table, and says where the TensorBoard logs are.

A new user's runs and summary go under runs/quickstart/ (not versioned), so the first
command leaves the checkout clean; the recorded comparison in results/quickstart/ is
rebuilt by `make quickstart-record` (the same runs, summarized into results/).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from launch.study import compare

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.time()
    # Extra arguments go to compare.py, e.g. --seeds 1, --gin.TRAIN_STEPS=100 or
    # --results results/quickstart (what `make quickstart-record` passes).
    results = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--results=")),
        argv[argv.index("--results") + 1] if "--results" in argv else None,
    )
    if results is None:  # Beside the runs: <parent>/results, parent runs/quickstart.
        parent = next(
            (a.split("=", 1)[1] for a in argv if a.startswith("--parent=")),
            argv[argv.index("--parent") + 1] if "--parent" in argv else None,
        )
        results = str(Path(parent or REPO / "runs" / "quickstart") / "results")
        argv = [*argv, "--results", results]
    rc = compare.main(["--experiment", "quickstart", *argv])
    print(f"quickstart finished in {time.time() - t0:.0f} s; summary in {results}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
