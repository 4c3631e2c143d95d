# kdedu: the two commands are `make book` and `make test`; everything else here is a helper they call.
#
#   make book   execute every chapter (book/NN-slug.ipynb) and build the Jupyter Book 2 site (_build/html)
#   make test   lint, unit tests + the offline MyST check (tests/), then every chapter under nbval
#
# Both create the virtual environment $(VENV) when it is missing and (re)install the project into it
# when pyproject.toml or ci/constraints.txt changed. Overrides: `make test VENV=/path/to/venv PYTHON=python3.12`.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdedu-install-stamp
CONSTRAINTS := ci/constraints.txt
# the notebooks `make chapters` and `make book` execute: every book/*.ipynb, the numbered chapters first, then
# the appendix pages that run code (tests/test_book.py checks that no notebook is left out)
CHAPTERS = $(sort $(wildcard book/[0-9][0-9]-*.ipynb)) $(sort $(filter-out $(wildcard book/[0-9][0-9]-*.ipynb),$(wildcard book/*.ipynb)))
# `make test` runs with a cold teacher cache, as CI does. Two pytest workers share the 2 cores, so each
# gets one torch thread: oversubscribed OpenMP threads made training up to 10x slower here.
TEST_CACHE := $(CURDIR)/.cache/kdedu-test
TEST_ENV := KDEDU_PROFILE=fast KDEDU_CACHE=$(TEST_CACHE) KDEDU_PROGRESS=0 MPLBACKEND=Agg OMP_NUM_THREADS=1
NBVAL_ARGS := --nbval-lax --nbval-current-env --nbval-cell-timeout=300 -p no:cacheprovider
EXECUTED := _build/executed
# pip's noise about local index folders that do not exist on some machines
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: help book test venv lint unit chapters site clean results

help:
	@echo "make book   execute every chapter and build the site (_build/html)"
	@echo "make test   lint, unit tests, MyST content check, every chapter under nbval"

# ---- the environment: created once, reinstalled only when the install inputs change ----------------
venv:
	@key="$$(cat pyproject.toml $(CONSTRAINTS) | sha256sum | cut -c1-16) $(CURDIR)"; \
	if [ ! -x "$(BIN)/python" ]; then \
	  echo "creating $(VENV) with $$($(PYTHON) --version)"; \
	  $(PYTHON) -m venv "$(VENV)"; \
	fi; \
	if [ "$$(cat "$(STAMP)" 2>/dev/null)" != "$$key" ]; then \
	  echo "installing kdedu and its [book,dev,text] extras into $(VENV) (constraints: $(CONSTRAINTS))"; \
	  start=$$(date +%s); \
	  "$(BIN)/python" -m pip install --quiet --no-cache-dir -c $(CONSTRAINTS) -e ".[book,dev,text]" 2>&1 | { grep -v "$(PIP_NOISE)" || true; }; \
	  echo "$$key" > "$(STAMP)"; \
	  echo "installed in $$(( $$(date +%s) - start )) s"; \
	fi

# ---- make test ------------------------------------------------------------------------------------
test: venv
	@failed=""; \
	echo "== ruff check kdedu tests benchmarks"; \
	"$(BIN)/ruff" check --output-format=concise kdedu tests benchmarks || failed="$$failed lint"; \
	$(MAKE) --no-print-directory unit || failed="$$failed unit-tests"; \
	$(MAKE) --no-print-directory chapters || failed="$$failed chapters"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed"; exit 1; fi; \
	echo "make test: all passed"

lint: venv
	"$(BIN)/ruff" check --output-format=concise kdedu tests benchmarks

# unit tests and the offline MyST content check (tests/test_book.py)
unit: venv
	@echo "== pytest tests (unit tests, book structure, MyST content check)"
	@rm -rf "$(TEST_CACHE)"; \
	$(TEST_ENV) "$(BIN)/pytest" -n 2 -p no:cacheprovider tests || { rc=$$?; [ $$rc -eq 5 ] || exit $$rc; }

# every chapter under nbval, two at a time, cold cache
chapters: venv
	@echo "== pytest --nbval-lax book/NN-*.ipynb ($(words $(CHAPTERS)) chapters, KDEDU_PROFILE=fast, cold cache)"
	@if [ -z "$(CHAPTERS)" ]; then echo "no chapter notebooks (book/NN-slug.ipynb) yet: nothing to execute"; exit 0; fi; \
	rm -rf "$(TEST_CACHE)"; \
	$(TEST_ENV) "$(BIN)/pytest" -n 2 --dist loadfile $(NBVAL_ARGS) --durations=5 $(CHAPTERS) \
	  || { rc=$$?; [ $$rc -eq 5 ] || exit $$rc; }

# ---- make results NB=book/NN-slug.ipynb: regenerate that chapter's stored tables ---------------------
# Executes the chapter in the `powered` profile with KDEDU_RESULTS=record: every experiment.run(..., table=...)
# is computed afresh and written, with its provenance, to kdedu/results/<table>.json. One torch thread, as
# the reproduction test (tests/test_results.py) uses, so that a stored seed reproduces exactly. Slow (minutes
# to an hour per chapter); never part of `make test`.
results: venv
	@if [ -z "$(NB)" ]; then echo "usage: make results NB=book/NN-slug.ipynb"; exit 2; fi; \
	mkdir -p _build/results; start=$$(date +%s); \
	KDEDU_PROFILE=powered KDEDU_RESULTS=record KDEDU_RESULTS_COMMAND="make results NB=$(NB)" KDEDU_PROGRESS=0 \
	  MPLBACKEND=Agg OMP_NUM_THREADS=1 KDEDU_CACHE=$(CURDIR)/.cache/kdedu-results \
	  "$(BIN)/jupyter" nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
	  --output-dir _build/results "$(NB)"; \
	echo "recorded the stored tables of $(NB) in $$(( $$(date +%s) - start )) s (kdedu/results/)"

# ---- make book ------------------------------------------------------------------------------------
book: venv
	@mkdir -p $(EXECUTED); failed=""; \
	if [ -z "$(CHAPTERS)" ]; then echo "no chapter notebooks (book/NN-slug.ipynb) yet"; fi; \
	for nb in $(CHAPTERS); do \
	  name=$$(basename $$nb .ipynb); start=$$(date +%s); \
	  if "$(BIN)/jupyter" nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 \
	       --output-dir $(EXECUTED) $$nb > $(EXECUTED)/$$name.log 2>&1; then \
	    echo "executed $$name in $$(( $$(date +%s) - start )) s"; \
	  else \
	    echo "FAILED   $$name after $$(( $$(date +%s) - start )) s (log: $(EXECUTED)/$$name.log):"; \
	    if grep -q '^nbclient.exceptions' $(EXECUTED)/$$name.log; then \
	      sed -n '/^nbclient.exceptions/,$$p' $(EXECUTED)/$$name.log | tail -n 40; \
	    else tail -n 25 $(EXECUTED)/$$name.log; fi; \
	    failed="$$failed $$name"; \
	  fi; \
	done; \
	site=0; $(MAKE) --no-print-directory site || site=$$?; \
	if [ -n "$$failed" ]; then echo "make book: chapters that failed:$$failed"; exit 1; fi; \
	exit $$site

# The site: `jupyter book build --html --execute` (outputs cached in _build/execute). Its theme is
# downloaded on the first build; without a network that fails, and this says so in one line.
# To execute pages, Jupyter Book starts a Jupyter server with the `python` on PATH (the venv's); as root
# (containers, CI) jupyter_server refuses to start unless allow_root is set, hence the config file.
site: venv
	@mkdir -p _build/jupyter-config; \
	echo '{"ServerApp": {"allow_root": true}}' > _build/jupyter-config/jupyter_server_config.json; \
	log=_build/site.log; \
	if KDEDU_PROGRESS=0 PATH="$(abspath $(BIN)):$$PATH" JUPYTER_CONFIG_PATH="$(CURDIR)/_build/jupyter-config" JB_ALLOW_NODEENV=0 \
	     timeout 3600 "$(BIN)/jupyter" book build --html --execute < /dev/null > $$log 2>&1; then \
	  grep -E '⛔️|⚠️' $$log || true; \
	  echo "site built: _build/html/index.html"; \
	elif grep -qE '(api\.mystmd\.org|templates/site).*(failed|ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT)|getaddrinfo' $$log; then \
	  echo "make book: no HTML site: Jupyter Book could not download its theme (no network?); the chapters were still executed ($(EXECUTED)/)"; \
	else \
	  tail -n 40 $$log; echo "make book: the site build failed (log: $$log)"; exit 1; \
	fi

clean:
	rm -rf _build .cache/kdedu-test
