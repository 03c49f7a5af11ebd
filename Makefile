# Two commands do everything on a fresh machine; each sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/np-mirror demo

bench: setup
	$(PY) benchmarks/bench_client.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
