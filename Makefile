# certgate — `make run` starts an all-in-one cluster, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Starts auth, proxy and node on localhost with SQLite under ./data and prints the
# first admin's invite link. Ctrl-C stops it. `make run CONFIG=certgate.yaml` starts
# from that file instead (ports, cluster name and data_dir as it says).
CONFIG ?=
run: install
	$(BIN)/certgate start $(if $(CONFIG),--config $(CONFIG),--data-dir ./data) --first-admin admin

# lint first: CI checks ruff, ruff format and mypy --strict through this target.
test: lint
	bash scripts/test-deps.sh
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: install
	bash scripts/test-deps.sh
	$(BIN)/python bench/cert_issuance.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
