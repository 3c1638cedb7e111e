# robustar-ls developer and demo targets. Everything installs into local virtualenvs:
#   .venv     the project (torch, label-studio-sdk, flask, ...)
#   .venv-ls  Label Studio itself (it pins Django and friends, so it lives apart)
PYTHON ?= python3
VENV := .venv
VENV_LS := .venv-ls
LABEL_STUDIO_VERSION := 1.23.2
PY := $(VENV)/bin/python

.PHONY: demo test test-postgres lint format bench venv venv-ls browser clean

demo: venv venv-ls  ## set everything up and run the built-in demo
	$(VENV)/bin/robustar-ls demo --label-studio-bin $(CURDIR)/$(VENV_LS)/bin/label-studio

test: venv venv-ls  ## run the whole test suite (unit + end-to-end against a real Label Studio)
	OMP_NUM_THREADS=1 ROBUSTAR_LS_LABEL_STUDIO_BIN=$(CURDIR)/$(VENV_LS)/bin/label-studio $(PY) -m pytest -q

test-postgres: venv venv-ls  ## the e2e tests that store data, on SQLite and on a throwaway PostgreSQL
	OMP_NUM_THREADS=1 ROBUSTAR_LS_LABEL_STUDIO_BIN=$(CURDIR)/$(VENV_LS)/bin/label-studio \
	  scripts/postgres.sh run -- $(PY) -m pytest -q -m postgresql tests/e2e

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PY) bench/bench_brush.py
	$(PY) bench/bench_predict.py
	$(PY) bench/bench_load.py
	$(PY) bench/bench_influence.py
	$(PY) bench/bench_paired.py

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

venv-ls: $(VENV_LS)/.installed
# constraints/label-studio.txt: pins that keep this Label Studio starting (sentry-sdk<3).
$(VENV_LS)/.installed: constraints/label-studio.txt
	$(PYTHON) -m venv $(VENV_LS)
	$(VENV_LS)/bin/pip install -q "label-studio==$(LABEL_STUDIO_VERSION)" -c constraints/label-studio.txt
	touch $@

browser:  ## Debian's headless Chromium + driver, for the browser check
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver)

clean:
	rm -rf $(VENV) $(VENV_LS) .pytest_cache .ruff_cache
