PYTHON ?= python

.PHONY: bench bench-quick

# Full benchmark suite (about 10-15 minutes); writes bench/results/latest.md and .json.
bench:
	$(PYTHON) -m bench.run

# Smaller counts and one round (about 2 minutes).
bench-quick:
	$(PYTHON) -m bench.run --quick
