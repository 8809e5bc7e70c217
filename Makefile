# Entry points. `make test` is what CI runs; it installs what it needs first.
PYTHON ?= python3

.PHONY: test test-fast lint bench bench-quick

test:
	scripts/setup-test-env
	$(PYTHON) -m ruff check proxy tests bench tools
	$(PYTHON) tools/gen_config_reference.py --check
	$(PYTHON) -m pytest -q -p no:cacheprovider

# Without the browser suite and the long reliability tests.
test-fast:
	$(PYTHON) -m pytest -q -p no:cacheprovider --ignore=tests/browser --ignore=tests/reliability

lint:
	$(PYTHON) -m ruff check proxy tests bench tools
	$(PYTHON) -m ruff format --check proxy tests bench tools

# Full benchmark suite (a few minutes); writes bench/results/latest.md and .json.
bench:
	scripts/setup-test-env
	$(PYTHON) -m bench.run

# Smaller counts and one round (about a minute).
bench-quick:
	$(PYTHON) -m bench.run --quick
