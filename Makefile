# certgate — `make run` starts an all-in-one cluster, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := src/certgate/web
VENDOR := $(WEB)/static/vendor

.PHONY: install web-assets run test lint bench clean

# Bytecode for certgate's own modules, written once here: an editable install has none,
# and with PYTHONDONTWRITEBYTECODE set (as on the test machines) every certgate, cgsh and
# cgctl start compiled its modules again (0.3 s of CPU per daemon start, a fifth of
# `cgsh ls`'s start-up). A stale file is only ignored: Python checks the source's mtime.
install: $(STAMP)
	$(BIN)/python -m compileall -q src > /dev/null

$(STAMP): pyproject.toml $(WEB)/package-lock.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(MAKE) web-assets
	@touch $(STAMP)

# The web UI's JavaScript libraries, from the npm registry at the versions the lock file
# pins, copied into the static dir the proxy serves (node_modules is not committed).
web-assets:
	cd $(WEB) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	mkdir -p $(VENDOR)
	cp $(WEB)/node_modules/@xterm/xterm/lib/xterm.js $(VENDOR)/xterm.js
	cp $(WEB)/node_modules/@xterm/xterm/css/xterm.css $(VENDOR)/xterm.css
	cp $(WEB)/node_modules/@xterm/addon-fit/lib/addon-fit.js $(VENDOR)/addon-fit.js
	cp $(WEB)/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js $(VENDOR)/asciinema-player.js
	cp $(WEB)/node_modules/asciinema-player/dist/bundle/asciinema-player.css $(VENDOR)/asciinema-player.css

# Starts auth, proxy and node on localhost with SQLite under ./data and prints the
# first admin's invite link. Ctrl-C stops it. `make run CONFIG=certgate.yaml` starts
# from that file instead (ports, cluster name and data_dir as it says).
CONFIG ?=
run: install
	$(BIN)/certgate start $(if $(CONFIG),--config $(CONFIG),--data-dir ./data) --first-admin admin

# lint first: CI checks ruff, ruff format and mypy --strict through this target.
# The integration and backend files (real processes, most of the time) run in two
# pytest-xdist workers, a file at a time each: every file starts its own clusters on
# free ports in its own directories. The rest runs in one process first. Both run,
# whatever the first gives; the target fails if either did.
PARALLEL_TESTS := tests/integration tests/backend
test: lint
	bash scripts/test-deps.sh
	$(BIN)/pytest -q -p no:cacheprovider $(PARALLEL_TESTS:%=--ignore=%); first=$$?; \
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile $(PARALLEL_TESTS); \
	second=$$?; test $$first -eq 0 && test $$second -eq 0

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

bench: install
	bash scripts/test-deps.sh
	$(BIN)/python bench/cert_issuance.py

clean:
	rm -rf $(VENV) $(WEB)/node_modules $(VENDOR) data .pytest_cache .mypy_cache .ruff_cache
