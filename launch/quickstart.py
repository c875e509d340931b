"""`make quickstart`: Amos vs AdamW on a tiny GPT and generated text, in a few minutes.

Needs only the installed packages (no corpus, no network): it runs launch/compare.py on the
`quickstart` experiment (gin_configs/experiments/quickstart.gin with each optimizer, 3 seeds
each), prints the summary table, and says where the TensorBoard logs are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launch import compare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.time()
    # Extra arguments go to compare.py, e.g. --seeds 1 or --gin.TRAIN_STEPS=100.
    rc = compare.main(["--experiment", "quickstart", *argv])
    results = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--results=")),
        argv[argv.index("--results") + 1]
        if "--results" in argv
        else str(REPO / "results" / "quickstart"),
    )
    print(f"quickstart finished in {time.time() - t0:.0f} s; summary in {results}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
