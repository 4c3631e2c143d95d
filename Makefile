# kdedu: the two commands are `make book` and `make test`; everything else here is a helper they call.
#
#   make book   build the Jupyter Book 2 site (_build/html), every chapter executed once, and check it in Chromium
#   make test   lint, unit tests + the offline MyST check (tests/), every chapter under nbval, then the site
#               built without execution and checked page by page in headless Chromium (ci/site.py check)
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
# the notebooks `make chapters` executes under nbval: every book/*.ipynb, the numbered chapters first, then
# the appendix pages that run code (tests/test_book.py checks that no notebook is left out)
CHAPTERS = $(sort $(wildcard book/[0-9][0-9]-*.ipynb)) $(sort $(filter-out $(wildcard book/[0-9][0-9]-*.ipynb),$(wildcard book/*.ipynb)))
# `make test` runs with a cold teacher cache, as CI does. Two pytest workers share the 2 cores, so each
# gets one torch thread: oversubscribed OpenMP threads made training up to 10x slower here.
TEST_CACHE := $(CURDIR)/.cache/kdedu-test
TEST_ENV := KDEDU_PROFILE=fast KDEDU_CACHE=$(TEST_CACHE) KDEDU_PROGRESS=0 MPLBACKEND=Agg OMP_NUM_THREADS=1
NBVAL_ARGS := --nbval-lax --nbval-current-env --nbval-cell-timeout=300 -p no:cacheprovider
# pip's noise about local index folders that do not exist on some machines
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: help book test venv lint unit chapters site clean results

help:
	@echo "make book   execute every chapter and build the site (_build/html)"
	@echo "make test   lint, unit tests, MyST content check, every chapter under nbval, the site's browser check"

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
	$(MAKE) --no-print-directory site || failed="$$failed site"; \
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
# Every chapter executed once, by Jupyter Book itself (`--execute`: one notebook at a time on a 2-core machine,
# as jupyter-book 2.1 runs cpus - 1 at once; the outputs, figures included, go into the pages and into
# _build/execute, a cache keyed by each page's code, so a second `make book` re-executes only what changed), then
# KaTeX served by the site and the browser check.
# Without a network the theme comes from $(SITE_THEME_NOTE) (ci/site.py theme).
# To execute pages, Jupyter Book starts a Jupyter server with the `python` on PATH (the venv's); as root
# (containers, CI) jupyter_server refuses to start unless allow_root is set, hence the config file; the server it
# starts outlives the build (seen with jupyter-book 2.1.7), so the build's own server is stopped after it.
SITE_THEME_NOTE := $$KDEDU_SITE_THEME, by default ../shared/site/book-theme-1.1.2.tgz
# (no MPLBACKEND=Agg here: the kernel's inline backend is what puts the figures into the pages)
SITE_ENV = KDEDU_PROGRESS=0 PATH="$(abspath $(BIN)):$$PATH" \
  JUPYTER_CONFIG_PATH="$(CURDIR)/_build/jupyter-config" JB_ALLOW_NODEENV=0

book: venv
	@$(MAKE) --no-print-directory site SITE_FLAGS=--execute SITE_CHECK_FLAGS=--outputs SITE_REQUIRED=1

# the site: `make site` builds it without executing anything (pages without outputs; `make test` checks it). With
# no theme to be had (offline and no local template) `make site` says so and skips; `make book` fails.
site: venv
	@mkdir -p _build/jupyter-config; \
	echo '{"ServerApp": {"allow_root": true}}' > _build/jupyter-config/jupyter_server_config.json; \
	"$(BIN)/python" ci/site.py theme || { rc=$$?; \
	  if [ $$rc -eq 3 ] && [ -z "$(SITE_REQUIRED)" ]; then \
	    echo "make $@: SKIPPED: no site theme here (offline, and no ../shared/site); the site and its browser check did not run"; \
	    exit 0; fi; \
	  exit $$rc; }; \
	log=_build/site.log; start=$$(date +%s); \
	rc=0; $(SITE_ENV) timeout 3600 "$(BIN)/jupyter" book build --html $(SITE_FLAGS) < /dev/null > $$log 2>&1 || rc=$$?; \
	pkill -f "[j]upyter_server --ServerApp.root_dir $(CURDIR) " || true; \
	if [ $$rc -ne 0 ]; then tail -n 40 $$log; echo "make $@: the site build failed (log: $$log)"; exit 1; fi; \
	grep -E '⛔️|⚠️' $$log || true; \
	failed=$$({ grep -oE '⛔️ [^ ]+ An exception occurred during code execution' $$log || true; } | awk '{print $$2}' | sort -u); \
	if [ -n "$$failed" ]; then echo "make $@: chapters that failed to execute:" $$failed "(log: $$log)"; exit 1; fi; \
	echo "site built in $$(( $$(date +%s) - start )) s: _build/html/index.html"; \
	"$(BIN)/python" ci/site.py katex; \
	"$(BIN)/python" ci/site.py check $(SITE_CHECK_FLAGS)

clean:
	rm -rf _build .cache/kdedu-test
