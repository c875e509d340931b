"""The study: Amos against AdamW with equal tuning budgets (docs/study.md).

`compare` trains optimizers over seeds and summarizes them; `sweep` is the first edition's
grid with its edge rule and fresh-seed rows; `study2` the second edition (two tuning seeds,
Sobol designs from `designs`, bootstrap verdicts from `intervals`); `timescale_sweep` the
AdamW EMA-timescale sweep; `readme_results` copies the notebooks' tables into README and
docs/. Their command lines are the scripts of the same names in launch/ (`python
launch/sweep.py ...`); the notebooks import the analysis from here.
"""
