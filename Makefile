# asyncio-course: the commands. `make help` lists them.
#
# Every target that needs Python makes .venv first, when it is missing or
# older than pyproject.toml. PYTHON picks the interpreter (3.11 or newer):
#     make test PYTHON=python3.12

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LAB_ARGS ?=
# Jupyter refuses to run as root unless told; containers and CI often are root.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

PYTEST_ARGS ?=
# `make nbval` only: `make test` runs each notebook once, in JupyterLab, and judges that
# run with nbval's comparison and more (tests/notebooks/test_notebooks_run_clean.py).
NBVAL_ARGS := --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=120

.PHONY: help lab test nbval test-all grade bench bench-peers peer-venvs site clean

help:
	@echo "make lab       open JupyterLab on chapter 0 (LAB_ARGS='--no-browser --port 8899')"
	@echo "make test      ruff, library and grading tests, integrity check, notebooks (Run All in"
	@echo "               JupyterLab in headless Chromium; nbclient when Chromium is missing)"
	@echo "make nbval     the notebooks under nbval alone (not part of make test)"
	@echo "make grade     the grade table for exercises/ (TARGET=solutions or a folder)"
	@echo "make bench     run benchmarks/*.py (JSON results in benchmarks/results/)"
	@echo "make bench-peers  the course worker against arq, SAQ, Celery and RQ, each in its"
	@echo "               own venv under .venv-peers/ (BENCH_PEERS_ARGS=--quick: a short run)"
	@echo "make site      the notebooks as they last ran, as a static HTML site in site/ (offline)"
	@echo "make test-all  library and grading tests on every CPython >= 3.11 found"
	@echo "make clean     remove .venv, .venv-* and caches"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "asyncio-course needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ". Try: make $(MAKECMDGOALS) PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# No "get Jupyter news?" pop-up over chapter 0 (thirty laptops, one question fewer).
	$(BIN)/jupyter labextension disable --level=sys_prefix "@jupyterlab/apputils-extension:announcements" >/dev/null
	@touch $@

# Serve the whole repository (learners edit exercises/ next to the notebooks)
# and open chapter 0 in it.
lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_ARGS) --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/notebooks/00_start_here.ipynb \
		--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
		$(LAB_ARGS)

# Three pytest workers, even on two cores: the one that drives the notebooks in the
# browser mostly waits on them, and the other two use the cores meanwhile (measured on
# 2 cores: 6 min 17 s with two workers, 5 min 3 s with three). A test file stays on one
# worker (its fixtures, one JupyterLab for the notebooks), the longest files first
# (tests/conftest.py). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 3
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --target solutions $(XDIST) $(PYTEST_ARGS) tests

nbval: $(STAMP)
	$(BIN)/python -m pytest $(NBVAL_ARGS) $(PYTEST_ARGS) notebooks

TARGET ?= exercises
grade: $(STAMP)
	$(BIN)/python -m course_lib.grading --target $(TARGET)

# Each script compares its variants side by side and writes benchmarks/results/NAME.json.
# queue_peers.py is left to `make bench-peers`: it needs the peers' venvs, and minutes.
bench: $(STAMP)
	@for script in benchmarks/[!_]*.py; do \
		[ "$$script" = benchmarks/queue_peers.py ] && continue; \
		echo "::: $$script"; $(BIN)/python $$script || exit 1; done

# The peers' redis-py pins conflict (arq needs < 6, SAQ < 8, Celery's kombu >= 6.4), so
# each peer gets a venv of its own, from benchmarks/peers/requirements-PEER.txt. A copy
# of those pins is the stamp: a venv whose pins did not change is reused as it is.
PEERS      := arq saq celery rq
PEERS_VENV := .venv-peers
BENCH_PEERS_ARGS ?=

peer-venvs: $(STAMP)
	@n=0; total=$(words $(PEERS)); for peer in $(PEERS); do n=$$((n + 1)); \
		pins=benchmarks/peers/requirements-$$peer.txt; venv=$(PEERS_VENV)/$$peer; \
		if cmp -s $$pins $$venv/.pins; then \
			echo "[$$n/$$total] $$peer: $$venv reused (pins unchanged)"; continue; fi; \
		echo "[$$n/$$total] $$peer: creating $$venv"; rm -rf $$venv; \
		$(PYTHON) -m venv $$venv || exit 1; \
		$$venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip || exit 1; \
		echo "[$$n/$$total] $$peer: installing $$(grep -v '^#' $$pins | tr '\n' ' ')"; \
		$$venv/bin/python -m pip install --disable-pip-version-check --progress-bar on \
			-r $$pins || exit 1; \
		cp $$pins $$venv/.pins; \
		echo "[$$n/$$total] $$peer: ready, $$($$venv/bin/python -m pip freeze | wc -l) packages"; \
	done

bench-peers: peer-venvs
	$(BIN)/python benchmarks/queue_peers.py $(BENCH_PEERS_ARGS)

# The chapters with their stored outputs (nothing runs), an index, the README:
# open site/index.html, or copy site/ to any web server. tools/build_site.py says more.
site: $(STAMP)
	$(BIN)/python tools/build_site.py --out site

test-all:
	PYTHON=$(PYTHON) bash .ci/test-all

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .ruff_cache .hypothesis *.egg-info site
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
