# Two commands on a fresh machine: `make quickstart` (the main job) and `make test`.
# Both (re)create .venv from requirements*.txt when it is missing or older than them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv quickstart quickstart-record test test-all coverage lint bench notebooks clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# A new user's first run: results under runs/quickstart/ (not versioned).
quickstart: $(STAMP)
	$(PY) launch/quickstart.py

# The recorded comparison: the same runs, summarized into results/quickstart/.
quickstart-record: $(STAMP)
	$(PY) launch/quickstart.py --results results/quickstart

# The fast suite (docs/harness.md gives its times): everything but the tests marked slow,
# one pytest-xdist worker per core, each test file on one worker (its module fixtures are
# built once). Each worker keeps an XLA compilation cache (tests/conftest.py) that the
# slow run reuses.
XDIST := -n auto --dist loadfile
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests

# What CI runs: the fast suite, then the slow end-to-end tests.
test-all: test
	$(PY) -m pytest -q $(XDIST) -m slow tests

# The fast suite's line coverage, one line per package (slower than `make test`; not in CI).
coverage: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow" --cov=amos --cov=experiments --cov=launch --cov-report= tests
	for p in amos experiments launch; do \
		$(PY) -m coverage report --include="$$p/*" | tail -1 | sed "s|^TOTAL|$$p|"; done

bench: $(STAMP)
	$(PY) benchmarks/optimizer_step.py

# Executes notebooks/*.py headless (notebooks/README.md): notebooks/executed/*.ipynb and
# the committed tables and figures; then copies the headline table into README and refreshes
# the results files that README and docs/ include.
notebooks: $(STAMP)
	$(PY) notebooks/execute.py
	$(PY) launch/readme_results.py

clean:
	rm -rf $(VENV)
